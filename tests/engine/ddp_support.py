"""Helpers for tests that run real training processes (volt-run, gloo) on this machine."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

from helpers import free_port, wait_for  # noqa: F401 - the DDP tests import them from here

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "ddp_scripts"


def child_env(**extra: str) -> Dict[str, str]:
    """This environment minus anything a launcher or a pod would have set, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VOLT_", "PET_", "TORCHELASTIC_"))
        and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK",
                      "NUM_NODES", "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED")
    }
    paths = [str(REPO / "trainer_image"), str(REPO / "operator")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["OMP_NUM_THREADS"] = "1"  # 2 cores shared by every process of the test
    env.update(extra)
    return env


def volt_run(args: Sequence[str], env: Dict[str, str], log: Path) -> subprocess.Popen:
    """Start ``volt-run args...`` (this checkout's code) with output to ``log``."""
    out = open(log, "wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "volt.launch", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=log.parent,  # relative outputs (checkpoints/) stay in the test's dir
        )
    finally:
        out.close()


def start_nodes(num_nodes: int, nproc: int, command: List[str], tmp: Path, **extra: str) -> List[subprocess.Popen]:
    """One volt-run per "node", all on localhost, with the volt pod env contract."""
    port = str(free_port())
    procs = []
    for node in range(num_nodes):
        env = child_env(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(node), NUM_NODES=str(num_nodes),
            WORLD_SIZE=str(num_nodes * nproc), PET_NPROC_PER_NODE=str(nproc), **extra,
        )
        procs.append(volt_run(command, env, tmp / f"node{node}.log"))
    return procs


def wait_all(procs: Sequence[subprocess.Popen], timeout: float) -> List[int]:
    """Exit codes of ``procs``; kills every process group left after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    codes = []
    try:
        for proc in procs:
            codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
    finally:
        kill_all(procs)
    return codes


def kill_all(procs: Sequence[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def kill_leftovers(marker: str) -> None:
    """SIGKILL every process whose command line contains ``marker`` (a test's own tmp path).

    torch's elastic agent starts each worker in a session of its own, so killing
    volt-run's process group leaves the workers running.
    """
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass  # gone already


def logs(tmp: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(tmp.glob("*.log")))


def example(*args: str) -> List[str]:
    return ["python", "-m", "volt.examples.synthetic", *args]


def script(name: str, *args: str) -> List[str]:
    return ["python", str(SCRIPTS / name), *args]
