"""A worker that ignores SIGTERM and never finishes: volt-run must kill it after the grace period.

It says it is ready with a file in READY_DIR (rank-<RANK>), not only on stdout: volt-run's
copy of a worker's output can lag behind, and the test must not wait on that copy.
"""
import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda signum, frame: None)
print("ready", flush=True)
sys.stdout.flush()
ready_dir = os.environ.get("READY_DIR")
if ready_dir:
    with open(os.path.join(ready_dir, f"rank-{os.environ['RANK']}.tmp"), "w") as handle:
        handle.write("ready\n")
    os.rename(os.path.join(ready_dir, f"rank-{os.environ['RANK']}.tmp"), os.path.join(ready_dir, f"rank-{os.environ['RANK']}"))
time.sleep(600)
