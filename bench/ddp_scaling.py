"""DDP scaling: the same global work on 1 and on N processes through volt-run, as a throughput ratio.

Each run trains the same MLP on the same pre-built synthetic batches for the same number of
optimizer steps with the same *global* batch (``--global-batch``): one process
takes the whole batch, N processes take 1/N of it each. Every process gets one
CPU thread, so the ideal ratio is N. Throughput is measured inside rank 0 from
the end of the warm-up steps to the end of training (process start and
rendezvous excluded).

With ``--accelerator cuda`` it instead runs one process with NCCL (DDP, world
size 1) and ``--precision`` (default bf16-mixed) and compares it with a raw
PyTorch loop (autocast + DDP-free) on the same GPU: the engine's GPU overhead.

    python bench/ddp_scaling.py                       # CPU: 1 vs 2 processes, gloo
    python bench/ddp_scaling.py --accelerator cuda    # GPU: volt (nccl, bf16-mixed) vs raw loop

Writes bench/results/ddp_scaling[_cuda].json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "trainer_image"))


def make_model(dim: int, hidden: int, layers: int) -> nn.Module:
    blocks: List[nn.Module] = []
    width = dim
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    blocks.append(nn.Linear(width, 1))
    return nn.Sequential(*blocks)


class Batches(torch.utils.data.Dataset):
    """Pre-built batches (item i is batch i): data loading stays out of the measurement."""

    def __init__(self, count: int, batch_size: int, dim: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(count, batch_size, dim, generator=generator)
        self.y = self.x.sum(dim=2, keepdim=True).tanh()

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> Any:
        return self.x[index], self.y[index]


# --- the worker: runs under volt-run ------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    import volt
    from volt.callbacks.base import Callback

    class Timing(Callback):
        """Wall clock from the end of warm-up to the end of training, on rank 0."""

        def __init__(self, warmup: int) -> None:
            self.warmup = warmup
            self.start = 0.0
            self.end = 0.0

        def _sync(self, trainer: Any) -> None:
            if trainer.root_device.type == "cuda":
                torch.cuda.synchronize()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step == self.warmup:
                self._sync(trainer)
                self.start = time.perf_counter()

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self._sync(trainer)
            self.end = time.perf_counter()

    class Module(volt.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model(args.dim, args.hidden, args.layers)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_rank = args.global_batch // world
    # batch_size=None: each item is a batch; the DistributedSampler hands each rank its own.
    loader = torch.utils.data.DataLoader(Batches(args.steps * world, per_rank, args.dim), batch_size=None)
    timing = Timing(args.warmup)
    volt.seed_everything(0)
    trainer = volt.Trainer(
        accelerator=args.accelerator, devices=int(os.environ.get("LOCAL_WORLD_SIZE", "1")), strategy="ddp",
        precision=args.precision, max_epochs=1, max_steps=args.steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timing],
    )
    trainer.fit(Module(), loader)
    if trainer.is_global_zero:
        measured = args.steps - args.warmup
        result = {"world_size": world, "steps": measured, "seconds": timing.end - timing.start,
                  "samples_per_s": measured * args.global_batch / (timing.end - timing.start)}
        with open(args.result, "w") as f:
            json.dump(result, f)


# --- the driver ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_volt(args: argparse.Namespace, nproc: int) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VOLT_", "PET_"))
               and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "NUM_NODES")}
        env.update(OMP_NUM_THREADS=str(args.threads_per_process), MASTER_PORT=str(_free_port()),
                   PYTHONPATH=os.pathsep.join([os.path.join(REPO, "trainer_image"), env.get("PYTHONPATH", "")]))
        forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                     if k in ("dim", "hidden", "layers", "global_batch", "steps", "warmup", "accelerator", "precision")]
        command = [sys.executable, "-m", "volt.launch", "--nproc-per-node", str(nproc), "--",
                   sys.executable, os.path.abspath(__file__), "--worker", f"--result={result}", *forwarded]
        subprocess.run(command, env=env, check=True, timeout=args.timeout)
        with open(result) as f:
            return json.load(f)


def run_raw_gpu(args: argparse.Namespace) -> Dict[str, Any]:
    """The same training as the GPU worker, in a plain loop: autocast, SGD, no engine."""
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = make_model(args.dim, args.hidden, args.layers).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = torch.utils.data.DataLoader(Batches(args.steps, args.global_batch, args.dim), batch_size=None)
    dtype = torch.bfloat16 if args.precision.startswith("bf16") else torch.float16
    use_autocast = args.precision.endswith("-mixed")
    start = 0.0
    for step, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=dtype, enabled=use_autocast):
            loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step + 1 == args.warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        if step + 1 == args.steps:
            break
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    measured = args.steps - args.warmup
    return {"world_size": 1, "steps": measured, "seconds": seconds, "samples_per_s": measured * args.global_batch / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default=None, help="default: 32-true on CPU, bf16-mixed on CUDA")
    parser.add_argument("--processes", type=int, default=2, help="CPU: the N compared with 1")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--global-batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads-per-process", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.precision is None:
        args.precision = "bf16-mixed" if args.accelerator == "cuda" else "32-true"
    if args.worker:
        worker(args)
        return
    if args.global_batch % args.processes:
        parser.error(f"--global-batch {args.global_batch} must divide by --processes {args.processes}")

    report: Dict[str, Any] = {"benchmark": "ddp_scaling", "accelerator": args.accelerator, "precision": args.precision,
                              "model": {"dim": args.dim, "hidden": args.hidden, "layers": args.layers},
                              "global_batch": args.global_batch, "steps": args.steps, "warmup": args.warmup,
                              "host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__}
    if args.accelerator == "cpu":
        one = run_volt(args, 1)
        many = run_volt(args, args.processes)
        report.update(threads_per_process=args.threads_per_process, one_process=one,
                      n_processes=many, processes=args.processes,
                      ratio=many["samples_per_s"] / one["samples_per_s"], ideal_ratio=float(args.processes))
        print(f"1 process: {one['samples_per_s']:.0f} samples/s; {args.processes} processes: "
              f"{many['samples_per_s']:.0f} samples/s; ratio {report['ratio']:.2f} (ideal {args.processes})")
        name = "ddp_scaling"
    else:
        report["gpu"] = torch.cuda.get_device_name(0)
        raw = run_raw_gpu(args)
        engine = run_volt(args, 1)
        raw_again = run_raw_gpu(args)  # bracket the engine run: clocks and caches drift
        mean_raw = (raw["samples_per_s"] + raw_again["samples_per_s"]) / 2
        report.update(raw_loop=[raw, raw_again], volt_nccl_ddp=engine, ratio=engine["samples_per_s"] / mean_raw)
        print(f"raw loop: {raw['samples_per_s']:.0f} / {raw_again['samples_per_s']:.0f} samples/s (before/after); "
              f"volt (nccl DDP, {args.precision}): "
              f"{engine['samples_per_s']:.0f} samples/s; ratio {report['ratio']:.3f}")
        name = "ddp_scaling_cuda"
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", f"{name}{'_' + args.tag if args.tag else ''}.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
