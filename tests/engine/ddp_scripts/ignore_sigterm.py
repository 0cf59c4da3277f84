"""A worker that ignores SIGTERM and never finishes: volt-run must kill it after the grace period."""
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda signum, frame: None)
print("ready", flush=True)
sys.stdout.flush()
time.sleep(600)
