"""``Trainer(compile=...)``: the whole optimization step as one compiled, or CUDA-graph captured, function.

One training step of automatic optimization is, in order::

    with precision context: output = training_step(batch, batch_idx)    self.log is recorded
    zero_grad                                                           first batch of the window
    (loss / accumulate_grad_batches).backward()
    gradient clipping (configure_gradient_clipping), optimizer.step()   last batch of the window

``compile=True`` (or a dict of ``torch.compile`` keyword arguments) runs that function through
``torch.compile``; ``compile="cudagraphs"`` records it once into a ``torch.cuda.CUDAGraph`` over
static input buffers and replays the graph for every later batch. The fit loop keeps the rest of
the batch (transfer, batch hooks, counters, schedulers, logging points) eager.

``self.log`` inside the step is recorded (name, value tensor, options) and replayed through
the real ``self.log`` right after the step, so metrics, callbacks and loggers see what an eager
step would have logged.

When a step cannot be captured (``capture_blocker``), or dynamo meets a graph break in the
user's code or fails to compile, the run goes on eagerly and says why once (``reason``). Each
compile after the first is logged, counted (``stats``) and bounded by dynamo's
``recompile_limit``, past which the run goes on eagerly.
"""
from __future__ import annotations

import contextlib
import logging
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import torch

log = logging.getLogger(__name__)

#: ``compile="cudagraphs"``: the step replayed from one CUDA graph.
CUDAGRAPHS = "cudagraphs"
#: What a ``compile={...}`` dict may hold: ``torch.compile``'s keyword arguments.
COMPILE_OPTIONS = ("backend", "mode", "options", "dynamic", "fullgraph")
#: Graph breaks every step has by construction: dynamo does not trace ``Tensor.backward()``,
#: and ``torch.optim`` breaks the graph around ``step()`` on purpose (its no_grad region).
#: Matched against the start of dynamo's graph-break reasons.
_EXPECTED_BREAKS = ("Unsupported Tensor.backward()", "Call to `torch._dynamo.graph_break()`")
#: Batches run eagerly (on a side stream) before the CUDA graph is recorded: lazy state
#: (optimizer buffers, cuBLAS workspaces, autocast caches) must exist before capture.
CUDAGRAPH_WARMUP_STEPS = 3


@dataclass(frozen=True)
class CompileSetting:
    """``Trainer(compile=...)``, checked: ``mode`` is "off", "compile" or "cudagraphs"."""

    mode: str = "off"
    options: Mapping[str, Any] = field(default_factory=dict)  # torch.compile keyword arguments

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


def parse_compile(value: Any, accelerator: str) -> CompileSetting:
    """``Trainer(compile=value)`` on ``accelerator`` ("cpu", "cuda", ...), or an error naming the argument."""
    if value is None or value is False:
        return CompileSetting()
    if value is True:
        return CompileSetting("compile")
    if isinstance(value, Mapping):
        unknown = sorted(str(k) for k in value if k not in COMPILE_OPTIONS)
        if unknown:
            raise ValueError(f"Trainer(compile={dict(value)!r}): unknown keys {unknown}; a dict holds torch.compile's "
                             f"keyword arguments {list(COMPILE_OPTIONS)}")
        options = value.get("options")
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"Trainer(compile={{'options': ...}}) must be a dict of backend options, "
                            f"got {type(options).__name__}")
        return CompileSetting("compile", dict(value))
    if value == CUDAGRAPHS:
        if accelerator != "cuda":
            raise ValueError(f"Trainer(compile={CUDAGRAPHS!r}) replays the training step from a CUDA graph and needs "
                             f"a CUDA device (accelerator='gpu'); this Trainer runs on {accelerator!r}. Use "
                             "compile=True there")
        return CompileSetting(CUDAGRAPHS)
    raise ValueError(f"Trainer(compile={value!r}) must be False, True, {CUDAGRAPHS!r} or a dict of torch.compile "
                     f"keyword arguments ({', '.join(COMPILE_OPTIONS)})")


@dataclass(frozen=True)
class StepFacts:
    """What decides whether a run's training step can be captured, as plain data (see fit_loop)."""

    automatic_optimization: bool
    optimizers: int
    closure_optimizer: bool  # LBFGS and the like evaluate the closure more than once per step
    step_signature: Optional[str]  # a 1.x training_step argument (optimizer_idx, hiddens) or TBPTT
    single_device: bool
    strategy: str
    profiling: bool
    loss_scaler: bool
    own_precision_context: bool  # a precision plugin with its own forward_context()
    step_hooks: Tuple[str, ...]  # per-step hooks, overridden, that see the step's tensors or gradients
    module_overrides: Tuple[str, ...]  # module methods of the step that the module overrides
    host_sync: Tuple[str, ...]  # Trainer settings that read the step's tensors on the host
    accumulation: Any
    lr_schedulers: bool = False


def capture_blocker(facts: StepFacts, setting: CompileSetting) -> Optional[str]:
    """Why the step cannot be captured under ``setting``, or None when it can."""
    if not facts.automatic_optimization:
        return "manual optimization: training_step steps the optimizers itself"
    if facts.optimizers != 1:
        return f"{facts.optimizers} optimizers (a compiled step drives exactly one)"
    if facts.closure_optimizer:
        return "the optimizer re-evaluates the closure (LBFGS)"
    if facts.step_signature:
        return facts.step_signature
    if not facts.single_device:
        return f"strategy {facts.strategy!r}: compiled steps run on one device"
    if facts.profiling:
        return "a profiler records each hook of the step"
    if facts.loss_scaler:
        return "16-mixed's loss scaler checks the gradients on the host every step"
    if facts.own_precision_context:
        return "the precision plugin has its own forward_context()"
    if facts.step_hooks:
        return f"hooks that see the step's tensors are overridden: {', '.join(facts.step_hooks)}"
    if facts.module_overrides:
        return f"the module overrides {', '.join(facts.module_overrides)}"
    if facts.host_sync:
        return f"{', '.join(facts.host_sync)} read(s) the step's tensors on the host"
    if setting.mode == CUDAGRAPHS and facts.accumulation != 1:
        return f"accumulate_grad_batches={facts.accumulation!r}: a CUDA graph replays one whole step"
    if setting.mode == CUDAGRAPHS and facts.lr_schedulers:
        return "an LR scheduler changes the learning rate, which a recorded CUDA graph holds fixed"
    return None


class CaptureFailed(RuntimeError):
    """The step could not be compiled or captured; the batch is to be run eagerly (reason logged once)."""


@dataclass
class CompileStats:
    """``trainer.compile_stats``: what the compiled step did this run."""

    mode: str = "off"
    active: bool = False  # the steps run compiled (or captured) now
    fallback_reason: Optional[str] = None
    compiles: int = 0  # steps that compiled (or recorded) a new graph, the first included
    recompiles: int = 0  # of those, after the first
    graph_breaks: List[str] = field(default_factory=list)  # expected ones left out
    fallbacks: int = 0  # times the step went (back) to eager: 0 or 1 per run

    def fall_back(self, reason: str) -> None:
        """The steps run eagerly from here on, for ``reason`` (the caller logs it)."""
        self.active = False
        self.fallback_reason = reason
        self.fallbacks += 1


class _LogRecorder:
    """Stands in for ``module.log`` during a captured step: records each call for the replay."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Any, tuple, dict]] = []

    def __call__(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, value, args, kwargs))


class _StepBase:
    """The step's function and the parts both capture modes share: log recording, replay, fallback."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, autocast: Optional[Tuple[str, Any]],
                 clip: Callable[[], Tuple[Optional[float], Optional[str], bool]], loss_from: Callable[[Any], Any],
                 stats: CompileStats) -> None:
        self.module, self.optimizer = module, optimizer
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.autocast = autocast
        self.clip = clip
        self.loss_from = loss_from
        self.stats = stats
        self.recorder = _LogRecorder()
        self.replay_log = type(module).log  # the real self.log, called after the step

    def step_function(self, batch: Any, batch_idx: int, accumulation: int, zero_grad: bool, step: bool) -> Any:
        """The whole optimization step; what is compiled or captured."""
        module = self.module
        if self.autocast is not None:
            with torch.autocast(self.autocast[0], dtype=self.autocast[1]):
                output = module.training_step(batch, batch_idx)
        else:
            output = module.training_step(batch, batch_idx)
        loss = self.loss_from(output)
        if zero_grad:  # optimizer.zero_grad()'s default (set_to_none), spelled so dynamo traces it
            for p in self.params:
                p.grad = None
        if loss is not None:
            (loss / accumulation if accumulation > 1 else loss).backward()
        if step:
            clip_val, clip_algorithm, clip_hook = self.clip()
            if clip_val or clip_hook:
                module.configure_gradient_clipping(self.optimizer, clip_val, clip_algorithm)
            self.optimizer.step()
        return output

    @contextlib.contextmanager
    def recording_logs(self) -> Any:
        self.recorder.calls.clear()
        self.module.__dict__["log"] = self.recorder  # the instance attribute shadows LightningModule.log
        try:
            yield
        finally:
            del self.module.__dict__["log"]

    def replay_logs(self, copy: bool) -> None:
        """Each recorded self.log through the real one (``copy``: the values are buffers a replay overwrites)."""
        calls = self.recorder.calls
        for name, value, args, kwargs in calls:
            if copy and isinstance(value, torch.Tensor):
                value = value.detach().clone()
            self.replay_log(self.module, name, value, *args, **kwargs)
        calls.clear()

    def give_up(self, reason: str) -> None:
        self.stats.fall_back(reason)
        log.warning("Trainer(compile=...): the training step runs eagerly from here on: %s", reason)


class CompiledStep(_StepBase):
    """``compile=True`` / a dict: ``step_function`` through ``torch.compile``."""

    def __init__(self, setting: CompileSetting, *args: Any) -> None:
        super().__init__(*args)
        # Imported here, not at the top: torch._dynamo and torch._inductor take seconds to import,
        # which only a compiled run should pay.
        import torch._dynamo
        import torch._inductor.exc

        self.errors = (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError)
        self.counters = torch._dynamo.utils.counters
        self.compiled = torch.compile(_own_code(self.step_function), **dict(setting.options))
        self.limit = int(torch._dynamo.config.recompile_limit)
        self.variants: Set[Tuple[int, bool, bool]] = set()

    def __call__(self, batch: Any, batch_idx: int, accumulation: int, zero_grad: bool, step: bool) -> Any:
        counters = self.counters
        graphs_before = counters["stats"]["unique_graphs"]
        breaks_before = dict(counters["graph_break"]) if not self.stats.compiles else None
        try:
            with self.recording_logs():
                output = self.compiled(batch, batch_idx, accumulation, zero_grad, step)
        except self.errors as err:
            self.recorder.calls.clear()
            self.give_up(f"torch.compile failed: {type(err).__name__}: {_first_line(err)}")
            raise CaptureFailed(str(err)) from err
        self.replay_logs(copy=False)
        if counters["stats"]["unique_graphs"] != graphs_before:
            self._compiled_new_graphs((accumulation, zero_grad, step), breaks_before)
        return output

    def _compiled_new_graphs(self, variant: Tuple[int, bool, bool], breaks_before: Optional[Dict[str, int]]) -> None:
        """After a call that compiled: check the first compile's graph breaks, count and bound the later ones.

        Each (accumulation, zero_grad, step) variant of the step compiles once by design (an
        accumulation window has up to three); any other compile is a recompile.
        """
        stats = self.stats
        stats.compiles += 1
        if breaks_before is not None:  # the first compile: graph breaks in the user's code end the capture
            new = [r for r, n in self.counters["graph_break"].items() if n > breaks_before.get(r, 0)]
            stats.graph_breaks = [r for r in new if not r.startswith(_EXPECTED_BREAKS)]
            if stats.graph_breaks:
                self.give_up(f"graph break in the step: {_first_line(stats.graph_breaks[0])} "
                             "(TORCH_LOGS=graph_breaks shows where)")
        if variant not in self.variants:
            self.variants.add(variant)
            log.info("Trainer(compile=...): compiled the training step for accumulation %d, zero_grad=%s, step=%s",
                     *variant)
            return
        stats.recompiles += 1
        log.warning("Trainer(compile=...): the training step compiled again (recompile %d of at most %d): an input's "
                    "shape, dtype or a Python value the step reads changed (TORCH_LOGS=recompiles shows which)",
                    stats.recompiles, self.limit)
        # dynamo keeps at most `limit` compiled versions of the step and, past them, runs new inputs
        # eagerly without a word: stop here instead, and say so
        if len(self.variants) + stats.recompiles >= self.limit:
            self.give_up(f"{stats.recompiles} recompiles filled torch._dynamo.config.recompile_limit={self.limit}")


class CapturedStep(_StepBase):
    """``compile="cudagraphs"``: the step recorded once into a CUDA graph, then replayed.

    The first CUDAGRAPH_WARMUP_STEPS batches run eagerly on a side stream (as the recording
    must be preceded by); the next one is recorded from static copies of its tensors, and every
    later batch is copied into those buffers before the graph replays. Shapes, dtypes and the
    batch's structure must stay the same (drop_last=True); the step may not sync with the host.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.static_batch: Any = None
        self.static_output: Any = None
        self.static_logs: List[Tuple[str, Any, tuple, dict]] = []
        self.warmup_left = CUDAGRAPH_WARMUP_STEPS
        self.batch_idx = 0

    def __call__(self, batch: Any, batch_idx: int, accumulation: int, zero_grad: bool, step: bool) -> Any:
        if self.graph is None:
            return self._warm_up_or_record(batch, batch_idx)
        if not _copy_into(self.static_batch, batch):
            raise ValueError(f"Trainer(compile={CUDAGRAPHS!r}): batch {batch_idx} differs in shape, dtype or structure "
                             "from the recorded one; a CUDA graph replays static shapes (use drop_last=True and a "
                             "fixed sequence length, or compile=True)")
        self.graph.replay()
        self.recorder.calls[:] = self.static_logs
        self.replay_logs(copy=True)
        return _clone_tensors(self.static_output)

    def _warm_up_or_record(self, batch: Any, batch_idx: int) -> Any:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        if self.warmup_left > 0:
            self.warmup_left -= 1
            with torch.cuda.stream(side), self.recording_logs():
                output = self.step_function(batch, batch_idx, 1, True, True)
            torch.cuda.current_stream().wait_stream(side)
            self.replay_logs(copy=False)
            return output
        try:
            self.static_batch = _clone_tensors(batch)
            self.optimizer.zero_grad(set_to_none=True)  # the graph's backward allocates .grad from its pool
            graph = torch.cuda.CUDAGraph()
            with self.recording_logs(), torch.cuda.graph(graph):
                # zero_grad=False: inside the graph, backward writes the gradients it allocated
                self.static_output = self.step_function(self.static_batch, batch_idx, 1, False, True)
            self.static_logs = list(self.recorder.calls)
        except RuntimeError as err:  # e.g. a host sync (.item(), print of a tensor) during recording
            self.recorder.calls.clear()
            self.give_up(f"CUDA graph capture failed: {_first_line(err)}")
            raise CaptureFailed(str(err)) from err
        self.graph = graph
        self.stats.compiles += 1
        self.graph.replay()  # recording ran nothing: this is the batch's step
        self.recorder.calls[:] = self.static_logs
        self.replay_logs(copy=True)
        return _clone_tensors(self.static_output)


def build_step(setting: CompileSetting, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
               autocast: Optional[Tuple[str, Any]], clip: Callable[[], Tuple[Optional[float], Optional[str], bool]],
               loss_from: Callable[[Any], Any], stats: CompileStats) -> _StepBase:
    if setting.mode == CUDAGRAPHS:
        return CapturedStep(module, optimizer, autocast, clip, loss_from, stats)
    return CompiledStep(setting, module, optimizer, autocast, clip, loss_from, stats)


def _own_code(method: Any) -> Any:
    """``method`` with a copy of its code object: dynamo keeps its compiled graphs and its recompile
    count per code object, so each run's step gets its own instead of sharing every other run's."""
    fn = method.__func__
    own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return types.MethodType(own, method.__self__)


def _first_line(err: Any) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)


def _clone_tensors(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, Mapping):
        return type(obj)((k, _clone_tensors(v)) for k, v in obj.items())  # type: ignore[call-arg]
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone_tensors(v) for v in obj)
    return obj


def _copy_into(static: Any, new: Any) -> bool:
    """Copy ``new``'s tensors into ``static``'s; False when their structure, shapes or dtypes differ."""
    if isinstance(static, torch.Tensor):
        if not isinstance(new, torch.Tensor) or new.shape != static.shape or new.dtype != static.dtype:
            return False
        static.copy_(new, non_blocking=True)
        return True
    if isinstance(static, Mapping):
        return isinstance(new, Mapping) and static.keys() == new.keys() and all(
            _copy_into(static[k], new[k]) for k in static)
    if isinstance(static, Sequence) and not isinstance(static, str):
        return (isinstance(new, Sequence) and len(new) == len(static)
                and all(_copy_into(s, n) for s, n in zip(static, new)))
    return static == new
