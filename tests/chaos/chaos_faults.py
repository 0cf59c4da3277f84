"""Faults the chaos suite injects into a running TrainingJob, and what it records.

Each function acts on the real thing: the node agent's training processes
(found through /proc by the job's uid and their RANK), the pods through the
API server, the control plane's processes, the job's volume on the host.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from volt_operator.testing.cluster import Component, LocalCluster, _spawn, wait_for

DEFAULT_SEED = 2026


def chaos_seed() -> int:
    """The suite's seed: $VOLT_CHAOS_SEED, else a fixed one (so a failure reruns as it was)."""
    return int(os.environ.get("VOLT_CHAOS_SEED", DEFAULT_SEED))


def fault_step(seed: int, fault: str, low: int, high: int) -> int:
    """The training step at which ``fault`` is injected: drawn from [low, high] by (seed, fault)."""
    return random.Random(f"{seed}:{fault}").randint(low, high)


def fault_rank(seed: int, fault: str, world_size: int) -> int:
    return random.Random(f"{seed}:{fault}:rank").randrange(world_size)


# --- the training processes ------------------------------------------------------

def _environ(pid: int) -> Dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or a kernel thread
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def worker_pids(job_uid: str, rank: Optional[int] = None) -> Dict[int, int]:
    """{global rank: pid} of the job's training processes (the elastic agent's workers) on this host."""
    found: Dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        env = _environ(int(entry.name))
        if env.get("VOLT_JOB_UID") != job_uid or "LOCAL_RANK" not in env or "RANK" not in env:
            continue
        if rank is None or int(env["RANK"]) == rank:
            found[int(env["RANK"])] = int(entry.name)
    return found


def signal_rank(job_uid: str, rank: int, sig: int) -> int:
    """Send ``sig`` to global rank ``rank``'s process; its pid."""
    pids = worker_pids(job_uid, rank)
    if rank not in pids:
        raise AssertionError(f"no process of rank {rank} for job uid {job_uid} (found {worker_pids(job_uid)})")
    os.kill(pids[rank], sig)
    return pids[rank]


# --- the control plane ---------------------------------------------------------

def restart_api_server(kube: LocalCluster, grace: float = 10.0) -> None:
    """Stop kube-apiserver (SIGTERM, as a rolling upgrade does) and start it again with the same flags and port.

    etcd keeps the state; every client (operator, node agent, controllers) loses its
    connections and watches and must re-establish them.
    """
    old = next(c for c in kube.components if c.name == "kube-apiserver")
    argv = Path(f"/proc/{old.pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
    old.stop(grace)
    new: Component = _spawn("kube-apiserver", argv, kube.log_dir, env=None, tie_to_parent=kube.tie_to_parent)
    kube.components[kube.components.index(old)] = new
    kube._save_state()  # `down` must find the new process
    wait_for(lambda: kube.status()["ready"], 120, "kube-apiserver /readyz after its restart")


# --- the volume ------------------------------------------------------------------

@contextlib.contextmanager
def small_volume(directory: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted over ``directory`` (a PV's host path) while the block runs.

    Mounted before the job's pods start, so their bind mounts of the volume see it.
    """
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(directory)], check=True)
    try:
        yield directory
    finally:
        # Lazy: a pod that still holds a bind mount of it must not keep the test from ending.
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path) -> Path:
    """Write zeros into ``directory`` until its filesystem is full; the filler's path."""
    filler = directory / "chaos-filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as out:
        for size in (len(chunk), 4096, 1):
            try:
                while True:
                    out.write(chunk[:size])
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
    return filler


def truncate_latest(checkpoint_dir: Path) -> Path:
    """Cut the checkpoint the manifest (latest.json) names to half its size; its path."""
    manifest = json.loads((checkpoint_dir / "latest.json").read_text())
    path = checkpoint_dir / manifest["checkpoint"]
    size = path.stat().st_size
    os.truncate(path, size // 2)
    return path


# --- what is recorded -------------------------------------------------------------

@dataclass
class Outcome:
    """One fault's run, as the suite's table and JSON report it."""

    fault: str
    seed: int
    target_step: int
    injected_at_step: Optional[int] = None
    target: str = ""                       # the rank, pod or process hit
    survived: Optional[bool] = None        # ended Succeeded (or in the documented state)
    weights_equal: Optional[bool] = None   # final state_dict bit for bit equal to the uninterrupted run's
    recover_s: Optional[float] = None      # fault -> the gang Running again (or training again)
    final_phase: str = ""
    restarts: Optional[int] = None
    restarts_counted: Optional[int] = None  # of them, those that spent maxRestarts
    reason: str = ""                       # lastFailure.reason, or why the fault was not injected
    wall_s: Optional[float] = None
    notes: List[str] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


def table(outcomes: List[Outcome]) -> str:
    """A Markdown table of outcomes (the one docs/reliability.md keeps)."""
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:.1f}"
        return str(value)

    lines = ["| fault | seed | step | hit | survived | weights equal | recover (s) | restarts (counted) | reason |",
             "|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        restarts = None if o.restarts is None else f"{o.restarts} ({cell(o.restarts_counted)})"
        lines.append("| " + " | ".join(cell(v) for v in (
            o.fault, o.seed, o.injected_at_step, o.target, o.survived, o.weights_equal, o.recover_s,
            restarts, o.reason)) + " |")
    return "\n".join(lines)


class Stopwatch:
    """Seconds since the fault, on the monotonic clock."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return round(time.monotonic() - self.start, 2)

