"""Cost of PrometheusCallback: the engine's step overhead with the callback on vs off.

Method (one process, one run): the same model, data and optimizer are trained
by (a) a raw PyTorch loop, (b) the volt Trainer without the callback and (c)
with it, while a background thread scrapes /metrics and /progress every
``--scrape-interval`` seconds (Prometheus scrapes every 15-30 s; 1 s is harsh).
Rounds interleave the three in rotating order; each configuration's step time
is the median over rounds of (training time / steps), timed from
``on_train_start`` to ``on_train_end`` (the raw loop: first to last step), so
setup is excluded. Reported:

- ``overhead_off`` = volt-off / raw and ``overhead_on`` = volt-on / raw,
  the engine overhead ratio without and with the callback;
- ``delta_pct`` = (overhead_on / overhead_off - 1) * 100, target <= 1;
- ``hook_us_per_step``: the callback's per-batch hooks timed alone (a
  noise-free bound on what it adds per step), and ``hook_share_pct`` = that
  over the raw step time.

    python bench/prometheus_overhead.py [--device cuda] [--steps 300] [--rounds 7]

Writes bench/results/prometheus_overhead.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer_image"))

from volt import LightningModule, Trainer  # noqa: E402
from volt.callbacks import Callback  # noqa: E402
from volt.callbacks.prometheus import PrometheusCallback  # noqa: E402


def make_net(features: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def make_loader(args: argparse.Namespace) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size * args.steps, args.features, generator=generator)
    y = x.sum(dim=1, keepdim=True)
    return DataLoader(TensorDataset(x, y), batch_size=args.batch_size)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raw_step_time(args: argparse.Namespace, device: torch.device) -> float:
    torch.manual_seed(0)
    net = make_net(args.features, args.hidden).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    loader = make_loader(args)
    started = None
    for step, (x, y) in enumerate(loader):
        if step == 1:  # the first step pays for lazy initialisation in both loops
            sync(device)
            started = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(net(x), y)
        loss.backward()
        optimizer.step()
    sync(device)
    assert started is not None
    return (time.perf_counter() - started) / (len(loader) - 1)


class Model(LightningModule):
    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.net = make_net(features, hidden)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class StepTimer(Callback):
    """Times batches 1..N-1, like the raw loop (synchronising the device at both ends)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.started: Optional[float] = None
        self.steps = 0
        self.elapsed = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 1:
            sync(self.device)
            self.started = time.perf_counter()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        sync(self.device)
        assert self.started is not None
        self.elapsed = time.perf_counter() - self.started
        self.steps = trainer.global_step - 1


class Scraper:
    """Scrapes a callback's endpoints every ``interval`` seconds while training runs."""

    def __init__(self, callback: PrometheusCallback, interval: float) -> None:
        self.callback, self.interval = callback, interval
        self.stop_event = threading.Event()
        self.scrapes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval):
            port = self.callback.port
            if port is None:
                continue
            for path in ("/metrics", "/progress"):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                    response.read()
            self.scrapes += 1


def volt_step_time(args: argparse.Namespace, device: torch.device, with_callback: bool) -> Dict[str, float]:
    torch.manual_seed(0)
    timer = StepTimer(device)
    callbacks: List[Callback] = [timer]
    scraper = None
    if with_callback:
        prometheus = PrometheusCallback(port=0, host="127.0.0.1")
        callbacks.insert(0, prometheus)
        scraper = Scraper(prometheus, args.scrape_interval)
        scraper.thread.start()
    trainer = Trainer(
        max_steps=args.steps, max_epochs=1, accelerator=device.type, devices=1, callbacks=callbacks,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=50,
    )
    trainer.fit(Model(args.features, args.hidden), train_dataloaders=make_loader(args))
    if scraper is not None:
        scraper.stop_event.set()
        scraper.thread.join(timeout=10)
    return {"step_s": timer.elapsed / timer.steps, "scrapes": float(scraper.scrapes if scraper else 0)}


def hook_cost_us(batch_size: int, features: int, iterations: int = 20000) -> float:
    """Per-batch cost of the callback's hot-path hooks, timed alone."""
    callback = PrometheusCallback(port=0)
    batch = (torch.zeros(batch_size, features), torch.zeros(batch_size, 1))
    outputs = {"loss": torch.zeros(())}
    callback.on_train_epoch_start(None, None)
    started = time.perf_counter()
    for index in range(iterations):
        callback.on_train_batch_start(None, None, batch, index)
        callback.on_train_batch_end(None, None, outputs, batch, index)
    return (time.perf_counter() - started) / iterations * 1e6


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "prometheus_overhead.json")
    args = parser.parse_args(argv)
    if args.steps < 10 or args.rounds < 1:
        parser.error("--steps must be >= 10 and --rounds >= 1")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    runs: Dict[str, Callable[[], float]] = {
        "raw": lambda: raw_step_time(args, device),
        "volt_off": lambda: volt_step_time(args, device, with_callback=False)["step_s"],
        "volt_on": lambda: volt_step_time(args, device, with_callback=True)["step_s"],
    }
    for run in runs.values():  # warm-up: allocator, kernels, imports
        run()
    times: Dict[str, List[float]] = {name: [] for name in runs}
    names = list(runs)
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            times[name].append(runs[name]())
    median = {name: statistics.median(values) for name, values in times.items()}
    hook_us = hook_cost_us(args.batch_size, args.features)
    overhead_off = median["volt_off"] / median["raw"]
    overhead_on = median["volt_on"] / median["raw"]
    result = {
        "benchmark": "prometheus_overhead",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "step_s_median": median,
        "step_s_all": times,
        "overhead_off": overhead_off,
        "overhead_on": overhead_on,
        "delta_pct": (overhead_on / overhead_off - 1) * 100,
        "hook_us_per_step": hook_us,
        "hook_share_pct": hook_us * 1e-6 / median["raw"] * 100,
        "target_pct": 1.0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{result['device_name']}: raw {median['raw'] * 1e3:.3f} ms/step, volt off {median['volt_off'] * 1e3:.3f}, "
        f"on {median['volt_on'] * 1e3:.3f}; overhead off {overhead_off:.3f}x, on {overhead_on:.3f}x, "
        f"delta {result['delta_pct']:+.2f}% (target <= 1%); hooks {hook_us:.2f} us/step = {result['hook_share_pct']:.2f}% of a raw step"
    )
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
