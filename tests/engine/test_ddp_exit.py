"""A DDP rank that finished must exit 0, also when the machine is busy.

gloo's worker threads drop their last reference to a finished collective after
the caller saw it complete; that frees a Python object and needs the GIL. A
rank that reached interpreter shutdown first used to abort there (exit 134,
"terminate called without an active exception"), more often the busier the
machine. volt's exit handler waits for those threads before the interpreter
finalizes (``volt.strategies.ddp._shutdown_distributed``).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddp_support import kill_all, logs, script, start_nodes, wait_all

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROUNDS = 3
JOBS_AT_ONCE = 4  # 8 ranks on the test machine's cores: the load is the point


def test_short_ddp_runs_under_load_all_exit_zero(tmp_path: Path) -> None:
    for round_ in range(ROUNDS):
        dirs = [tmp_path / f"round{round_}-job{job}" for job in range(JOBS_AT_ONCE)]
        procs = []
        try:
            for run_dir in dirs:
                run_dir.mkdir()
                procs += start_nodes(1, 2, script("short_fit.py", str(run_dir)), run_dir)
            codes = wait_all(procs, 500)
        finally:
            kill_all(procs)
        for run_dir, code in zip(dirs, codes):
            text = logs(run_dir)
            assert code == 0 and "terminate called" not in text, f"{run_dir.name} exited {code}:\n{text}"
            for rank in (0, 1):
                # volt's exit handler ran and left every collective thread asleep, none about to free an object
                states = json.loads((run_dir / f"threads-rank{rank}.json").read_text())
                assert states and set(states) == {"S"}, (run_dir.name, rank, states)
