"""Checkpoint saves and loads through volt's real checkpoint code, as ratios to baselines measured in the same run.

The state is a model plus its SGD momentum buffers, float32, about ``--megabytes`` MB
in all (default 1024). Each configuration is saved ``--repeats`` times, every save right
after its own baselines (a ``dd`` and a staging copy): the load of a shared machine moves
from minute to minute, so each ratio is taken within one such triple and the table shows
the median ratio.

* ``torch.save + fsync``: the reference a bare torch user gets;
* ``file``: volt's single-file checkpoint (``volt.checkpoint.atomic_save``: temp file, SHA-256
  while writing, fsync, rename, directory fsync), and the same write without the checksum;
* ``sharded sync|async, W writers``: ``volt.checkpoint_sharded.ShardedCheckpointIO`` (DCP).
  In volt a writer is a process: every rank writes one file (``FileSystemWriter``,
  ``single_file_per_rank=True``, one IO thread). W=1 is one process without a process
  group; W=4 is four gloo processes, each holding a quarter of every tensor (a ``DTensor``
  sharded on dim 0, the layout ``fully_shard`` gives) and one torch thread.

Measured per configuration, in the same run:

* ``blocked``: how long ``save_checkpoint`` holds the training process (for W=4 the slowest
  rank; the next collective waits for it), over ``staging``: cloning the same tensors in
  the same processes (the host copy async mode has to make, into fresh memory). Target for
  async: <= 1.2. Also over ``warm copy``: the same copy into buffers allocated once and
  refilled at every save, which is what async mode does after its first save (the first
  save of each configuration, which allocates them, is not counted).
* ``throughput``: bytes written / time until the checkpoint is durable and committed
  (async: until ``wait()`` returns), over the disk's own sequential speed measured with
  ``dd if=/dev/zero bs=16M conv=fsync`` of the same size into the same directory. Target: >= 0.7.
* ``load``: reading the checkpoint back as full CPU tensors (``volt.checkpoint.load`` for a
  file, ``load_sharded`` for a directory) over ``torch.load`` of the ``torch.save`` file
  timed next to it, both read once before (from the page cache, not the disk).

    python bench/checkpoint.py [--megabytes 1024] [--repeats 3] [--dir /path/on/the/volume] [--quick]

Writes bench/results/checkpoint.json (``--out``) and prints the table of ratios.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "trainer_image"))

from volt import checkpoint as volt_checkpoint  # noqa: E402
from volt.checkpoint_sharded import ShardedCheckpointIO, load_sharded  # noqa: E402

ROW_WIDTH = 1024  # float32 columns per tensor row: rows split evenly between 4 ranks
DD_BLOCK = 16 * 1024 * 1024
SHARDED_WRITERS = (1, 4)


# --- the state ---------------------------------------------------------------------------------
def tensor_shapes(megabytes: float) -> List[Tuple[int, int]]:
    """Shapes of the weights: an even count of tensors up to 64 MiB each, rows a multiple of 4."""
    count = max(2, 2 * round(megabytes / 128))  # weights + momentum: half each
    rows = max(4, int(megabytes * 2**20 / (count * ROW_WIDTH * 4)) // 4 * 4)
    return [(rows, ROW_WIDTH)] * (count // 2)


def checkpoint_dict(weights: List[Any], momenta: List[Any], step: int) -> Dict[str, Any]:
    """The keys a volt/Lightning checkpoint has, around the given tensors."""
    return {
        "epoch": 0,
        "global_step": step,
        "state_dict": {f"layers.{i}.weight": w for i, w in enumerate(weights)},
        "optimizer_states": [{
            "state": {i: {"momentum_buffer": m} for i, m in enumerate(momenta)},
            "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": list(range(len(momenta)))}],
        }],
    }


def full_state(shapes: List[Tuple[int, int]]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(shape, generator=generator) for shape in shapes]
    momenta = [torch.randn(shape, generator=generator) for shape in shapes]
    return weights, momenta


def local_tensors(state: Dict[str, Any]) -> List[torch.Tensor]:
    """The tensors this process holds (a DTensor's local shard)."""
    out: List[torch.Tensor] = []
    for t in list(state["state_dict"].values()) + [s["momentum_buffer"] for s in state["optimizer_states"][0]["state"].values()]:
        out.append(t.to_local() if hasattr(t, "to_local") else t)
    return out


def staging_copy(state: Dict[str, Any]) -> None:
    """What async mode must do before training may go on: a fresh host copy of every tensor, all
    alive at once (one at a time, the allocator would hand back the same warm pages each time)."""
    copies = [t.clone() for t in local_tensors(state)]
    del copies


class WarmCopy:
    """The same copy into buffers allocated once and refilled at every save: what async mode's
    reused staging buffers do after the first save (no page faults)."""

    def __init__(self, state: Dict[str, Any]) -> None:
        self.buffers = [torch.empty_like(t) for t in local_tensors(state)]
        self(state)  # touch every page once

    def __call__(self, state: Dict[str, Any]) -> None:
        for buffer, tensor in zip(self.buffers, local_tensors(state)):
            buffer.copy_(tensor)


# --- timing helpers ----------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def disk_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def dd_seconds(path: str, nbytes: int) -> float:
    """``dd`` of ``nbytes`` zeros to ``path`` with fsync before it exits: the disk's own sequential write."""
    count = max(1, math.ceil(nbytes / DD_BLOCK))
    command = ["dd", "if=/dev/zero", f"of={path}", f"bs={DD_BLOCK}", f"count={count}", "conv=fsync", "status=none"]
    seconds = timed(lambda: subprocess.run(command, check=True))
    return seconds * nbytes / (count * DD_BLOCK)  # per byte of the checkpoint's size


def atomic_save_no_checksum(obj: Any, path: str) -> None:
    """volt's atomic write without the SHA-256: torch.save to a temp path, fsync, rename, fsync the directory."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(os.path.dirname(path))


# --- paired measurements: each save right after its own baselines ------------------------------
def paired(save: Callable[[], Any], wait: Callable[[], Any], state: Dict[str, Any], dd_path: Optional[str],
           nbytes: int, barrier: Callable[[], None] = lambda: None,
           warm: Optional[WarmCopy] = None) -> Dict[str, float]:
    """One save and, just before it, the baselines it is compared with: the machine's load moves
    between minutes, so each ratio is taken within one such triple (``dd_path`` None: no dd here)."""
    dd = 0.0
    if dd_path is not None:
        dd = dd_seconds(dd_path, nbytes)
        drop(dd_path)
    barrier()
    staging = timed(lambda: staging_copy(state))
    warm = warm or WarmCopy(state)
    barrier()
    warm_staging = timed(lambda: warm(state))
    barrier()
    start = time.perf_counter()
    save()
    returned = time.perf_counter()
    wait()
    return {"dd": dd, "staging": staging, "warm_staging": warm_staging, "blocked": returned - start,
            "durable": time.perf_counter() - start}


def sharded_saves(state_of: Callable[[int], Dict[str, Any]], directory: str, repeats: int, nbytes: int,
                  rank: int = 0) -> Dict[str, List[Dict[str, float]]]:
    """Sync then async saves through ShardedCheckpointIO on this process, each paired with its baselines.

    Every rank starts each save together (a barrier), as training ranks reach a checkpoint; rank 0
    runs ``dd`` before it.
    """
    barrier = dist.barrier if dist.is_initialized() else (lambda: None)
    dd_path = os.path.join(directory, "dd.bin") if rank == 0 else None
    out: Dict[str, List[Dict[str, float]]] = {}
    step = 0
    for mode in ("sync", "async"):
        io = ShardedCheckpointIO(async_save=mode == "async")
        path = os.path.join(directory, f"{mode}.ckpt")
        runs = []
        warm = WarmCopy(state_of(0))
        # the first save also sets up the writer's process group and (async) allocates the staging
        # buffers that later saves refill: not counted
        for _ in range(repeats + 1):
            step += 1
            state = state_of(step)
            runs.append(paired(lambda: io.save_checkpoint(state, path), io.wait, state, dd_path, nbytes, barrier,
                               warm))
        io.teardown()  # and the deletion of the checkpoint the last save replaced
        out[mode] = runs[1:]
        del warm
    return out


def _rank_main(rank: int, world: int, port: int, shapes: List[Tuple[int, int]], directory: str, repeats: int,
               queue: Any) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        weights, momenta = full_state(shapes)  # every rank the same numbers; each keeps its quarter
        nbytes = sum(t.numel() * 4 for t in weights + momenta)

        def shard(t: torch.Tensor) -> Any:
            return DTensor.from_local(t.chunk(world)[rank].clone(), mesh, [Shard(0)], run_check=False)

        weights, momenta = [shard(t) for t in weights], [shard(t) for t in momenta]
        result = sharded_saves(lambda step: checkpoint_dict(weights, momenta, step), directory, repeats, nbytes, rank)
        queue.put((rank, result))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sharded_saves_on_ranks(world: int, shapes: List[Tuple[int, int]], directory: str,
                           repeats: int) -> Dict[str, List[Dict[str, float]]]:
    """``sharded_saves`` on ``world`` gloo processes: per save, the slowest rank's times and rank 0's dd."""
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    port = free_port()
    procs = [context.Process(target=_rank_main, args=(r, world, port, shapes, directory, repeats, queue))
             for r in range(world)]
    for p in procs:
        p.start()
    results = dict(queue.get() for _ in range(world))
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"a checkpoint rank exited with {p.exitcode}")
    merged: Dict[str, List[Dict[str, float]]] = {}
    for mode in ("sync", "async"):
        merged[mode] = [{key: max(results[r][mode][i][key] for r in range(world)) for key in results[0][mode][i]}
                        for i in range(repeats)]
    return merged


# --- the run ---------------------------------------------------------------------------------
def summarize(runs: List[Dict[str, float]], size: int, nbytes: int) -> Dict[str, float]:
    """Medians of the per-save ratios (and of the seconds) of one configuration."""
    med = statistics.median
    return {
        "blocked_s": med(r["blocked"] for r in runs), "durable_s": med(r["durable"] for r in runs),
        "staging_s": med(r["staging"] for r in runs), "dd_s": med(r["dd"] for r in runs), "bytes": size,
        "warm_staging_s": med(r["warm_staging"] for r in runs),
        "blocked_over_staging": med(r["blocked"] / r["staging"] for r in runs),
        "blocked_over_warm_staging": med(r["blocked"] / r["warm_staging"] for r in runs),
        "throughput_over_dd": med((size / r["durable"]) / (nbytes / r["dd"]) for r in runs),
    }


def load_ratio(load: Callable[[], Any], raw: str, repeats: int) -> Dict[str, float]:
    """``load`` and ``torch.load`` of ``raw`` timed next to each other, each time: the median ratio.

    Both files are read once first, so neither timed load waits for the disk (a file written
    several GB of saves ago may have left the page cache, one just written has not), and the
    order alternates within the pairs.
    """
    def torch_load() -> Any:
        return torch.load(raw, map_location="cpu", weights_only=False)

    torch_load(), load()
    pairs = []
    for i in range(repeats):
        if i % 2:
            ours = timed(load)
            pairs.append((timed(torch_load), ours))
        else:
            pairs.append((timed(torch_load), timed(load)))
    return {"load_s": statistics.median(p[1] for p in pairs),
            "load_over_torch_load": statistics.median(p[1] / p[0] for p in pairs)}


def measure(megabytes: float, repeats: int, directory: str) -> Dict[str, Any]:
    shapes = tensor_shapes(megabytes)
    weights, momenta = full_state(shapes)
    state = checkpoint_dict(weights, momenta, 0)
    nbytes = sum(t.numel() * 4 for t in weights + momenta)
    raw, file_path, dd_path = (os.path.join(directory, n) for n in ("raw.pt", "volt.ckpt", "dd.bin"))

    def raw_save() -> None:
        drop(raw)
        torch.save(state, raw)
        fsync_path(raw)

    rows: Dict[str, Dict[str, float]] = {}
    warm = WarmCopy(state)
    for name, save, path in (("torch.save + fsync", raw_save, raw),
                             ("file (volt, SHA-256)", lambda: volt_checkpoint.atomic_save(state, file_path), file_path),
                             ("file (volt, no checksum)", lambda: atomic_save_no_checksum(state, file_path), file_path)):
        runs = [paired(save, lambda: None, state, dd_path, nbytes, warm=warm) for _ in range(repeats)]
        rows[name] = summarize(runs, disk_bytes(path), nbytes)
    torch.load(raw, map_location="cpu", weights_only=False)  # into the page cache, as load_ratio does
    rows["torch.save + fsync"].update(load_s=statistics.median(
        timed(lambda: torch.load(raw, map_location="cpu", weights_only=False)) for _ in range(repeats)),
        load_over_torch_load=1.0)
    volt_checkpoint.atomic_save(state, file_path)
    rows["file (volt, SHA-256)"].update(load_ratio(lambda: volt_checkpoint.load(file_path, map_location="cpu"),
                                                   raw, repeats))
    drop(file_path)
    del weights, momenta, state, warm

    for writers in SHARDED_WRITERS:
        where = tempfile.mkdtemp(prefix=f"sharded{writers}-", dir=directory)
        if writers == 1:
            w, m = full_state(shapes)
            result = sharded_saves(lambda step: checkpoint_dict(w, m, step), where, repeats, nbytes)
            del w, m
        else:
            result = sharded_saves_on_ranks(writers, shapes, where, repeats)
        for mode in ("sync", "async"):
            path = os.path.join(where, f"{mode}.ckpt")
            row = summarize(result[mode], disk_bytes(path), nbytes)
            row.update(load_ratio(lambda: load_sharded(path), raw, repeats))
            rows[f"sharded {mode}, {writers} writer{'s' if writers > 1 else ''}"] = row
        shutil.rmtree(where)
    drop(raw)
    dd_median = statistics.median(row["dd_s"] for row in rows.values())
    return {"state_bytes": nbytes, "state_mb": round(nbytes / 1e6, 1), "tensors": 2 * len(shapes),
            "dd_mb_per_s": round(nbytes / 1e6 / dd_median, 1), "rows": rows}


def table(rows: Dict[str, Dict[str, float]]) -> str:
    lines = ["| save | blocked / staging copy | blocked / warm copy | throughput / dd | load / torch.load | "
             "blocked s | durable s |",
             "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        load = f"{row['load_over_torch_load']:.2f}" if "load_over_torch_load" in row else "-"
        lines.append(f"| {name} | {row['blocked_over_staging']:.2f} | {row['blocked_over_warm_staging']:.2f} | "
                     f"{row['throughput_over_dd']:.2f} | {load} | {row['blocked_s']:.3f} | {row['durable_s']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=1024, help="state size in MB (weights + momentum)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="a directory on the checkpoint volume (a temp dir is made in it)")
    parser.add_argument("--quick", action="store_true", help="a 10 MB state, 1 repeat: checks the bench runs")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "checkpoint.json"))
    args = parser.parse_args()
    if args.quick:
        args.megabytes, args.repeats = 10, 1
    if args.megabytes <= 0 or args.repeats < 1:
        parser.error("--megabytes must be > 0 and --repeats >= 1")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="volt-bench-ckpt-", dir=args.dir) as directory:
        report = measure(args.megabytes, args.repeats, directory)
    report.update(benchmark="checkpoint", repeats=args.repeats, host=platform.node(), torch=torch.__version__,
                  load_average={"before": load_before, "after": os.getloadavg()})
    print(f"state {report['state_mb']} MB in {report['tensors']} tensors; dd {report['dd_mb_per_s']} MB/s; "
          f"load average before {load_before[0]:.1f}, after {report['load_average']['after'][0]:.1f}")
    print(table(report["rows"]))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
