"""RichProgressBar and RichModelSummary: Lightning's arguments on volt's own bar and summary."""
from __future__ import annotations

import io

import pytest

from volt.callbacks.model_summary import ModelSummary
from volt.callbacks.progress import ProgressBar
from volt.callbacks.rich_ui import RichModelSummary, RichProgressBar, RichProgressBarTheme

from tiny_models import TinyModel, loader, quiet_trainer

pytestmark = pytest.mark.timeout(60)


def test_rich_progress_bar_arguments():
    bar = RichProgressBar()
    assert isinstance(bar, ProgressBar)
    assert bar.refresh_rate == 100 and bar.theme == RichProgressBarTheme() and bar.theme.metrics_format == ".3f"
    assert RichProgressBar(refresh_rate=0).is_disabled
    with pytest.raises(ValueError, match="refresh_rate"):
        RichProgressBar(refresh_rate=-1)
    with pytest.raises(TypeError, match="theme"):
        RichProgressBar(theme="dark")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="console_kwargs"):
        RichProgressBar(console_kwargs=["file"])  # type: ignore[arg-type]
    theme = RichProgressBarTheme(progress_bar="green")
    assert RichProgressBar(theme=theme, leave=True).theme is theme


def test_rich_progress_bar_draws_volts_bar(tmp_path):
    stream = io.StringIO()
    bar = RichProgressBar(leave=True, console_kwargs={"file": stream, "force_terminal": True})
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[bar], enable_progress_bar=True)
    trainer.fit(TinyModel(), loader(n=16), loader(n=8))
    assert trainer.progress_bar_callback is bar  # the trainer adds no second bar
    text = stream.getvalue()
    assert "Epoch 0" in text and "Epoch 1" in text and "2/2" in text
    assert text.count("\n") >= 2  # leave=True keeps each finished epoch's line
    quiet = io.StringIO()  # not a terminal: silent, as volt's bar is in pod logs
    quiet_trainer(tmp_path, max_steps=2, callbacks=[RichProgressBar(console_kwargs={"file": quiet})]).fit(
        TinyModel(), loader(n=16))
    assert quiet.getvalue() == ""


def test_rich_model_summary_prints_volts_table(tmp_path, capsys):
    summary = RichModelSummary(max_depth=1, header_style="bold magenta")
    assert isinstance(summary, ModelSummary) and summary._summarize_kwargs == {"header_style": "bold magenta"}
    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[summary], enable_model_summary=True)
    trainer.fit(TinyModel(), loader(n=8))
    out = capsys.readouterr().out
    assert out.count("Total params") == 1  # replaces the default summary, not added to it
    assert "layer" in out and "Linear" in out and summary.summary.total_parameters == 5
    with pytest.raises(ValueError, match="max_depth"):
        RichModelSummary(max_depth=-2)
