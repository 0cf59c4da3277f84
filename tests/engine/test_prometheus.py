"""PrometheusCallback on a real training run: scraped over HTTP, parsed with prometheus_client's parser."""
from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import free_port
from volt import LightningModule, Trainer
from volt.callbacks import Callback, ModelCheckpoint
from volt.callbacks.prometheus import PrometheusCallback, _rfc3339

pytestmark = pytest.mark.timeout(120)

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]

BATCH = 8
BATCHES_PER_EPOCH = 6
COLLATE_DELAY = 0.01  # seconds of "data loading" per batch
STEP_DELAY = 0.005  # seconds of "compute" per batch


def slow_collate(items: List[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    time.sleep(COLLATE_DELAY)
    xs, ys = zip(*items)
    return torch.stack(xs), torch.stack(ys)


def loader(seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH * BATCHES_PER_EPOCH, 4, generator=generator)
    y = x.sum(dim=1, keepdim=True)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, collate_fn=slow_collate)


class Regression(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        time.sleep(STEP_DELAY)
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(
            [{"params": self.body.parameters(), "lr": 0.05}, {"params": self.head.parameters(), "lr": 0.01}]
        )
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)  # per epoch
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def get(url: str) -> Tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def pick(samples: Samples, name: str, **labels: str) -> List[Tuple[Dict[str, str], float]]:
    """Samples of `name` whose labels include `labels`."""
    return [
        (dict(key), value)
        for (sample_name, key), value in samples.items()
        if sample_name == name and labels.items() <= dict(key).items()
    ]


def one(samples: Samples, name: str, **labels: str) -> float:
    found = pick(samples, name, **labels)
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0][1]


class Snapshot:
    """What the trainer looked like at a scrape, taken in the training thread next to the scrape."""

    def __init__(self, trainer: Trainer, metrics_text: str, progress: Dict[str, Any]) -> None:
        self.global_step = trainer.global_step
        self.epoch = trainer.current_epoch
        self.callback_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.lrs = [group["lr"] for group in trainer.optimizers[0].param_groups]
        self.metrics_text = metrics_text
        self.samples = parse(metrics_text)
        self.progress = progress


class ScrapeDuringTraining(Callback):
    """Scrapes the rank's own endpoints at chosen global steps and at the end of training."""

    def __init__(self, prometheus: PrometheusCallback, at_steps: Tuple[int, ...]) -> None:
        self.prometheus = prometheus
        self.at_steps = set(at_steps)
        self.snapshots: Dict[Any, Snapshot] = {}
        self.port: Optional[int] = None

    def _scrape(self, trainer: Trainer, key: Any) -> None:
        self.port = self.prometheus.port
        base = f"http://127.0.0.1:{self.port}"
        content_type, text = get(base + "/metrics")
        assert content_type.startswith("text/plain")
        _, progress = get(base + "/progress")
        self.snapshots[key] = Snapshot(trainer, text, json.loads(progress))

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step in self.at_steps and trainer.global_step not in self.snapshots:
            self._scrape(trainer, trainer.global_step)

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        self._scrape(trainer, "end")


def fit(tmp_path: Path, prometheus: PrometheusCallback, at_steps: Tuple[int, ...] = ()) -> Tuple[Trainer, ScrapeDuringTraining]:
    torch.manual_seed(0)
    scraper = ScrapeDuringTraining(prometheus, at_steps)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        callbacks=[prometheus, checkpoint, scraper],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        default_root_dir=tmp_path,
    )
    trainer.fit(Regression(), train_dataloaders=loader(0), val_dataloaders=loader(1))
    return trainer, scraper


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tuple[Trainer, PrometheusCallback, ScrapeDuringTraining]:
    monkeypatch.setenv("VOLT_ATTEMPT", "2")
    monkeypatch.setenv("VOLT_JOB_NAME", "unit-job")
    monkeypatch.delenv("VOLT_METRICS_PORT", raising=False)
    prometheus = PrometheusCallback(port=0, host="127.0.0.1")
    trainer, scraper = fit(tmp_path, prometheus, at_steps=(3, BATCHES_PER_EPOCH + 3))
    return trainer, prometheus, scraper


def test_metrics_follow_training(run: Tuple[Trainer, PrometheusCallback, ScrapeDuringTraining]) -> None:
    trainer, prometheus, scraper = run
    labels = {"rank": "0", "trainingjob": "unit-job"}
    early, late, end = scraper.snapshots[3], scraper.snapshots[BATCHES_PER_EPOCH + 3], scraper.snapshots["end"]

    for snap in (early, late, end):
        s = snap.samples
        assert one(s, "volt_train_global_step", **labels) == snap.global_step
        assert one(s, "volt_train_epoch", **labels) == snap.epoch
        assert one(s, "volt_job_restarts", **labels) == 2
        assert one(s, "volt_world_size", **labels) == 1
        # Every self.log value as a gauge of its latest value: one series per name, not per step.
        logged = {key["metric"]: value for key, value in pick(s, "volt_logged_metric", **labels)}
        for name, value in snap.callback_metrics.items():
            assert logged[name] == pytest.approx(value), name
        lrs = {key["param_group"]: value for key, value in pick(s, "volt_learning_rate", optimizer="0", **labels)}
        assert [lrs["0"], lrs["1"]] == pytest.approx(snap.lrs)
        assert not pick(s, "volt_gpu_memory_allocated_bytes")  # CPU run

    # Batches seen when scraped: the step count of the scraping batch (its own end hook ran first).
    assert one(early.samples, "volt_train_samples_total", **labels) == 3 * BATCH
    assert one(early.samples, "volt_train_step_duration_seconds_count", **labels) == 3
    assert one(end.samples, "volt_train_samples_total", **labels) == 2 * BATCHES_PER_EPOCH * BATCH
    assert one(end.samples, "volt_train_step_duration_seconds_count", **labels) == 2 * BATCHES_PER_EPOCH
    # The delays in training_step and in collate show up where they belong.
    step_sum = one(end.samples, "volt_train_step_duration_seconds_sum", **labels)
    assert step_sum >= 2 * BATCHES_PER_EPOCH * STEP_DELAY
    wait_count = one(end.samples, "volt_train_data_wait_seconds_count", **labels)
    wait_sum = one(end.samples, "volt_train_data_wait_seconds_sum", **labels)
    assert wait_count == 2 * BATCHES_PER_EPOCH
    assert wait_sum / wait_count >= COLLATE_DELAY
    assert one(end.samples, "volt_train_step_duration_seconds_bucket", le="+Inf", **labels) == 2 * BATCHES_PER_EPOCH
    throughput = one(end.samples, "volt_train_samples_per_second", **labels)
    assert 0 < throughput < BATCH / (COLLATE_DELAY + STEP_DELAY)

    # Validation ran at the end of epoch 0: val_loss is exported in epoch 1; LR halved by StepLR.
    assert "val_loss" not in early.callback_metrics
    assert ("volt_logged_metric", tuple(sorted({**labels, "metric": "val_loss"}.items()))) in late.samples
    assert late.lrs == pytest.approx([0.025, 0.005])

    # Checkpoints every 4 steps: steps 4 and 8 (and 12 at the end of training).
    assert one(late.samples, "volt_checkpoint_last_step", **labels) == 8
    assert one(late.samples, "volt_checkpoint_save_duration_seconds_count", **labels) == 2
    assert one(late.samples, "volt_checkpoint_save_failures_total", **labels) == 0
    saved_at = one(late.samples, "volt_checkpoint_last_timestamp_seconds", **labels)
    assert time.time() - 60 < saved_at <= time.time()
    assert not pick(early.samples, "volt_checkpoint_last_step")  # nothing saved before step 4


def pyproject_version() -> str:
    with open(Path(__file__).resolve().parents[2] / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def test_build_info_names_the_engine_version(run: Tuple[Trainer, PrometheusCallback, ScrapeDuringTraining]) -> None:
    _, _, scraper = run
    for snap in scraper.snapshots.values():
        found = pick(snap.samples, "volt_build_info", rank="0", trainingjob="unit-job")
        assert [(key["version"], value) for key, value in found] == [(pyproject_version(), 1)]


def test_progress_document(run: Tuple[Trainer, PrometheusCallback, ScrapeDuringTraining], tmp_path: Path) -> None:
    trainer, prometheus, scraper = run
    late = scraper.snapshots[BATCHES_PER_EPOCH + 3]
    progress = late.progress
    assert set(progress) == {
        "epoch", "step", "loss", "max_epochs", "max_steps", "progress", "metrics", "samples_per_second",
        "checkpoint", "attempt", "rank", "trainingjob", "stage", "last_step_time", "time",
    }
    assert progress["epoch"] == 1 and progress["step"] == BATCHES_PER_EPOCH + 3
    assert progress["loss"] == pytest.approx(late.callback_metrics["train_loss"])
    assert progress["metrics"]["val_loss"] == pytest.approx(late.callback_metrics["val_loss"])
    assert progress["max_epochs"] == 2 and progress["max_steps"] is None
    # 1 epoch done + 3 of 6 batches of the second, out of 2 epochs.
    assert progress["progress"] == pytest.approx((1 + 3 / BATCHES_PER_EPOCH) / 2)
    assert progress["attempt"] == 2 and progress["rank"] == 0 and progress["trainingjob"] == "unit-job"
    assert progress["stage"] == "fit"
    assert progress["samples_per_second"] > 0
    checkpoint = progress["checkpoint"]
    assert checkpoint["step"] == 8 and Path(checkpoint["path"]).is_file()
    assert progress["time"].endswith("Z") and checkpoint["time"].endswith("Z")
    assert isinstance(progress["last_step_time"], float)  # unix seconds
    assert checkpoint["time"] <= _rfc3339(progress["last_step_time"]) <= progress["time"]
    assert one(late.samples, "volt_train_last_step_timestamp_seconds", rank="0") == pytest.approx(
        progress["last_step_time"], abs=1.0)

    end = scraper.snapshots["end"].progress
    assert end["progress"] == pytest.approx(1.0) and end["step"] == 2 * BATCHES_PER_EPOCH


def test_promtool_accepts_real_output(run: Tuple[Trainer, PrometheusCallback, ScrapeDuringTraining], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make prometheus` installs Debian's prometheus package"
    _, _, scraper = run
    for key, snap in scraper.snapshots.items():
        result = subprocess.run(
            [promtool, "check", "metrics"], input=snap.metrics_text, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"snapshot {key}: {result.stdout}{result.stderr}"


def test_server_stops_with_the_trainer_and_save_checkpoint_is_restored(
    run: Tuple[Trainer, PrometheusCallback, ScrapeDuringTraining]
) -> None:
    trainer, prometheus, scraper = run
    assert prometheus.port is None and scraper.port
    assert "save_checkpoint" not in vars(trainer)
    with pytest.raises(urllib.error.URLError):
        get(f"http://127.0.0.1:{scraper.port}/metrics")


def test_port_comes_from_env_plus_local_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("VOLT_METRICS_PORT", str(port))
    monkeypatch.delenv("VOLT_JOB_NAME", raising=False)
    monkeypatch.delenv("VOLT_ATTEMPT", raising=False)
    prometheus = PrometheusCallback(host="127.0.0.1")
    trainer, scraper = fit(tmp_path, prometheus)
    assert prometheus.base_port == port
    end = scraper.snapshots["end"]
    # Without VOLT_JOB_NAME there is no trainingjob label; restarts default to 0.
    assert one(end.samples, "volt_train_global_step", rank="0") == 2 * BATCHES_PER_EPOCH
    assert all("trainingjob" not in key for key, _ in pick(end.samples, "volt_train_global_step"))
    assert one(end.samples, "volt_job_restarts", rank="0") == 0
    with pytest.raises(urllib.error.URLError):
        get(f"http://127.0.0.1:{port}/progress")


def test_trainer_enables_it_when_volt_metrics_port_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLT_METRICS_PORT", str(free_port()))
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False)
    assert sum(isinstance(cb, PrometheusCallback) for cb in trainer.callbacks) == 1
    mine = PrometheusCallback(port=0)
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, callbacks=[mine])
    assert [cb for cb in trainer.callbacks if isinstance(cb, PrometheusCallback)] == [mine]
    monkeypatch.delenv("VOLT_METRICS_PORT")
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False)
    assert not any(isinstance(cb, PrometheusCallback) for cb in trainer.callbacks)


def test_busy_port_fails_at_setup_naming_its_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setenv("VOLT_METRICS_PORT", str(busy.getsockname()[1]))
        with pytest.raises(OSError, match="VOLT_METRICS_PORT"):
            fit(tmp_path, PrometheusCallback(host="127.0.0.1"))


@pytest.mark.parametrize(
    "kwargs, env, message",
    [
        ({"port": -1}, {}, "port"),
        ({"port": 70000}, {}, "port"),
        ({"port": "9090"}, {}, "port"),
        ({}, {"VOLT_METRICS_PORT": "nine"}, "VOLT_METRICS_PORT"),
        ({"port": 0}, {"VOLT_ATTEMPT": "x"}, "VOLT_ATTEMPT"),
        ({"port": 0, "attempt": -2}, {}, "attempt"),
        ({"port": 0, "throughput_window_seconds": 0}, {}, "throughput_window_seconds"),
    ],
)
def test_bad_configuration_names_the_argument(
    kwargs: Dict[str, Any], env: Dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        PrometheusCallback(**kwargs)


def test_hot_path_never_reads_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensor reads (.item(), a host sync on GPU) happen when scraped, in the HTTP thread, never per step."""
    reads: List[str] = []
    original_item = torch.Tensor.item

    def counting_item(self: torch.Tensor) -> Any:
        reads.append(threading.current_thread().name)
        return original_item(self)

    class Checked(PrometheusCallback):
        hook_calls = 0

        def on_train_batch_start(self, *args: Any) -> None:
            before = len(reads)
            super().on_train_batch_start(*args)
            assert len(reads) == before, "on_train_batch_start read a tensor"
            Checked.hook_calls += 1

        def on_train_batch_end(self, *args: Any) -> None:
            before = len(reads)
            super().on_train_batch_end(*args)
            assert len(reads) == before, "on_train_batch_end read a tensor"
            Checked.hook_calls += 1

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    prometheus = Checked(port=0, host="127.0.0.1")
    trainer, scraper = fit(tmp_path, prometheus)
    assert Checked.hook_calls == 2 * 2 * BATCHES_PER_EPOCH
    # The scrapes did convert tensors, in the server's threads.
    assert any(name != threading.main_thread().name for name in reads)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_run_exports_memory_and_reads_no_tensor_per_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: List[str] = []
    original_item = torch.Tensor.item

    def counting_item(self: torch.Tensor) -> Any:
        if self.is_cuda:
            reads.append(threading.current_thread().name)
        return original_item(self)

    class Checked(PrometheusCallback):
        def on_train_batch_end(self, *args: Any) -> None:
            before = len(reads)
            super().on_train_batch_end(*args)
            assert len(reads) == before, "on_train_batch_end read a CUDA tensor"

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    prometheus = Checked(port=0, host="127.0.0.1", job_name="gpu-job")
    scraper = ScrapeDuringTraining(prometheus, at_steps=(5,))
    trainer = Trainer(
        max_epochs=1, accelerator="gpu", devices=1, callbacks=[prometheus, scraper], logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )
    trainer.fit(Regression(), train_dataloaders=loader(0), val_dataloaders=loader(1))
    samples = scraper.snapshots[5].samples
    device = f"cuda:{torch.cuda.current_device()}"
    labels = {"rank": "0", "trainingjob": "gpu-job", "device": device}
    allocated = one(samples, "volt_gpu_memory_allocated_bytes", **labels)
    reserved = one(samples, "volt_gpu_memory_reserved_bytes", **labels)
    peak = one(samples, "volt_gpu_memory_max_allocated_bytes", **labels)
    assert 0 < allocated <= peak and allocated <= reserved
    # Logged CUDA values were converted when scraped (in the HTTP thread), matching the trainer's.
    logged = {key["metric"]: value for key, value in pick(samples, "volt_logged_metric", rank="0")}
    assert logged["train_loss"] == pytest.approx(scraper.snapshots[5].callback_metrics["train_loss"])
    assert any(name != threading.main_thread().name for name in reads)


def test_resumed_run_reports_the_checkpoint_it_resumed_from(
    run: Tuple[Trainer, PrometheusCallback, ScrapeDuringTraining], tmp_path: Path
) -> None:
    first, _, _ = run
    resumed_from = Path(first.checkpoint_callback.best_model_path or sorted((tmp_path / "ckpt").glob("*.ckpt"))[0])
    saved_step = int(torch.load(resumed_from, map_location="cpu", weights_only=False)["global_step"])
    prometheus = PrometheusCallback(port=0, host="127.0.0.1")
    scraper = ScrapeDuringTraining(prometheus, at_steps=(saved_step + 1,))
    trainer = Trainer(
        max_epochs=3, accelerator="cpu", devices=1, callbacks=[prometheus, scraper], logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
        enable_checkpointing=False,
    )
    trainer.fit(Regression(), train_dataloaders=loader(0), ckpt_path=str(resumed_from))
    snap = scraper.snapshots[saved_step + 1]
    assert snap.progress["checkpoint"]["path"] == str(resumed_from)
    assert snap.progress["checkpoint"]["step"] == saved_step
    saved_at = one(snap.samples, "volt_checkpoint_last_timestamp_seconds", rank="0")
    assert saved_at == pytest.approx(resumed_from.stat().st_mtime)


@pytest.mark.parametrize(
    "batch, size",
    [
        ((torch.zeros(7, 3), torch.zeros(7)), 7),
        ([torch.zeros(5, 2)], 5),
        (torch.zeros(4, 9), 4),
        ({"text": ["a", "b", "c"], "input_ids": torch.zeros(3, 12)}, 3),  # first value holds no tensor
        ({"inputs": {"ids": torch.zeros(6, 2)}, "labels": torch.zeros(6)}, 6),
        ((["no", "tensors"], {"x": 1}), 1),
        (torch.tensor(2.0), 1),
    ],
)
def test_batch_size_is_the_first_tensors_leading_dimension(batch: Any, size: int) -> None:
    from volt.callbacks.prometheus import infer_batch_size

    assert infer_batch_size(batch) == size


def test_rank_zero_leaves_final_progress_as_termination_message(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    message = tmp_path / "termination-log"
    monkeypatch.setenv("VOLT_TERMINATION_MESSAGE_PATH", str(message))
    monkeypatch.delenv("VOLT_METRICS_PORT", raising=False)
    prometheus = PrometheusCallback(port=0, host="127.0.0.1")
    trainer, _ = fit(tmp_path, prometheus)
    final = json.loads(message.read_text())
    # The endpoint is gone after fit; the file holds what it would have said last.
    assert final["step"] == trainer.global_step == 2 * BATCHES_PER_EPOCH
    assert final["epoch"] == trainer.current_epoch
    assert final["checkpoint"]["step"] == 2 * BATCHES_PER_EPOCH
    assert Path(final["checkpoint"]["path"]).parent == tmp_path / "ckpt"


def test_termination_message_fits_the_kubelet_limit() -> None:
    from volt.termination import MAX_BYTES, encode_progress

    progress = {"step": 7, "epoch": 1, "checkpoint": None,
                "metrics": {f"metric_{i}": float(i) for i in range(1000)}}
    body = encode_progress(progress)
    assert len(body) <= MAX_BYTES
    assert json.loads(body) == {"step": 7, "epoch": 1, "checkpoint": None}
    small = {"step": 3, "metrics": {"loss": 0.5}}
    assert json.loads(encode_progress(small)) == small


class HangsAtBatch(Regression):
    """Blocks in training_step of one batch until the test lets it go (a hung rank, on demand)."""

    def __init__(self, hang_at: int) -> None:
        super().__init__()
        self.hang_at = hang_at
        self.hanging = threading.Event()
        self.release = threading.Event()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if batch_idx == self.hang_at:
            self.hanging.set()
            assert self.release.wait(60), "the test never released the hung step"
        return super().training_step(batch, batch_idx)


class RecordLastStep(Callback):
    """After each batch: (global_step, the callback's last optimizer-step time, the wall clock)."""

    def __init__(self, prometheus: PrometheusCallback) -> None:
        self.prometheus = prometheus
        self.seen: List[Tuple[int, Optional[float], float]] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.seen.append((trainer.global_step, self.prometheus.progress()["last_step_time"], time.time()))


def test_last_step_time_moves_with_optimizer_steps_and_stops_when_training_hangs(tmp_path: Path) -> None:
    """The stall signal: the end of the latest optimizer step, in /progress and as a gauge, frozen while a step hangs."""
    torch.manual_seed(0)
    prometheus = PrometheusCallback(port=0, host="127.0.0.1")
    recorder = RecordLastStep(prometheus)
    model = HangsAtBatch(hang_at=4)
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, callbacks=[prometheus, recorder], logger=False,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      num_sanity_val_steps=0, limit_val_batches=0, accumulate_grad_batches=2, default_root_dir=tmp_path)
    scrapes: List[Tuple[Dict[str, Any], Samples, float]] = []

    def watch() -> None:
        assert model.hanging.wait(60)
        port = prometheus.port
        for _ in range(2):  # two scrapes while the step hangs: the signal must not move
            _, progress = get(f"http://127.0.0.1:{port}/progress")
            _, text = get(f"http://127.0.0.1:{port}/metrics")
            scrapes.append((json.loads(progress), parse(text), time.time()))
        model.release.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        trainer.fit(model, train_dataloaders=loader(0))
    finally:
        model.release.set()
        watcher.join(60)

    # accumulate_grad_batches=2: batches 1, 3, 5 step; batches 0, 2, 4 do not move the signal.
    steps = [step for step, _, _ in recorder.seen]
    assert steps == [0, 1, 1, 2, 2, 3]
    times = [t for _, t, _ in recorder.seen]
    assert times[0] is None
    assert times[1] is not None and times[1] <= recorder.seen[1][2]
    assert times[2] == times[1] and times[4] == times[3]
    assert times[1] < times[3] < times[5]
    # While batch 4 hung, the last step was batch 3's, on /progress and on /metrics alike.
    assert len(scrapes) == 2
    for progress, samples, scraped_at in scrapes:
        assert progress["last_step_time"] == times[3]
        assert one(samples, "volt_train_last_step_timestamp_seconds", rank="0") == pytest.approx(times[3])
        assert scraped_at >= times[3]


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a client that gives up (a timed-out poll) does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.timeout(60)
def test_a_client_that_disconnects_is_dropped_without_a_traceback(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    prometheus = PrometheusCallback(port=0, host="127.0.0.1")
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, callbacks=[prometheus])
    prometheus.setup(trainer, None, "fit")
    server = prometheus._server
    assert server is not None
    handled = threading.Semaphore(0)
    shutdown_request = server.shutdown_request

    def count_handled(request: Any) -> None:  # the server's last call for every connection
        shutdown_request(request)
        handled.release()

    monkeypatch.setattr(server, "shutdown_request", count_handled)
    # /progress answers only once its client is gone, so the reply is written to a reset socket.
    client_gone = threading.Event()
    progress = prometheus.progress

    def progress_after_reset() -> Dict[str, Any]:
        client_gone.wait(10)
        return progress()

    monkeypatch.setattr(prometheus, "progress", progress_after_reset)
    try:
        address = ("127.0.0.1", prometheus.port)
        # Gone while the server reads the request, and gone before it writes the reply.
        partial = socket.create_connection(address)
        partial.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        _reset(partial)
        whole = socket.create_connection(address)
        whole.sendall(b"GET /progress HTTP/1.1\r\nHost: x\r\n\r\n")
        _reset(whole)
        client_gone.set()
        assert handled.acquire(timeout=20) and handled.acquire(timeout=20)
        monkeypatch.setattr(prometheus, "progress", progress)
        assert json.loads(get(f"http://127.0.0.1:{prometheus.port}/progress")[1])  # still serving
    finally:
        prometheus.stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err
