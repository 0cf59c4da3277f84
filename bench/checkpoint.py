"""Checkpoint saves and loads through volt's real checkpoint code, as ratios to baselines measured in the same run.

The state is a model plus its SGD momentum buffers, float32, about ``--megabytes`` MB
in all (default 1024). Each configuration is saved ``--repeats`` times (median):

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
  the same processes (the host copy async mode has to make). Target for async: <= 1.2.
* ``throughput``: bytes written / time until the checkpoint is durable and committed
  (async: until ``wait()`` returns), over the disk's own sequential speed measured with
  ``dd if=/dev/zero bs=16M conv=fsync`` of the same size into the same directory. Target: >= 0.7.
* ``load``: reading the checkpoint back as full CPU tensors (``volt.checkpoint.load`` for a
  file, ``load_sharded`` for a directory) over ``torch.load`` of the ``torch.save`` file.

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
from typing import Any, Callable, Dict, List, Tuple

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
    """What async mode must do before training may go on: a fresh host copy of every tensor."""
    for t in local_tensors(state):
        t.clone()


# --- timing helpers ----------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], Any], repeats: int, before: Callable[[], Any] = lambda: None) -> float:
    times = []
    for _ in range(repeats):
        before()
        times.append(timed(fn))
    return statistics.median(times)


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


# --- sharded saves: one function for 1 process and for each of W ranks --------------------------
def sharded_saves(state_of: Callable[[int], Dict[str, Any]], directory: str, repeats: int) -> Dict[str, Any]:
    """Sync then async saves through ShardedCheckpointIO on this process; per-repeat seconds.

    Returns {"staging": [...], "sync": {"blocked": [...], "durable": [...]}, "async": {...}}.
    Every rank starts each save together (a barrier), as training ranks reach a checkpoint.
    """
    distributed = dist.is_initialized()
    barrier = dist.barrier if distributed else (lambda: None)
    step = 0
    out: Dict[str, Any] = {"staging": []}
    for _ in range(repeats):
        barrier()
        out["staging"].append(timed(lambda: staging_copy(state_of(0))))
    for mode in ("sync", "async"):
        io = ShardedCheckpointIO(async_save=mode == "async")
        path = os.path.join(directory, f"{mode}.ckpt")
        blocked, durable = [], []
        for _ in range(repeats + 1):  # the first save also sets up the writer's process group: not counted
            step += 1
            state = state_of(step)
            barrier()
            start = time.perf_counter()
            io.save_checkpoint(state, path)
            returned = time.perf_counter()
            io.wait()
            blocked.append(returned - start)
            durable.append(time.perf_counter() - start)
        out[mode] = {"blocked": blocked[1:], "durable": durable[1:], "path": path}
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

        def shard(t: torch.Tensor) -> Any:
            return DTensor.from_local(t.chunk(world)[rank].clone(), mesh, [Shard(0)], run_check=False)

        weights, momenta = [shard(t) for t in weights], [shard(t) for t in momenta]
        queue.put((rank, sharded_saves(lambda step: checkpoint_dict(weights, momenta, step), directory, repeats)))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sharded_saves_on_ranks(world: int, shapes: List[Tuple[int, int]], directory: str, repeats: int) -> Dict[str, Any]:
    """Run ``sharded_saves`` on ``world`` gloo processes; per repeat, the slowest rank's seconds."""
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

    def slowest(values: List[List[float]]) -> List[float]:
        return [max(v) for v in zip(*values)]

    merged: Dict[str, Any] = {"staging": slowest([results[r]["staging"] for r in range(world)])}
    for mode in ("sync", "async"):
        merged[mode] = {key: slowest([results[r][mode][key] for r in range(world)]) for key in ("blocked", "durable")}
        merged[mode]["path"] = results[0][mode]["path"]
    return merged


# --- the run ---------------------------------------------------------------------------------
def measure(megabytes: float, repeats: int, directory: str) -> Dict[str, Any]:
    shapes = tensor_shapes(megabytes)
    weights, momenta = full_state(shapes)
    state = checkpoint_dict(weights, momenta, 0)
    nbytes = sum(t.numel() * 4 for t in weights + momenta)
    raw, file_path, dd_path = (os.path.join(directory, n) for n in ("raw.pt", "volt.ckpt", "dd.bin"))

    def raw_save() -> None:
        torch.save(state, raw)
        fsync_path(raw)

    seconds: Dict[str, float] = {}
    dd_runs = []
    for _ in range(repeats):
        dd_runs.append(dd_seconds(dd_path, nbytes))
        drop(dd_path)
    seconds["dd"] = statistics.median(dd_runs)
    seconds["torch_save"] = median_seconds(raw_save, repeats, lambda: drop(raw))
    seconds["file"] = median_seconds(lambda: volt_checkpoint.atomic_save(state, file_path), repeats)
    seconds["file_no_checksum"] = median_seconds(lambda: atomic_save_no_checksum(state, file_path), repeats)
    seconds["torch_load"] = median_seconds(lambda: torch.load(raw, map_location="cpu", weights_only=False), repeats)
    volt_checkpoint.atomic_save(state, file_path)
    seconds["file_load"] = median_seconds(lambda: volt_checkpoint.load(file_path, map_location="cpu"), repeats)
    sizes = {"torch_save": disk_bytes(raw), "file": disk_bytes(file_path)}
    drop(file_path)
    drop(raw)

    rows: Dict[str, Dict[str, float]] = {}
    staging_single = median_seconds(lambda: staging_copy(state), repeats)
    for name, secs, size in (("torch.save + fsync", seconds["torch_save"], sizes["torch_save"]),
                             ("file (volt, SHA-256)", seconds["file"], sizes["file"]),
                             ("file (volt, no checksum)", seconds["file_no_checksum"], sizes["file"])):
        rows[name] = {"blocked_s": secs, "durable_s": secs, "staging_s": staging_single, "bytes": size}
    rows["torch.save + fsync"]["load_s"] = seconds["torch_load"]
    rows["file (volt, SHA-256)"]["load_s"] = seconds["file_load"]
    del weights, momenta, state

    for writers in SHARDED_WRITERS:
        where = tempfile.mkdtemp(prefix=f"sharded{writers}-", dir=directory)
        if writers == 1:
            w, m = full_state(shapes)
            result = sharded_saves(lambda step: checkpoint_dict(w, m, step), where, repeats)
            del w, m
        else:
            result = sharded_saves_on_ranks(writers, shapes, where, repeats)
        staging = statistics.median(result["staging"])
        for mode in ("sync", "async"):
            path = result[mode]["path"]
            rows[f"sharded {mode}, {writers} writer{'s' if writers > 1 else ''}"] = {
                "blocked_s": statistics.median(result[mode]["blocked"]),
                "durable_s": statistics.median(result[mode]["durable"]),
                "staging_s": staging,
                "bytes": disk_bytes(path),
                "load_s": median_seconds(lambda: load_sharded(path), repeats),
            }
        shutil.rmtree(where)

    for row in rows.values():
        row["blocked_over_staging"] = row["blocked_s"] / row["staging_s"]
        row["throughput_over_dd"] = (row["bytes"] / row["durable_s"]) / (nbytes / seconds["dd"])
        if "load_s" in row:
            row["load_over_torch_load"] = row["load_s"] / seconds["torch_load"]
    return {"state_bytes": nbytes, "state_mb": round(nbytes / 1e6, 1), "tensors": 2 * len(shapes), "dd_mb_per_s": round(nbytes / 1e6 / seconds["dd"], 1),
            "seconds": {k: round(v, 4) for k, v in seconds.items()}, "rows": rows}


def table(rows: Dict[str, Dict[str, float]]) -> str:
    lines = ["| save | blocked / staging copy | throughput / dd | load / torch.load | blocked s | durable s |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        load = f"{row['load_over_torch_load']:.2f}" if "load_over_torch_load" in row else "-"
        lines.append(f"| {name} | {row['blocked_over_staging']:.2f} | {row['throughput_over_dd']:.2f} | {load} | "
                     f"{row['blocked_s']:.3f} | {row['durable_s']:.3f} |")
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
