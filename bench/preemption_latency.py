"""SIGTERM to exit 75: how long a DDP gang takes to agree on a signal, checkpoint and exit.

    python bench/preemption_latency.py [--nodes 2] [--nproc 2] [--step-delays 0,0.1,0.3]
                                       [--repeats 3] [--signal one|all] [--out FILE]

Each run starts ``--nodes`` volt-run processes on this machine (``--nproc``
ranks each, gloo over localhost, the pod environment the operator sets)
training ``volt.examples.synthetic`` with ``--step-delay`` seconds of sleep
per step, waits for its first checkpoint and a seeded random 1-3 s more, then
sends SIGTERM: to node 1's volt-run only (``one``: a deleted pod, whose peers
learn of it through the ranks' agreement) or to every node (``all``: a
preempted or deleted gang). It records, from the signal: the preemption
checkpoint's ``latest.json`` naming a ``preempted-*`` file (agreement and
save) and the last volt-run's exit (the whole gang down). Every node must exit
75 (checkpointed, restart me). The ranks agree about once a second of
training by default (docs/distributed.md, "SIGTERM"), so the agreement costs
1-2 s whatever the step time; the save and the shutdown add the rest.

Writes bench/results/preemption_latency.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "engine")]

from ddp_support import child_env, free_port, wait_for  # noqa: E402

GRACE_PERIOD_S = 25  # volt-run's default: the bound a run must stay under


def preempted_checkpoint_named(ckpt_dir: Path) -> bool:
    try:
        return json.loads((ckpt_dir / "latest.json").read_text())["checkpoint"].startswith("preempted-")
    except (OSError, ValueError, KeyError):
        return False


def one_run(nodes: int, nproc: int, step_delay: float, to_all: bool, rng: random.Random,
            work: Path) -> Dict[str, Any]:
    ckpt_dir = work / "ckpt"
    port = free_port()
    command = [sys.executable, "-m", "volt.launch", "python", "-m", "volt.examples.synthetic",
               "--max-epochs", "1000000", "--samples", "4096", "--step-delay", str(step_delay),
               "--every-n-steps", "3"]
    procs = []
    for node in range(nodes):
        with open(work / f"node{node}.log", "wb") as log:
            env = child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(node),
                            NUM_NODES=str(nodes), WORLD_SIZE=str(nodes * nproc),
                            PET_NPROC_PER_NODE=str(nproc), VOLT_CHECKPOINT_DIR=str(ckpt_dir),
                            VOLT_GRACE_PERIOD_S=str(GRACE_PERIOD_S))  # what the operator sets
            procs.append(subprocess.Popen(command, env=env,
                                          stdout=log, stderr=subprocess.STDOUT, cwd=work,
                                          start_new_session=True))
    try:
        wait_for(lambda: (ckpt_dir / "latest.json").exists(), 180, "the first checkpoint", interval=0.2)
        time.sleep(rng.uniform(1.0, 3.0))  # the signal lands anywhere in the ranks' agreement interval
        signalled = procs if to_all else procs[1:2]
        sent = time.monotonic()
        for proc in signalled:
            os.kill(proc.pid, signal.SIGTERM)
        # Polled finely: this is the benchmark's clock.
        wait_for(lambda: preempted_checkpoint_named(ckpt_dir), 2 * GRACE_PERIOD_S,
                 "the preemption checkpoint", interval=0.01)
        saved = time.monotonic() - sent
        codes = [proc.wait(timeout=2 * GRACE_PERIOD_S) for proc in procs]
        exited = time.monotonic() - sent
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if codes != [75] * nodes:
        tails = "\n".join((work / f"node{n}.log").read_text(errors="replace")[-2000:] for n in range(nodes))
        raise RuntimeError(f"exit codes {codes}, expected 75 from every node:\n{tails}")
    return {"signal_to_checkpoint_s": round(saved, 3), "signal_to_exit_s": round(exited, 3)}


def summary(values: List[float]) -> Dict[str, float]:
    return {"p50": round(statistics.median(values), 3), "max": round(max(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--step-delays", default="0,0.1,0.3",
                        help="seconds of sleep per step, comma-separated (0: the example's own step)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--signal", choices=("one", "all"), default="one",
                        help="SIGTERM to node 1 only (a deleted pod) or to every node")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "preemption_latency.json"))
    args = parser.parse_args()

    rng = random.Random(args.seed)
    rows = []
    for delay in [float(d) for d in args.step_delays.split(",")]:
        runs = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="volt-preempt-") as tmp:
                runs.append(one_run(args.nodes, args.nproc, delay, args.signal == "all", rng, Path(tmp)))
        rows.append({"step_delay_s": delay, "runs": runs,
                     "signal_to_checkpoint_s": summary([r["signal_to_checkpoint_s"] for r in runs]),
                     "signal_to_exit_s": summary([r["signal_to_exit_s"] for r in runs])})
        print(json.dumps(rows[-1]), flush=True)
    result = {"nodes": args.nodes, "nproc_per_node": args.nproc, "signal": args.signal,
              "grace_period_s": GRACE_PERIOD_S, "machine": platform.machine(),
              "cpus": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 1),
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
