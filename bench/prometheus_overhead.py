"""Cost of PrometheusCallback: bench/engine_overhead.py's overhead ratio with the callback on vs off.

Same method and models as bench/engine_overhead.py (its helpers are imported):
pre-built batches, volt's Trainer (``self.log`` every step, CSV logger) with a
raw PyTorch epoch run after each of its epochs, the first pair dropped as
warm-up, and the median of the per-epoch ratios; ``--repeats`` runs of each. volt runs twice: without the callback ("off") and with it ("on"),
while a thread scrapes ``/metrics`` and ``/progress`` every
``--scrape-interval`` seconds (Prometheus scrapes every 15-30 s; 1 s is harsh).

Per model it reports ``ratio_off`` = volt-off / raw and ``ratio_on`` =
volt-on / raw (the engine overhead ratio), ``delta_pct`` = (ratio_on /
ratio_off - 1) * 100 with a target of <= 1, and ``hook_us_per_step``: the
callback's per-batch hooks timed alone, a noise-free bound on what it adds to
a step (``hook_share_pct`` of a raw step).

    python bench/prometheus_overhead.py                 # CPU
    python bench/prometheus_overhead.py --device cuda

Writes bench/results/prometheus_overhead.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "trainer_image"))

import engine_overhead as eo  # noqa: E402
import volt  # noqa: E402
import volt.loggers  # noqa: E402
from volt.callbacks.prometheus import PrometheusCallback  # noqa: E402


class Scraper:
    """Scrapes a callback's endpoints every ``interval`` seconds until stopped."""

    def __init__(self, callback: PrometheusCallback, interval: float) -> None:
        self.callback, self.interval = callback, interval
        self.stopped = threading.Event()
        self.scrapes = 0
        self.thread = threading.Thread(target=self._run, name="bench-scraper", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            port = self.callback.port
            if port is None:
                continue
            try:
                for path in ("/metrics", "/progress"):
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                        response.read()
            except OSError:
                if self.callback.port is None:  # the trainer tore the server down mid-scrape
                    return
                raise
            self.scrapes += 1

    def stop(self) -> int:
        self.stopped.set()
        self.thread.join(timeout=10)
        return self.scrapes


def run_volt(cfg: Dict[str, Any], batches: Any, raw: Any, args: argparse.Namespace, device: torch.device,
             workdir: str, prometheus: bool, scrapes: List[int]) -> Tuple[List[float], List[float]]:
    """engine_overhead.run_engine for volt (epochs paired with raw ones), with the callback and a scraper or not."""
    callbacks: List[Any] = []
    scraper = None
    if prometheus:
        callback = PrometheusCallback(port=0, host="127.0.0.1")
        callbacks.append(callback)
        scraper = Scraper(callback, args.scrape_interval)
    try:
        return eo.run_engine(volt, cfg, batches, raw, args.epochs, device, args.precision, args.logger, workdir,
                             extra_callbacks=callbacks)
    finally:
        if scraper is not None:
            scrapes.append(scraper.stop())


class _Steps:
    """What the batch hooks read from the trainer: ``global_step``, a property as on volt.Trainer."""

    def __init__(self) -> None:
        self.taken = 0

    @property
    def global_step(self) -> int:
        return self.taken


def hook_cost_us(batch: Any, iterations: int = 20000) -> float:
    """Per-batch cost of the callback's training-batch hooks, called directly."""
    callback = PrometheusCallback(port=0)
    outputs = {"loss": torch.zeros(())}
    trainer = _Steps()
    callback.on_train_epoch_start(trainer, None)
    started = time.perf_counter()
    for index in range(iterations):
        callback.on_train_batch_start(trainer, None, batch, index)
        trainer.taken = index
        callback.on_train_batch_end(trainer, None, outputs, batch, index)
    return (time.perf_counter() - started) / iterations * 1e6


def measure(name: str, cfg: Dict[str, Any], args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    clock = eo.CLOCKS["wall" if device.type == "cuda" else "cpu"]
    batches, raw_batches = eo.build_batches(cfg, device, clock), eo.build_batches(cfg, device, clock)
    scrapes: List[int] = []
    ratios: Dict[str, List[float]] = {"volt_off": [], "volt_on": []}
    raw_times: List[float] = []
    for repeat in range(args.repeats):
        # Alternating which goes first, so drifts in machine load hit both alike.
        for key in (("volt_off", "volt_on") if repeat % 2 == 0 else ("volt_on", "volt_off")):
            raw = eo.RawLoop(cfg, raw_batches, device, args.precision)
            with tempfile.TemporaryDirectory(prefix="volt-bench-") as workdir:
                engine, paired_raw = run_volt(cfg, batches, raw, args, device, workdir,
                                              prometheus=key == "volt_on", scrapes=scrapes)
            ratios[key] += [e / r for e, r in list(zip(engine, paired_raw))[1:]]  # drop the warm-up epoch
            raw_times += paired_raw[1:]
    ratio_off = statistics.median(ratios["volt_off"])
    ratio_on = statistics.median(ratios["volt_on"])
    raw_step_s = statistics.median(raw_times) / cfg["steps"]
    hook_us = hook_cost_us(next(iter(batches)))
    result = {
        "config": cfg,
        "median_raw_step_ms": 1000 * raw_step_s,
        "ratio_off": ratio_off,
        "ratio_on": ratio_on,
        "delta_pct": (ratio_on / ratio_off - 1) * 100,
        "hook_us_per_step": hook_us,
        "hook_share_pct": hook_us * 1e-6 / raw_step_s * 100,
        "scrapes": sum(scrapes),
        "epochs_measured": {key: len(values) for key, values in ratios.items()},
    }
    print(
        f"{name:>20}: raw {result['median_raw_step_ms']:.3f} ms/step; ratio off {ratio_off:.3f}, on {ratio_on:.3f}, "
        f"delta {result['delta_pct']:+.2f}%; hooks {hook_us:.2f} us/step = {result['hook_share_pct']:.2f}% of a raw step",
        flush=True,
    )
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "16-mixed"])
    parser.add_argument("--models", default=",".join(eo.MODELS), help="comma-separated subset of " + ", ".join(eo.MODELS))
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per configuration")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps CPU timings stable)")
    parser.add_argument("--logger", default="csv", choices=["csv", "none"])
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "prometheus_overhead.json"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU")
    if args.epochs < 2 or args.repeats < 1 or not args.scrape_interval > 0:
        parser.error("--epochs must be >= 2, --repeats >= 1 and --scrape-interval > 0")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results: Dict[str, Any] = {}
    for name in args.models.split(","):
        if name not in eo.MODELS:
            parser.error(f"--models: unknown model {name!r}; choose from {sorted(eo.MODELS)}")
        cfg = dict(eo.MODELS[name])
        if device.type == "cuda":
            cfg.update(eo.GPU_SCALE.get(name, {}))
        results[name] = measure(name, cfg, args, device)
    report = {
        "benchmark": "prometheus_overhead",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "precision": args.precision,
        "threads": args.threads,
        "torch": torch.__version__,
        "volt": volt.__version__,
        "logger": args.logger,
        "scrape_interval_s": args.scrape_interval,
        "target_delta_pct": 1.0,
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
