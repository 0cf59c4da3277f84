"""Engine step overhead: the same model and pre-built batches through a raw PyTorch loop and through volt.

volt runs the "typical" configuration: ``self.log`` every step, no progress bar,
no checkpointing, no model summary, CSV logger (``--logger none`` to turn it off).
When ``lightning`` is importable the same module also runs under Lightning's Trainer.

Each engine trains ``--epochs`` epochs over the same batches; the first is
warm-up. An epoch is timed by the batch iterable itself, from the first batch
fetched to the end of the last step, the same instrument for every engine: on
CPU the process's CPU time (``--clock cpu``: the time other processes of a shared
machine hold the core is left out, not counted as volt's), on CUDA the wall
clock with a device sync at both ends, so per-step costs are compared, not setup or
epoch-end hooks. After each engine epoch, from its on_train_epoch_end, the raw
loop (its own copy of the model) runs one epoch over the same batches: each
engine epoch has a raw epoch next to it in time, in the same process. Three
ratios: ``best`` (each engine's fastest epoch over raw's fastest: the least
interference), ``median`` (of all epochs) and ``paired`` (the median over epochs
of engine epoch / the raw epoch right after it: robust to a machine whose load
drifts, as a shared CI box does). ``--repeats`` runs of each engine.

    python bench/engine_overhead.py                      # CPU, fp32, tiny MLP and medium model
    python bench/engine_overhead.py --device cuda --precision bf16-mixed
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "trainer_image"))

import volt  # noqa: E402

Batch = Tuple[torch.Tensor, torch.Tensor]

MODELS: Dict[str, Dict[str, Any]] = {
    # Overhead dominates: a step is ~300 us on one CPU thread. Many short epochs: the best and
    # median of 10 per run filter out other processes' bursts.
    "tiny_mlp": dict(kind="mlp", dim=32, hidden=64, layers=2, classes=10, batch=64, steps=100, epochs=11),
    # Smaller still (~0.15-0.2 ms raw): where each microsecond of the engine's per-step Python shows.
    "micro_mlp": dict(kind="mlp", dim=16, hidden=32, layers=2, classes=10, batch=32, steps=100, epochs=11),
    # One hidden layer (~0.15-0.17 ms raw on one CPU thread): the smallest step the overhead target covers.
    "nano_mlp": dict(kind="mlp", dim=8, hidden=8, layers=1, classes=4, batch=8, steps=100, epochs=11),
    # A 6-layer transformer encoder: the step (~25 ms on one CPU thread) is compute-bound.
    "medium_transformer": dict(kind="transformer", dim=128, heads=4, layers=6, seq=32, classes=10, batch=8, steps=20,
                               epochs=4),
}
GPU_SCALE = {"tiny_mlp": dict(steps=400, epochs=4),
             "medium_transformer": dict(dim=512, heads=8, seq=256, batch=64, steps=40, epochs=4)}


def build_net(cfg: Dict[str, Any]) -> nn.Module:
    if cfg["kind"] == "mlp":
        layers: List[nn.Module] = []
        width = cfg["dim"]
        for _ in range(cfg["layers"]):
            layers += [nn.Linear(width, cfg["hidden"]), nn.ReLU()]
            width = cfg["hidden"]
        return nn.Sequential(*layers, nn.Linear(width, cfg["classes"]))
    layer = nn.TransformerEncoderLayer(cfg["dim"], cfg["heads"], dim_feedforward=4 * cfg["dim"], batch_first=True,
                                       dropout=0.0)
    return nn.Sequential(nn.TransformerEncoder(layer, cfg["layers"]), Pool(), nn.Linear(cfg["dim"], cfg["classes"]))


class Pool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class Batches:
    """Pre-built batches as one iterable (a bare list would read as a list of loaders to Lightning).

    Also the stopwatch: each pass over the batches appends its duration to ``times``, from the
    first fetch to the moment the engine asks for the next batch after the last one or drops the
    iterator (the end of the last step either way).
    """

    def __init__(self, items: List[Batch], device: torch.device, clock: Callable[[], float]) -> None:
        self.items, self.device, self.clock = items, device, clock
        self.times: List[float] = []

    def __iter__(self) -> Iterator[Batch]:
        sync(self.device)
        start = self.clock()
        try:
            yield from self.items
        finally:
            sync(self.device)
            self.times.append(self.clock() - start)

    def __len__(self) -> int:
        return len(self.items)


CLOCKS: Dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


def build_batches(cfg: Dict[str, Any], device: torch.device, clock: Callable[[], float]) -> Batches:
    g = torch.Generator().manual_seed(0)
    shape = (cfg["batch"], cfg["dim"]) if cfg["kind"] == "mlp" else (cfg["batch"], cfg["seq"], cfg["dim"])
    return Batches([(torch.randn(*shape, generator=g).to(device),
                     torch.randint(0, cfg["classes"], (cfg["batch"],), generator=g).to(device))
                    for _ in range(cfg["steps"])], device, clock)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_for(device: torch.device, precision: str) -> Any:
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    import contextlib

    return contextlib.nullcontext()


# --- raw PyTorch ------------------------------------------------------------------------------
class RawLoop:
    """The hand-written loop: its own copy of the model and optimizer, one epoch per call."""

    def __init__(self, cfg: Dict[str, Any], batches: Batches, device: torch.device, precision: str,
                 compile_model: Optional[Dict[str, Any]] = None) -> None:
        torch.manual_seed(0)
        self.net = build_net(cfg).to(device)
        if compile_model is not None:  # what users do today: compile the model, not the step around it
            self.net = torch.compile(self.net, **compile_model)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
        self.batches, self.device, self.precision = batches, device, precision
        self.net.train()

    def epoch(self) -> None:
        net, opt, scaler, loss_fn = self.net, self.opt, self.scaler, nn.functional.cross_entropy
        for x, y in self.batches:
            with autocast_for(self.device, self.precision):
                loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()


# --- engines (volt, and Lightning when installed) -------------------------------------------------
def make_module(base: type, cfg: Dict[str, Any]) -> Any:
    class Bench(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = build_net(cfg)

        def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Bench()


def run_engine(pkg: Any, cfg: Dict[str, Any], batches: Batches, raw: RawLoop, epochs: int, device: torch.device,
               precision: str, logger: str, workdir: str,
               extra_callbacks: Sequence[Any] = (), others: Sequence[RawLoop] = (),
               **trainer_kwargs: Any) -> Tuple[List[float], List[float]]:
    """Epoch times of the engine and of a raw epoch run right after each of its epochs (same
    process, same moment: the pair sees the same machine), as two aligned lists. ``others``
    (raw loops on their own batches) also run an epoch after each engine epoch."""
    import importlib

    if logger == "csv":
        log_arg: Any = importlib.import_module(pkg.__name__ + ".loggers").CSVLogger(save_dir=workdir)
    else:
        log_arg = False

    class RawAfterEachEpoch(importlib.import_module(pkg.__name__ + ".callbacks").Callback):  # type: ignore[misc]
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            raw.epoch()  # outside the engine's timed epoch: that ended with its last batch
            for other in others:
                other.epoch()

    trainer = pkg.Trainer(
        max_epochs=epochs, accelerator=device.type if device.type != "cuda" else "gpu", devices=1,
        precision=precision if precision != "32" else "32-true", logger=log_arg,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=workdir, callbacks=[*extra_callbacks, RawAfterEachEpoch()],
        **trainer_kwargs,
    )
    first, raw_first = len(batches.times), len(raw.batches.times)
    trainer.fit(make_module(pkg.LightningModule, cfg), batches)
    return batches.times[first:], raw.batches.times[raw_first:]


def lightning_pkg() -> Optional[Any]:
    try:
        import lightning.pytorch as L
        import lightning.pytorch.loggers  # noqa: F401

        return L
    except ImportError:
        return None


# --- measurement ---------------------------------------------------------------------------------
def measure(name: str, cfg: Dict[str, Any], args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    clock = CLOCKS[args.clock]
    batches, raw_batches = build_batches(cfg, device, clock), build_batches(cfg, device, clock)
    lightning = lightning_pkg() if not args.no_lightning else None
    epochs = args.epochs or cfg["epochs"]
    engines = {"volt": volt, **({"lightning": lightning} if lightning is not None else {})}
    times: Dict[str, List[float]] = {"raw": []}
    ratios: Dict[str, List[float]] = {}
    for _ in range(args.repeats):
        for key, pkg in engines.items():
            raw = RawLoop(cfg, raw_batches, device, args.precision)
            with tempfile.TemporaryDirectory(prefix="volt-bench-") as d:
                engine_times, raw_times = run_engine(pkg, cfg, batches, raw, epochs, device, args.precision,
                                                     args.logger, d)
            if len(engine_times) != epochs or len(raw_times) != epochs:
                raise RuntimeError(f"{key}: timed {len(engine_times)} epochs and {len(raw_times)} raw, "
                                   f"expected {epochs}")
            pairs = list(zip(engine_times, raw_times))[1:]  # the first pair is warm-up
            times.setdefault(key, []).extend(e for e, _ in pairs)
            times["raw"].extend(r for _, r in pairs)
            ratios.setdefault(key, []).extend(e / r for e, r in pairs)
    vs_model_compiled = (compiled_rows(cfg, args, device, clock, batches, raw_batches, epochs, times, ratios)
                         if args.compile else [])
    # best: each engine's fastest epoch over raw's fastest (the least interference, as timeit
    # reports); paired: the median over epochs of each engine epoch over the raw epoch right
    # after it, which cancels load that drifts over seconds.
    best = {k: min(v) for k, v in times.items()}
    medians = {k: statistics.median(v) for k, v in times.items()}
    paired = {k: statistics.median(v) for k, v in ratios.items()}
    result: Dict[str, Any] = {
        "config": cfg,
        "steps_per_epoch": cfg["steps"],
        "best_step_ms": {k: 1000 * v / cfg["steps"] for k, v in best.items()},
        "median_step_ms": {k: 1000 * v / cfg["steps"] for k, v in medians.items()},
        "ratio_vs_raw": {k: best[k] / best["raw"] for k in ratios},
        "ratio_vs_raw_median": {k: medians[k] / medians["raw"] for k in ratios},
        "ratio_vs_raw_paired": paired,
        "epochs_measured": {k: len(v) for k, v in ratios.items()},
    }
    if args.compile:
        result["ratio_compiled_vs_model_compiled_paired"] = statistics.median(vs_model_compiled)
        result["ratio_compiled_vs_model_compiled_paired_range"] = (min(vs_model_compiled), max(vs_model_compiled))
        result["compile_setting"] = compile_argument(args.compile)
    spread = {k: (min(v), max(v)) for k, v in ratios.items()}
    result["ratio_vs_raw_paired_range"] = spread
    line = ", ".join(f"{k}/raw = {r:.3f} (median {result['ratio_vs_raw_median'][k]:.3f}, paired {paired[k]:.3f} "
                     f"[{spread[k][0]:.3f}-{spread[k][1]:.3f}])"
                     for k, r in result["ratio_vs_raw"].items() if k in paired)
    print(f"{name:>20}: raw {result['best_step_ms']['raw']:.3f} ms/step, "
          f"volt {result['best_step_ms']['volt']:.3f} ms/step, {line}", flush=True)
    if args.compile:
        print(f"{'':>20}  volt_compiled / raw with the model compiled (paired) = "
              f"{result['ratio_compiled_vs_model_compiled_paired']:.3f}", flush=True)
    return result


def compile_argument(choice: str) -> Any:
    """``--compile``: inductor is Trainer(compile=True); another name is that torch.compile backend."""
    if choice == "cudagraphs":
        return "cudagraphs"
    return True if choice == "inductor" else {"backend": choice}


def compiled_rows(cfg: Dict[str, Any], args: argparse.Namespace, device: torch.device, clock: Callable[[], float],
                  batches: Batches, raw_batches: Batches, epochs: int, times: Dict[str, List[float]],
                  ratios: Dict[str, List[float]]) -> List[float]:
    """volt with Trainer(compile=...), paired with a raw eager epoch and with a raw epoch whose model
    alone is compiled (what users do without the engine's help), each right after each volt epoch.
    The first epoch (compiling) is warm-up, left out as for every engine."""
    model_batches = build_batches(cfg, device, clock)
    setting = compile_argument(args.compile)
    model_options = {} if setting in (True, "cudagraphs") else dict(setting)
    if setting == "cudagraphs":
        model_options = {"mode": "reduce-overhead"}
    vs_model: List[float] = []
    for _ in range(args.repeats):
        raw = RawLoop(cfg, raw_batches, device, args.precision)
        model_compiled = RawLoop(cfg, model_batches, device, args.precision, compile_model=model_options)
        first = len(model_batches.times)
        with tempfile.TemporaryDirectory(prefix="volt-bench-") as d:
            engine_times, raw_times = run_engine(volt, cfg, batches, raw, epochs, device, args.precision, args.logger,
                                                 d, others=[model_compiled], compile=setting)
        model_times = model_batches.times[first:]
        triples = list(zip(engine_times, raw_times, model_times))[1:]
        times.setdefault("volt_compiled", []).extend(e for e, _, _ in triples)
        times.setdefault("raw_model_compiled", []).extend(m for _, _, m in triples)
        ratios.setdefault("volt_compiled", []).extend(e / r for e, r, _ in triples)
        vs_model.extend(e / m for e, _, m in triples)
    return vs_model


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "16-mixed"])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--epochs", type=int, default=0,
                        help="epochs per run, the first is warm-up (default: per model, 11 tiny, 4 medium)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs per engine")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps CPU timings stable)")
    parser.add_argument("--logger", default="csv", choices=["csv", "none"])
    parser.add_argument("--clock", default=None, choices=sorted(CLOCKS),
                        help="cpu: this process's CPU time, which leaves out the time other processes of a "
                             "shared machine take the core (default on CPU); wall: wall clock (default on CUDA, "
                             "where the host waits for the device)")
    parser.add_argument("--no-lightning", action="store_true", help="skip Lightning even when installed")
    parser.add_argument("--compile", default="", metavar="BACKEND",
                        help="add the compiled rows: volt with Trainer(compile=...) over raw eager and over a raw "
                             "loop that compiles only the model; inductor means compile=True, cudagraphs "
                             "compile='cudagraphs' (CUDA), another name is that torch.compile backend")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "engine_overhead.json"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock is None:
        args.clock = "wall" if device.type == "cuda" else "cpu"
    results: Dict[str, Any] = {}
    for name in args.models.split(","):
        if name not in MODELS:
            parser.error(f"--models: unknown model {name!r}; choose from {sorted(MODELS)}")
        cfg = dict(MODELS[name])
        if device.type == "cuda":
            cfg.update(GPU_SCALE.get(name, {}))
        results[name] = measure(name, cfg, args, device)
    report = {
        "benchmark": "engine_overhead",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "precision": args.precision,
        "threads": args.threads,
        "torch": torch.__version__,
        "volt": volt.__version__,
        "lightning": getattr(lightning_pkg(), "__version__", None),
        "logger": args.logger,
        "clock": args.clock,
        "targets": {"tiny_mlp": 1.05, "micro_mlp": 1.05, "nano_mlp": 1.05, "medium_transformer": 1.01},
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
