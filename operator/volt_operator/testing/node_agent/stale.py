"""Finding and removing what dead agents left behind.

An agent killed with SIGKILL (or whose test run was) cannot tear down its
bridge, namespaces and host dirs. Every agent records itself in
/run/volt-node-agent/<agent id>.json (pid, process start time, workdir); a
starting agent removes the leftovers of every recorded agent whose process is
gone. The start time guards against a recycled pid.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .network import PodNetwork
from .runner import HostDirs

log = logging.getLogger(__name__)

RUN_DIR = Path("/run/volt-node-agent")


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def record_self(agent_id: str, workdir: Path, run_dir: Path = RUN_DIR) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    entry = run_dir / f"{agent_id}.json"
    entry.write_text(json.dumps({"pid": os.getpid(), "start": process_start_time(os.getpid()),
                                 "workdir": str(workdir)}))
    return entry


def sweep_dead_agents(run_dir: Path = RUN_DIR) -> list[str]:
    """Tear down the network and host dirs of every recorded agent that is gone."""
    swept = []
    for entry in sorted(run_dir.glob("*.json")):
        try:
            info = json.loads(entry.read_text())
        except (OSError, ValueError):
            entry.unlink(missing_ok=True)
            continue
        if process_start_time(int(info["pid"])) == info.get("start"):
            continue  # still running
        agent_id = entry.stem
        log.warning("removing leftovers of dead node agent %s (workdir %s)", agent_id, info["workdir"])
        PodNetwork(agent_id).teardown()
        HostDirs(Path(info["workdir"]) / "created-host-dirs.json").remove_all()
        entry.unlink(missing_ok=True)
        swept.append(agent_id)
    return swept
