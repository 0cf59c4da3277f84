"""Train the synthetic example; rank FAIL_RANK raises in training_step at step FAIL_STEP.

FAIL_CLOSE_FIRST=1: before raising, the failing rank shuts down its sockets (its
peers see their gloo connections close and exit PEER_LOST at once) and waits until
FAIL_AFTER_LOG (a file) contains FAIL_AFTER_TEXT, e.g. its own node's volt-run
logging that it read the peers' "peer lost" report. That report then reaches the
store before its own failure: the race a slow interpreter shutdown causes, made
deterministic by waiting on the event itself.
FAIL_KEY_ERROR=1: the failing rank looks up a missing key instead (KeyError: 'label').
FAIL_VOLUME_FULL=1: the failing rank raises the engine's "checkpoint volume full" error
(exit 79) instead, and then exits slowly: in on_exception it shuts down its sockets
and waits for its agent's SIGTERM, so the rank beside it exits PEER_LOST first and
the agent stops this one (the race a slow teardown after ENOSPC causes).
FAIL_ATTEMPT=A: fail only in the TrainingJob's attempt A (VOLT_ATTEMPT), so the next one trains.
"""
import errno
import os
import signal
import socket
import stat
import sys
import time

from volt.checkpoint import CheckpointVolumeError
from volt.examples import synthetic


def shut_down_sockets() -> None:
    """What a dying process does to its peers, while this one stays alive."""
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = int(name)
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                with socket.socket(fileno=os.dup(fd)) as sock:
                    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):  # gloo aborts without its listener
                        sock.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError):
            pass


def wait_for_text(path: str, text: str, limit_s: float = 600.0) -> None:
    """Block until ``path`` contains ``text`` (the test's timeout bounds the wait)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                if text in handle.read():
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} never appeared in {path}")


class Faulty(synthetic.RegressionModel):
    def training_step(self, batch, batch_idx):
        attempt = os.environ.get("VOLT_ATTEMPT")
        this_attempt = os.environ.get("FAIL_ATTEMPT", attempt) == attempt
        if this_attempt and self.trainer.global_rank == int(os.environ["FAIL_RANK"]) and (
            self.trainer.global_step == int(os.environ["FAIL_STEP"])
        ):
            if os.environ.get("FAIL_CLOSE_FIRST") == "1":
                shut_down_sockets()
                wait_for_text(os.environ["FAIL_AFTER_LOG"], os.environ["FAIL_AFTER_TEXT"])
            if os.environ.get("FAIL_KEY_ERROR") == "1":
                return {}["label"]  # the line the termination message must name
            if os.environ.get("FAIL_VOLUME_FULL") == "1":
                raise CheckpointVolumeError(errno.ENOSPC, "checkpoints/injected.ckpt", "injected")
            raise RuntimeError(f"injected failure on rank {self.trainer.global_rank}")
        return super().training_step(batch, batch_idx)

    def on_exception(self, exception):
        if os.environ.get("FAIL_VOLUME_FULL") == "1" and isinstance(exception, CheckpointVolumeError):
            shut_down_sockets()  # the peers exit PEER_LOST now, while this rank is still "exiting"
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            sys.stderr.write("slow exit: waiting for the agent's SIGTERM\n")
            sys.stderr.flush()
            while True:
                signal.pause()


if __name__ == "__main__":
    synthetic.RegressionModel = Faulty
    devices = os.environ.get("VOLT_TRAINER_SCRIPT_DEVICES")
    if devices:  # simulate a script whose Trainer(devices=...) disagrees with the launch
        real_trainer = synthetic.Trainer
        synthetic.Trainer = lambda **kw: real_trainer(**{**kw, "devices": int(devices)})
    synthetic.main(sys.argv[1:])
