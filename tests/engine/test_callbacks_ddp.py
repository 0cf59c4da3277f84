"""Callbacks and loggers in a real 2-process DDP run (gloo, through volt-run).

The monitored metric differs per rank (logged without sync_dist): the ranks
must still agree on what to save (rank 0 decides) and on when to stop (any
rank), write files only from rank 0, and never deadlock.
"""
from __future__ import annotations

import json
import os
import textwrap

import pytest

from volt import checkpoint as ckpt_io

from ddp_support import logs, start_nodes, wait_all

pytestmark = pytest.mark.slow

_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from datetime import timedelta
    import torch
    import volt
    from volt.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, Timer
    from volt.loggers import CSVLogger

    sys.path.insert(0, sys.argv[2])
    from tiny_models import TinyModel, loader

    VALUES = [[1.0, 0.5, 0.7, 0.8, 0.9, 0.95], [1.0, 0.4, 0.3, 0.2, 0.1, 0.05]]

    class PerRankVal(TinyModel):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", torch.tensor(VALUES[self.global_rank][self.current_epoch]))

    out = sys.argv[1]
    topk = ModelCheckpoint(dirpath=os.path.join(out, "topk"), monitor="val_loss", save_top_k=2, save_last=True,
                           filename="{epoch}-{val_loss:.2f}")
    timed = ModelCheckpoint(dirpath=os.path.join(out, "timed"), train_time_interval=timedelta(microseconds=1),
                            save_top_k=-1, filename="{step}")
    es = EarlyStopping(monitor="val_loss", patience=2)
    timer = Timer(duration="00:01:00:00")
    trainer = volt.Trainer(
        max_epochs=6, accelerator="cpu", devices=2, strategy="ddp", logger=CSVLogger(out),
        callbacks=[topk, timed, es, timer, LearningRateMonitor()], log_every_n_steps=2,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=out,
    )
    trainer.fit(PerRankVal(), loader(n=32, batch_size=4), loader(n=16, batch_size=4))
    print("RESULT " + json.dumps({
        "rank": trainer.global_rank, "best": topk.best_model_path, "epoch": trainer.current_epoch,
        "stopped": es.stopped_epoch, "topk_dir": topk.dirpath, "timed": timed.best_model_path,
        "log_dir": trainer.log_dir, "steps": trainer.global_step,
    }), flush=True)
    """
)


@pytest.mark.timeout(240)
def test_checkpoint_early_stopping_timer_and_logger_under_ddp(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    out = tmp_path / "out"
    procs = start_nodes(1, 2, ["python", str(script), str(out), os.path.dirname(__file__)], tmp_path)
    assert wait_all(procs, 200) == [0], logs(tmp_path)
    text = (tmp_path / "node0.log").read_text()
    results = {}
    for line in text.splitlines():
        if "RESULT " in line:
            r = json.loads(line.split("RESULT ", 1)[1])
            results[r["rank"]] = r
    assert sorted(results) == [0, 1], logs(tmp_path)
    r0, r1 = results[0], results[1]
    # Rank 0 stops improving after epoch 1, rank 1 never does: any rank stopping stops both after epoch 3.
    assert r0["epoch"] == r1["epoch"] == 4 and r0["steps"] == r1["steps"] == 16
    assert r0["stopped"] == 3
    # Top-k follows rank 0's values (0.5, 0.7 kept; 1.0 evicted; 0.8 not in top 2), identically on both ranks.
    topk = r0["topk_dir"]
    assert sorted(os.listdir(topk)) == ["epoch=1-val_loss=0.50.ckpt", "epoch=2-val_loss=0.70.ckpt", "last.ckpt", "latest.json"]
    assert r0["best"] == r1["best"] == os.path.join(topk, "epoch=1-val_loss=0.50.ckpt")
    assert ckpt_io.read_manifest(topk).checkpoint == "last.ckpt"
    ckpt = ckpt_io.load(os.path.join(topk, "last.ckpt"))
    assert ckpt["global_step"] == 16 and ckpt["volt_resume"]["world_size"] == 2
    # Time-based saves happen only at the logging cadence (every 2nd batch), on both ranks alike.
    assert r0["timed"] == r1["timed"] == str(out / "timed" / "step=16.ckpt")
    names = [n for n in os.listdir(out / "timed") if n.endswith(".ckpt")]
    steps = sorted(int(n[len("step="):-len(".ckpt")]) for n in names)
    assert steps == list(range(2, 17, 2))
    # One logger directory, the same on every rank, written by rank 0 only.
    assert r0["log_dir"] == r1["log_dir"] == str(out / "lightning_logs" / "version_0")
    assert os.listdir(out / "lightning_logs") == ["version_0"]
    metrics = (out / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "lr-SGD" in metrics and "val_loss" in metrics


_RAISE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import volt
    from volt.callbacks import OnExceptionCheckpoint

    sys.path.insert(0, sys.argv[2])
    from tiny_models import TinyModel, loader

    class Raising(TinyModel):
        def training_step(self, batch, batch_idx):
            if self.global_rank == 1 and self.global_step == 2:
                raise RuntimeError("injected failure on rank 1")
            return super().training_step(batch, batch_idx)

    trainer = volt.Trainer(
        max_epochs=50, accelerator="cpu", devices=2, strategy="ddp", logger=False,
        callbacks=[OnExceptionCheckpoint(sys.argv[1])], enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=sys.argv[1],
    )
    trainer.fit(Raising(), loader(n=32, batch_size=4))
    """
)


@pytest.mark.timeout(180)
def test_on_exception_checkpoint_does_not_hang_ddp(tmp_path):
    script = tmp_path / "raise.py"
    script.write_text(_RAISE_SCRIPT)
    out = tmp_path / "exc"
    procs = start_nodes(1, 2, ["python", str(script), str(out), os.path.dirname(__file__)], tmp_path)
    codes = wait_all(procs, 120)  # a hang in on_exception would run into this timeout (and fail below)
    assert codes[0] != 0, logs(tmp_path)
    text = (tmp_path / "node0.log").read_text()
    assert "injected failure on rank 1" in text
    assert "OnExceptionCheckpoint: not saving" in text, logs(tmp_path)
    assert not (out / "on_exception.ckpt").exists()
