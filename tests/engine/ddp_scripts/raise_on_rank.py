"""Train the synthetic example; rank FAIL_RANK raises in training_step at step FAIL_STEP.

FAIL_CLOSE_FIRST_S=S: before raising, the failing rank shuts down its sockets (its
peers see their gloo connections close and exit PEER_LOST at once) and waits S
seconds. Its peers' "peer lost" report then reaches the store before its own
failure: the race a slow interpreter shutdown causes, made deterministic.
FAIL_KEY_ERROR=1: the failing rank looks up a missing key instead (KeyError: 'label').
FAIL_ATTEMPT=A: fail only in the TrainingJob's attempt A (VOLT_ATTEMPT), so the next one trains.
"""
import os
import socket
import stat
import sys
import time

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


class Faulty(synthetic.RegressionModel):
    def training_step(self, batch, batch_idx):
        attempt = os.environ.get("VOLT_ATTEMPT")
        this_attempt = os.environ.get("FAIL_ATTEMPT", attempt) == attempt
        if this_attempt and self.trainer.global_rank == int(os.environ["FAIL_RANK"]) and (
            self.trainer.global_step == int(os.environ["FAIL_STEP"])
        ):
            close_first = float(os.environ.get("FAIL_CLOSE_FIRST_S", "0"))
            if close_first:
                shut_down_sockets()
                time.sleep(close_first)
            if os.environ.get("FAIL_KEY_ERROR") == "1":
                return {}["label"]  # the line the termination message must name
            raise RuntimeError(f"injected failure on rank {self.trainer.global_rank}")
        return super().training_step(batch, batch_idx)


if __name__ == "__main__":
    synthetic.RegressionModel = Faulty
    devices = os.environ.get("VOLT_TRAINER_SCRIPT_DEVICES")
    if devices:  # simulate a script whose Trainer(devices=...) disagrees with the launch
        real_trainer = synthetic.Trainer
        synthetic.Trainer = lambda **kw: real_trainer(**{**kw, "devices": int(devices)})
    synthetic.main(sys.argv[1:])
