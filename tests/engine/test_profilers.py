"""Trainer(profiler=...): Lightning's simple, advanced and pytorch profilers on real training runs."""
from __future__ import annotations

import json
import logging
import os
import re
import textwrap
from typing import Any, Dict

import pytest
import torch

import volt
from volt.callbacks import Callback
from volt.profilers import AdvancedProfiler, PassThroughProfiler, Profiler, PyTorchProfiler, SimpleProfiler

from tiny_models import TinyModel, loader, quiet_trainer
from ddp_support import logs, start_nodes, wait_all

pytestmark = pytest.mark.timeout(120)

STEPS = 8  # loader(64, batch_size=8)


class Counting(Callback):
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        pass


def _simple_rows(report: str) -> Dict[str, int]:
    """Action -> Num calls, from a SimpleProfiler report."""
    rows = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[2].isdigit():
            rows[cells[0]] = int(cells[2])
    return rows


def test_simple_profiler_reports_every_action_once_per_step(tmp_path: Any) -> None:
    profiler = SimpleProfiler(dirpath=str(tmp_path / "prof"), filename="perf")
    trainer = quiet_trainer(tmp_path, max_epochs=2, profiler=profiler, callbacks=[Counting()],
                            num_sanity_val_steps=0)
    trainer.fit(TinyModel(), loader(64), loader(16))
    assert trainer.profiler is profiler
    report = (tmp_path / "prof" / "fit-perf.txt").read_text()
    assert report.startswith("FIT Profiler Report")
    rows = _simple_rows(report)
    steps = 2 * STEPS
    for name in ("run_training_batch", "get_train_batch", "[LightningModule]TinyModel.training_step",
                 "[LightningModule]TinyModel.optimizer_step", "[Strategy]SingleDeviceStrategy.optimizer_step",
                 "[Strategy]SingleDeviceStrategy.backward", "[Callback]Counting.on_train_batch_end"):
        assert rows.get(name) == steps, (name, rows)
    assert rows["run_training_epoch"] == 2
    assert rows["[LightningModule]TinyModel.validation_step"] == 2 * 2  # 16 samples / 8, per epoch
    assert rows["get_validate_batch"] == 2 * 2
    assert rows["[LightningModule]TinyModel.configure_optimizers"] == 1
    # the profiled dispatch is gone after the run: a later run without profiling pays nothing
    assert "call_hook" not in trainer.__dict__


def test_simple_profiler_reports_test_and_predict_and_logs_without_filename(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    trainer = quiet_trainer(tmp_path, profiler="simple")
    assert isinstance(trainer.profiler, SimpleProfiler)
    with caplog.at_level(logging.INFO, logger="volt.profilers"):
        trainer.test(TinyModel(), loader(32), verbose=False)
    report = "\n".join(r.getMessage() for r in caplog.records if r.name == "volt.profilers")
    assert "TEST Profiler Report" in report
    assert _simple_rows(report)["[LightningModule]TinyModel.test_step"] == 4


def test_advanced_profiler_writes_cprofile_stats_per_action(tmp_path: Any) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1, profiler=AdvancedProfiler(dirpath=str(tmp_path), filename="adv"))
    trainer.fit(TinyModel(), loader(64))
    report = (tmp_path / "fit-adv.txt").read_text()
    assert "Profile stats for: [LightningModule]TinyModel.training_step" in report
    assert "Profile stats for: run_training_epoch" in report
    # cProfile's table: function calls, and the module's own forward among the functions
    assert re.search(r"\d+ function calls", report)
    assert "ncalls  tottime  percall  cumtime  percall filename:lineno(function)" in report
    section = report.split("Profile stats for: [LightningModule]TinyModel.training_step")[1].split("Profile stats")[0]
    assert "(training_step)" in section and "(forward)" in section


def test_pytorch_profiler_writes_trace_and_operator_table(tmp_path: Any) -> None:
    profiler = PyTorchProfiler(dirpath=str(tmp_path), filename="torch", row_limit=30,
                               table_kwargs={"max_name_column_width": 80})
    trainer = quiet_trainer(tmp_path, max_epochs=1, profiler=profiler, limit_train_batches=4)
    trainer.fit(TinyModel(), loader(64))
    report = (tmp_path / "fit-torch.txt").read_text()
    assert "FIT Profiler Report" in report and "aten::" in report and "Self CPU" in report
    assert "[volt][profile][LightningModule]TinyModel.training_step" in report
    traces = list(tmp_path.glob("fit-torch*.pt.trace.json"))
    assert traces, os.listdir(tmp_path)
    events = json.loads(traces[0].read_text())["traceEvents"]
    assert any(e.get("name", "").endswith("TinyModel.training_step") for e in events)


def test_pytorch_profiler_schedule_bounds_the_recording(tmp_path: Any) -> None:
    schedule = torch.profiler.schedule(wait=1, warmup=1, active=2, repeat=1)
    profiler = PyTorchProfiler(dirpath=str(tmp_path), filename="sched", schedule=schedule,
                               table_kwargs={"max_name_column_width": 80})
    trainer = quiet_trainer(tmp_path, max_epochs=1, profiler=profiler)
    trainer.fit(TinyModel(), loader(64))
    report = (tmp_path / "fit-sched.txt").read_text()
    step = "[volt][profile][LightningModule]TinyModel.training_step"
    row = next(line for line in report.splitlines() if step in line)
    assert re.search(r"\s2\s*$", row), row  # Calls column: the 2 active steps only


def test_no_profiler_is_a_pass_through_and_user_actions_work(tmp_path: Any) -> None:
    seen = []

    class UsesProfiler(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            with self.trainer.profiler.profile("my_block") as name:
                seen.append(name)
            return super().training_step(batch, batch_idx)

    trainer = quiet_trainer(tmp_path, max_epochs=1)
    assert isinstance(trainer.profiler, PassThroughProfiler) and not trainer.run_state.profiling
    trainer.fit(UsesProfiler(), loader(16))
    assert seen == ["my_block", "my_block"]
    assert not {"call_hook", "call_step", "_run_backward"} & set(trainer.__dict__)

    profiler = SimpleProfiler(dirpath=str(tmp_path), filename="user")
    trainer = quiet_trainer(tmp_path, max_epochs=1, profiler=profiler)
    trainer.fit(UsesProfiler(), loader(16))
    assert _simple_rows((tmp_path / "fit-user.txt").read_text())["my_block"] == 2


def test_custom_profiler_subclass(tmp_path: Any) -> None:
    class Recording(Profiler):
        def __init__(self) -> None:
            super().__init__()
            self.events = []

        def start(self, action_name: str) -> None:
            self.events.append(("start", action_name))

        def stop(self, action_name: str) -> None:
            self.events.append(("stop", action_name))

        def summary(self) -> str:
            return f"{len(self.events)} events"

    profiler = Recording()
    quiet_trainer(tmp_path, max_epochs=1, profiler=profiler).fit(TinyModel(), loader(16))
    starts = [a for kind, a in profiler.events if kind == "start"]
    assert starts.count("run_training_batch") == 2
    # actions nest: the batch's step runs inside the batch
    i = profiler.events.index(("start", "run_training_batch"))
    j = profiler.events.index(("stop", "run_training_batch"))
    assert ("start", "[LightningModule]TinyModel.training_step") in profiler.events[i:j]


@pytest.mark.parametrize("value, exc", [("fancy", ValueError), (42, TypeError)])
def test_bad_profiler_argument_names_it(value: Any, exc: type) -> None:
    with pytest.raises(exc, match="profiler"):
        volt.Trainer(profiler=value, logger=False)


def test_simple_profiler_misuse_raises() -> None:
    profiler = SimpleProfiler()
    with pytest.raises(ValueError, match="never started"):
        profiler.stop("x")
    profiler.start("x")
    with pytest.raises(ValueError, match="already running"):
        profiler.start("x")


def test_lightning_1x_module_name() -> None:
    from volt.profiler import SimpleProfiler as Simple1x

    assert Simple1x is SimpleProfiler


_DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    import volt
    from volt.profilers import SimpleProfiler
    from tiny_models import TinyModel, loader

    trainer = volt.Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                           enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                           profiler=SimpleProfiler(dirpath=sys.argv[1], filename="perf"))
    trainer.fit(TinyModel(), loader(64))
    """
)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_each_ddp_rank_writes_its_own_report(tmp_path: Any) -> None:
    script = tmp_path / "train.py"
    script.write_text(_DDP_SCRIPT)
    out = tmp_path / "out"
    procs = start_nodes(1, 2, ["python", str(script), str(out), os.path.dirname(__file__)], tmp_path)
    assert wait_all(procs, 150) == [0], logs(tmp_path)
    for rank in (0, 1):
        report = (out / f"fit-perf-rank{rank}.txt").read_text()
        assert f"FIT Profiler Report (rank {rank})" in report
        assert _simple_rows(report)["run_training_batch"] == 4  # 64 samples / 8 per batch / 2 ranks
