"""Train the synthetic example; rank FAIL_RANK raises in training_step at step FAIL_STEP."""
import os
import sys

from volt.examples import synthetic


class Faulty(synthetic.RegressionModel):
    def training_step(self, batch, batch_idx):
        if self.trainer.global_rank == int(os.environ["FAIL_RANK"]) and self.trainer.global_step == int(
            os.environ["FAIL_STEP"]
        ):
            raise RuntimeError(f"injected failure on rank {self.trainer.global_rank}")
        return super().training_step(batch, batch_idx)


if __name__ == "__main__":
    synthetic.RegressionModel = Faulty
    devices = os.environ.get("VOLT_TRAINER_SCRIPT_DEVICES")
    if devices:  # simulate a script whose Trainer(devices=...) disagrees with the launch
        real_trainer = synthetic.Trainer
        synthetic.Trainer = lambda **kw: real_trainer(**{**kw, "devices": int(devices)})
    synthetic.main(sys.argv[1:])
