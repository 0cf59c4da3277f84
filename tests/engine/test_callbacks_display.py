"""ProgressBar (on a real pseudo-terminal) and ModelSummary."""
from __future__ import annotations

import io
import os
import pty

import pytest
import torch
from torch import nn

from volt.callbacks import ModelSummary, ProgressBar, TQDMProgressBar
from volt.callbacks.model_summary import human_readable_count, summarize

from tiny_models import TinyModel, loader, quiet_trainer


class CountingBar(ProgressBar):
    """Counts metric reads: each one may be a device sync on a GPU."""

    reads = 0

    def get_metrics(self, trainer, pl_module):
        self.reads += 1
        return super().get_metrics(trainer, pl_module)


class BarModel(TinyModel):
    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("loss", loss, prog_bar=True)
        return loss


@pytest.fixture
def tty():
    master, slave = pty.openpty()
    stream = os.fdopen(slave, "w")
    yield master, stream
    stream.close()
    os.close(master)


def _read_all(fd):
    chunks = []
    os.set_blocking(fd, False)
    while True:
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.timeout(60)
def test_progress_bar_draws_on_a_tty(tmp_path, tty):
    master, stream = tty
    bar = CountingBar(stream=stream)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[bar], num_sanity_val_steps=0)
    trainer.fit(BarModel(), loader(n=64, batch_size=8), loader(n=16, batch_size=8))
    out = _read_all(master)
    assert "Epoch 0:" in out and "Epoch 1:" in out
    assert "8/8" in out and "loss=" in out
    assert "Validation" in out
    assert bar.is_enabled


@pytest.mark.timeout(60)
def test_progress_bar_reads_metrics_only_at_refresh_points(tmp_path, tty):
    master, stream = tty
    # At most one draw per 1000 s: per epoch only the first batch, the last batch and the epoch end draw.
    bar = CountingBar(stream=stream, refresh_rate=1, max_refresh_per_s=0.001)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[bar], num_sanity_val_steps=0)
    trainer.fit(BarModel(), loader(n=128, batch_size=8))  # 16 steps per epoch
    _read_all(master)
    assert bar.reads == 2 * 3
    # refresh_rate=4 with no time cap: every 4th batch plus the epoch end.
    bar4 = CountingBar(stream=stream, refresh_rate=4, max_refresh_per_s=1e9)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[bar4], num_sanity_val_steps=0)
    trainer.fit(BarModel(), loader(n=128, batch_size=8))
    _read_all(master)
    assert bar4.reads == 16 // 4 + 1


def test_progress_bar_silent_without_a_tty(tmp_path):
    stream = io.StringIO()
    bar = CountingBar(stream=stream)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[bar])
    trainer.fit(BarModel(), loader(n=32, batch_size=8), loader(n=16, batch_size=8))
    assert stream.getvalue() == "" and bar.reads == 0 and not bar.is_enabled


def test_progress_bar_args_and_alias():
    assert issubclass(TQDMProgressBar, ProgressBar)
    bar = TQDMProgressBar(refresh_rate=5, process_position=1)
    assert (bar.refresh_rate, bar.process_position) == (5, 1)
    bar.disable()
    assert bar.is_disabled
    with pytest.raises(ValueError, match="refresh_rate"):
        ProgressBar(refresh_rate=-1)


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(10, 100), nn.ReLU(), nn.Linear(100, 10))
        self.head = nn.Linear(10, 2)
        self.frozen = nn.Linear(10, 10)
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        self.frozen.eval()


def test_summary_top_and_full():
    m = Nested()
    top = summarize(m, max_depth=1)
    assert [(l.name, l.type) for l in top.layers] == [("encoder", "Sequential"), ("head", "Linear"), ("frozen", "Linear")]
    assert top.layers[0].params == 10 * 100 + 100 + 100 * 10 + 10
    assert top.total_parameters == 2110 + 22 + 110
    assert top.trainable_parameters == 2110 + 22 and top.non_trainable_parameters == 110
    assert top.layers[2].mode == "eval"
    full = summarize(m, max_depth=-1)
    assert [l.name for l in full.layers] == ["encoder", "encoder.0", "encoder.1", "encoder.2", "head", "frozen"]
    text = str(top)
    assert "encoder" in text and "Sequential" in text and "2.1 K" in text
    assert "Trainable params" in text and "Total estimated model params size (MB)" in text
    assert summarize(m, max_depth=0).layers == []
    with pytest.raises(ValueError, match="max_depth"):
        ModelSummary(max_depth=-2)


def test_summary_counts_lazy_modules_as_zero():
    s = summarize(nn.Sequential(nn.LazyLinear(3)), max_depth=1)
    assert s.total_parameters == 0


def test_human_readable_count():
    assert human_readable_count(123) == "123"
    assert human_readable_count(1234) == "1.2 K"
    assert human_readable_count(2_000_000) == "2.0 M"
    assert human_readable_count(3_500_000_000) == "3.5 B"


def test_model_summary_callback_prints_on_fit(tmp_path, capsys):
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[ModelSummary(max_depth=1)])
    trainer.fit(TinyModel(), loader(n=16, batch_size=8))
    out = capsys.readouterr().out
    assert "layer" in out and "Linear" in out and "5         Total params" in out


def test_weights_summary_full_is_max_depth_minus_one(tmp_path, capsys):
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_model_summary=True, weights_summary="full")
    trainer.fit(TinyModel(), loader(n=16, batch_size=8))
    assert "layer" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_progress_bar_test_and_predict(tmp_path, tty):
    master, stream = tty
    bar = ProgressBar(stream=stream)
    trainer = quiet_trainer(tmp_path, callbacks=[bar])
    trainer.test(TinyModel(), loader(n=32, batch_size=8), verbose=False)
    trainer.predict(TinyModel(), loader(n=16, batch_size=8))
    out = _read_all(master)
    assert "Testing: 100%" in out and "4/4" in out
    assert "Predicting: 100%" in out and "2/2" in out


def test_summary_in_out_sizes_from_example_input_array():
    m = Nested()
    m.example_input_array = torch.zeros(3, 10)

    def forward(x):
        return m.head(m.encoder(x))

    m.forward = forward
    m.train()
    m.frozen.eval()
    s = summarize(m, max_depth=1)
    encoder, head, frozen = s.layers
    assert (encoder.in_sizes, encoder.out_sizes) == ([3, 10], [3, 10])
    assert (head.in_sizes, head.out_sizes) == ([3, 10], [3, 2])
    assert frozen.in_sizes == "?"  # not called by forward
    assert "In sizes" in str(s) and "[3, 2]" in str(s)
    assert m.training and m.encoder.training and not m.frozen.training  # modes restored
