"""Per-step Python call and aten op budgets of the training loop, against a raw PyTorch loop.

The deterministic proxy for the engine's step overhead (docs/benchmarks.md): Python function
calls per training step (``sys.setprofile`` "call" events), counted between two batches
taken from the same pre-built batches, for volt in the benchmark's "typical" config
(``self.log`` each step, CSV logger, no progress bar, no checkpoint) minus a raw loop doing
the same forward/backward/step. Both share torch's own calls, so the difference is what the
engine adds, whatever the torch version. A new per-step call in the hot path fails here.

The second budget counts aten ops per step (``torch.profiler`` events, composite ops such as a
no-op ``aten::to`` included) the same way: a tensor op the engine adds per step (a detach, a
running-mean add, a cast, a zero_grad that fills instead of freeing) fails there, whatever its
cost in Python calls. volt adds exactly one: the ``detach`` of the logged value in ``self.log``.
"""
from __future__ import annotations

import collections
import sys
from typing import Any, Callable, Counter, Iterable, Iterator, List, Tuple

import pytest
import torch
from torch import nn

import volt
from volt.loggers import CSVLogger

from tiny_models import quiet_trainer

pytestmark = pytest.mark.timeout(120)

STEPS = 70
WINDOW = (10, 60)  # batches counted: after warm-up, one logging point (step 50) included
OP_WINDOW = (10, 40)  # no logging point: its stack/tolist are once per log_every_n_steps, not per step

# Measured extra calls per step over raw (CPU, torch 2.15): 0.38 (32-true), 0.38 (bf16-mixed: one
# autocast object per run), all of them at the logging point; 2.4 and 2.4 before the one-frame
# epoch, 3.4 and 7.4 before self.log's repeat call stayed in one frame, 10.4 and 14.4 before the
# one-frame batch path, 46.3 and 51.3 before the hot-path work.
EXTRA_CALLS_BOUND = {"32-true": 1.0, "bf16-mixed": 1.0}
# Python bytecodes executed per step over raw (sys.settrace opcode events, same window, so one
# logging point, ~500 bytecodes, is spread over 50 steps), CPython 3.11: 322 (32-true); 375 before
# the one-frame epoch. What is left: the epoch loop's batch body, self.log's repeat call,
# nn.Module.__getattr__ for self.net and the frame of the module's training_step (which the raw
# loop inlines), the preemption check, the logging point.
EXTRA_BYTECODES_BOUND = 340
# aten ops per step over raw: self.log's detach of the logged loss.
EXTRA_ATEN_OPS = {"aten::detach": 1}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _batches() -> List[Tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(64, 32, generator=g), torch.randint(0, 10, (64,), generator=g)) for _ in range(STEPS)]


class CallCounter:
    def __init__(self) -> None:
        self.calls = 0
        self.marks: List[int] = []

    def profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            self.calls += 1

    def per_step(self) -> float:
        lo, hi = WINDOW
        return (self.marks[hi] - self.marks[lo]) / (hi - lo)


class MarkedBatches:
    """Pre-built batches as one iterable; records the call count each time a batch is taken."""

    def __init__(self, items: List[Any], counter: CallCounter) -> None:
        self.items, self.counter = items, counter

    def __iter__(self) -> Iterator[Any]:
        for item in self.items:
            self.counter.marks.append(self.counter.calls)
            yield item
        self.counter.marks.append(self.counter.calls)

    def __len__(self) -> int:
        return len(self.items)


class Bench(volt.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _autocast(precision: str) -> Any:
    if precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def _profiled(counter: CallCounter, fn: Any) -> None:
    sys.setprofile(counter.profile)
    try:
        fn()
    finally:
        sys.setprofile(None)


def _raw_loop(net: nn.Module, opt: torch.optim.Optimizer, batches: Iterable[Any], precision: str) -> None:
    """The hand-written loop both budgets compare volt against."""
    for x, y in batches:
        with _autocast(precision):
            loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def raw_calls_per_step(precision: str) -> float:
    counter = CallCounter()
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    batches = MarkedBatches(_batches(), counter)

    _profiled(counter, lambda: _raw_loop(net, opt, batches, precision))
    return counter.per_step()


def volt_calls_per_step(tmp_path: Any, precision: str) -> float:
    counter = CallCounter()
    trainer = quiet_trainer(tmp_path, max_epochs=1, precision=precision, logger=CSVLogger(str(tmp_path)),
                            num_sanity_val_steps=0)
    batches = MarkedBatches(_batches(), counter)
    _profiled(counter, lambda: trainer.fit(Bench(), batches))
    assert trainer.global_step == STEPS
    return counter.per_step()


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_engine_calls_per_step_within_budget(tmp_path: Any, precision: str) -> None:
    raw = raw_calls_per_step(precision)
    engine = volt_calls_per_step(tmp_path, precision)
    extra = engine - raw
    assert extra <= EXTRA_CALLS_BOUND[precision], (
        f"volt makes {engine:.2f} Python calls per training step, raw PyTorch {raw:.2f}: {extra:.2f} extra, "
        f"over the budget of {EXTRA_CALLS_BOUND[precision]} (a new per-step call in the hot path?)"
    )


# --- bytecodes per step ----------------------------------------------------------------------
class OpcodeCounter(CallCounter):
    """CallCounter counting executed bytecodes (``sys.settrace`` opcode events) instead of calls."""

    def trace(self, frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            self.calls += 1
        return self.trace


def _traced(counter: OpcodeCounter, fn: Any) -> None:
    sys.settrace(counter.trace)
    try:
        fn()
    finally:
        sys.settrace(None)


def test_engine_bytecodes_per_step_within_budget(tmp_path: Any) -> None:
    raw_counter, engine_counter = OpcodeCounter(), OpcodeCounter()
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    raw_batches = MarkedBatches(_batches(), raw_counter)
    _traced(raw_counter, lambda: _raw_loop(net, opt, raw_batches, "32-true"))
    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=CSVLogger(str(tmp_path)), num_sanity_val_steps=0)
    batches = MarkedBatches(_batches(), engine_counter)
    _traced(engine_counter, lambda: trainer.fit(Bench(), batches))
    assert trainer.global_step == STEPS
    raw, engine = raw_counter.per_step(), engine_counter.per_step()
    assert engine - raw <= EXTRA_BYTECODES_BOUND, (
        f"volt executes {engine:.0f} Python bytecodes per training step, raw PyTorch {raw:.0f}: "
        f"{engine - raw:.0f} extra, over the budget of {EXTRA_BYTECODES_BOUND} (new per-step work in the hot path?)"
    )


# --- aten ops per step ----------------------------------------------------------------------
class OpWindow:
    """A torch.profiler session over the WINDOW batches; ``per_step`` counts aten ops by name."""

    def __init__(self) -> None:
        self.prof: Any = None

    def batches(self, items: List[Any]) -> Iterator[Any]:
        lo, hi = OP_WINDOW
        for i, item in enumerate(items):
            if i == lo:
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.prof.__enter__()
            if i == hi:
                self.prof.__exit__(None, None, None)
            yield item

    def per_step(self) -> Counter[str]:
        counts: Counter[str] = collections.Counter(e.name for e in self.prof.events() if e.name.startswith("aten::"))
        assert counts, "the profiler recorded no aten op"
        return counts


class OpBatches:
    def __init__(self, items: List[Any], window: OpWindow) -> None:
        self.items, self.window = items, window

    def __iter__(self) -> Iterator[Any]:
        return self.window.batches(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _ops(run: Callable[[OpBatches], None]) -> Counter[str]:
    window = OpWindow()
    run(OpBatches(_batches(), window))
    return window.per_step()


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_engine_adds_no_aten_op_per_step_but_the_logged_detach(tmp_path: Any, precision: str) -> None:
    def raw_loop(batches: OpBatches) -> None:
        net = _net()
        _raw_loop(net, torch.optim.SGD(net.parameters(), lr=0.01), batches, precision)

    def volt_fit(batches: OpBatches) -> None:
        trainer = quiet_trainer(tmp_path, max_epochs=1, precision=precision, logger=CSVLogger(str(tmp_path)),
                                num_sanity_val_steps=0)
        trainer.fit(Bench(), batches)
        assert trainer.global_step == STEPS

    raw, engine = _ops(raw_loop), _ops(volt_fit)
    steps = OP_WINDOW[1] - OP_WINDOW[0]
    extra = {name: (engine[name] - raw[name]) / steps for name in set(raw) | set(engine) if engine[name] != raw[name]}
    assert extra == EXTRA_ATEN_OPS, (
        f"aten ops per training step, volt minus raw PyTorch: {extra} (expected {EXTRA_ATEN_OPS}); "
        f"raw runs {sum(raw.values()) / steps:.1f} per step"
    )
