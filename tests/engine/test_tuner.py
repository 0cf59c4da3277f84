"""Tuner: the learning-rate finder and batch-size scaling, through real fits."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.data import DataLoader

import volt
from volt.tuner import LRFinder, Tuner, is_oom_error, lightning_getattr, lightning_setattr

from tiny_models import TinyModel, loader, quiet_trainer, regression_data


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_lr_find_sweeps_restores_and_updates_lr(tmp_path):
    torch.manual_seed(0)
    model = TinyModel()
    before = _weights(model)
    trainer = quiet_trainer(tmp_path, max_epochs=3)
    # One fixed batch: the loss is a smooth function of the learning rate.
    finder = Tuner(trainer).lr_find(model, loader(n=8, batch_size=8), num_training=60)
    lrs = finder.results["lr"]
    assert len(lrs) == 60 and len(finder.results["loss"]) == 60
    assert lrs[0] == pytest.approx(1e-8) and lrs[-1] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(lrs, lrs[1:]))  # exponential sweep
    suggestion = finder.suggestion()
    assert 1e-3 < suggestion <= 1.0
    assert model.hparams.lr == suggestion  # the model's lr lives in hparams
    # Weights and trainer state are back where they were; a real fit follows normally.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert trainer.global_step == 0 and trainer.current_epoch == 0
    trainer.fit(model, loader(n=16, batch_size=8))
    assert trainer.global_step == 6
    assert trainer.optimizers[0].param_groups[0]["lr"] == suggestion


def test_lr_find_stops_early_on_divergence(tmp_path):
    torch.manual_seed(0)
    model = TinyModel()
    finder = Tuner(quiet_trainer(tmp_path)).lr_find(
        model, loader(n=8, batch_size=8), min_lr=1e-4, max_lr=1e4, num_training=80, update_attr=False
    )
    assert 2 < len(finder.results["lr"]) < 80
    assert model.hparams.lr == 0.05  # update_attr=False


def test_lr_find_linear_mode_and_attr_name(tmp_path):
    class WithAttr(TinyModel):
        def __init__(self):
            super().__init__()
            self.hparams.pop("lr")
            self.learning_rate = 0.1

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.learning_rate)

    model = WithAttr()
    finder = Tuner(quiet_trainer(tmp_path)).lr_find(
        model, loader(n=8, batch_size=8), mode="linear", min_lr=0.001, max_lr=0.1, num_training=20
    )
    steps = [b - a for a, b in zip(finder.results["lr"], finder.results["lr"][1:])]
    assert all(s == pytest.approx(steps[0]) for s in steps)
    assert model.learning_rate == finder.suggestion()
    with pytest.raises(AttributeError, match="missing_attr"):
        Tuner(quiet_trainer(tmp_path)).lr_find(model, loader(), attr_name="missing_attr")


def test_lr_find_bad_args_and_no_attr(tmp_path):
    class NoLr(TinyModel):
        def __init__(self):
            super().__init__()
            self.hparams.pop("lr")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    tuner = Tuner(quiet_trainer(tmp_path))
    with pytest.raises(AttributeError, match="model.lr"):
        tuner.lr_find(NoLr(), loader())
    with pytest.raises(ValueError, match="mode"):
        tuner.lr_find(TinyModel(), loader(), mode="cosine")
    with pytest.raises(ValueError, match="min_lr"):
        tuner.lr_find(TinyModel(), loader(), min_lr=1.0, max_lr=0.1)
    with pytest.raises(ValueError, match="num_training"):
        tuner.lr_find(TinyModel(), loader(), num_training=1)


def test_suggestion_needs_points():
    finder = LRFinder("exponential", 1e-5, 1.0, 10)
    finder.results = {"lr": [1e-5, 1e-4, 1e-3], "loss": [1.0, 0.9, 0.8]}
    assert finder.suggestion() is None
    finder.results = {"lr": [0.1 * i for i in range(1, 7)], "loss": [5.0, 4.9, 3.0, 1.0, 0.9, 0.95]}
    assert finder.suggestion(skip_begin=0, skip_end=0) == pytest.approx(0.3)


class BatchSized(TinyModel):
    """Builds its loaders from ``self.batch_size``, as scale_batch_size requires."""

    def __init__(self, batch_size: int = 4, n: int = 512):
        super().__init__()
        self.batch_size = batch_size
        self.n = n
        self.seen_batch_sizes = []

    def train_dataloader(self):
        return DataLoader(regression_data(self.n), batch_size=self.batch_size)

    def training_step(self, batch, batch_idx):
        self.seen_batch_sizes.append(batch[0].shape[0])
        return super().training_step(batch, batch_idx)


def test_scale_batch_size_without_oom_respects_max_trials_and_steps(tmp_path):
    model = BatchSized(batch_size=4)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    result = Tuner(trainer).scale_batch_size(model, init_val=2, max_trials=4, steps_per_trial=3)
    assert result == 16 and model.batch_size == 16
    assert model.seen_batch_sizes == [2] * 3 + [4] * 3 + [8] * 3 + [16] * 3


def test_scale_batch_size_caps_at_dataset_size(tmp_path):
    model = BatchSized(batch_size=4, n=40)
    result = Tuner(quiet_trainer(tmp_path)).scale_batch_size(model, init_val=8, steps_per_trial=1)
    assert result == 40  # 8, 16, 32, then the whole dataset


def test_scale_batch_size_updates_hparams_and_datamodule(tmp_path):
    class DM(volt.LightningDataModule):
        def __init__(self):
            super().__init__()
            self.save_hyperparameters({"batch_size": 2})

        def train_dataloader(self):
            return DataLoader(regression_data(64), batch_size=self.hparams.batch_size)

    dm = DM()
    result = Tuner(quiet_trainer(tmp_path)).scale_batch_size(TinyModel(), datamodule=dm, max_trials=2, steps_per_trial=1)
    assert result == 4 and dm.hparams.batch_size == 4


def test_scale_batch_size_refuses_direct_dataloaders_and_missing_field(tmp_path):
    tuner = Tuner(quiet_trainer(tmp_path))
    with pytest.raises(ValueError, match="dataloaders passed"):
        tuner.scale_batch_size(BatchSized(), train_dataloaders=loader())
    with pytest.raises(AttributeError, match="batch_size"):
        tuner.scale_batch_size(TinyModel())
    with pytest.raises(ValueError, match="mode"):
        tuner.scale_batch_size(BatchSized(), mode="linear")


# A child process whose address space is capped 1.5 GiB above what it uses after
# importing torch: allocations beyond that fail for real with ENOMEM, which torch
# reports as "can't allocate memory", like a GPU OOM. Each sample of a batch asks
# for 24 MiB of activations, so the largest batch that fits is 32-63.
_OOM_CHILD = textwrap.dedent(
    """
    import json, resource, sys, tempfile
    import torch
    from torch.utils.data import DataLoader
    sys.path.insert(0, sys.argv[1])
    from tiny_models import TinyModel, quiet_trainer, regression_data
    from volt.tuner import Tuner

    class Hungry(TinyModel):
        def __init__(self):
            super().__init__()
            self.batch_size = 2
        def train_dataloader(self):
            return DataLoader(regression_data(256), batch_size=self.batch_size)
        def training_step(self, batch, batch_idx):
            # Activations this batch would need; allocated (address space) but never touched.
            activations = torch.empty(batch[0].shape[0], 6 * 1024 * 1024)  # 24 MiB per sample
            del activations
            return super().training_step(batch, batch_idx)

    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + 1536 * 2**20, resource.RLIM_INFINITY))
    out = {}
    for mode in ("power", "binsearch"):
        model = Hungry()
        trainer = quiet_trainer(tempfile.mkdtemp(), max_epochs=1)
        out[mode] = Tuner(trainer).scale_batch_size(model, mode=mode, steps_per_trial=1)
        assert model.batch_size == out[mode]
    print(json.dumps(out))
    """
)


@pytest.mark.timeout(180)
def test_scale_batch_size_finds_the_memory_limit_with_real_oom(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", _OOM_CHILD, os.path.dirname(__file__)],
        capture_output=True, text=True, env=env, timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # 1.5 GiB / 24 MiB = 64 samples minus what the rest of the step needs.
    assert result["power"] == 32
    assert 32 <= result["binsearch"] < 64 and result["binsearch"] > result["power"]


def test_is_oom_error():
    assert is_oom_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom_error(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert is_oom_error(MemoryError())
    assert not is_oom_error(RuntimeError("shape mismatch"))
    assert not is_oom_error(ValueError("out of memory"))


def test_trainer_tune_with_1x_flags(tmp_path):
    model = BatchSized(batch_size=4)
    trainer = quiet_trainer(tmp_path, max_epochs=1, auto_scale_batch_size=True, auto_lr_find=True)
    result = trainer.tune(model, scale_batch_size_kwargs={"max_trials": 2, "steps_per_trial": 1},
                          lr_find_kwargs={"num_training": 20})
    assert result["scale_batch_size"] == 4 and model.batch_size == 4
    assert isinstance(result["lr_find"], LRFinder)
    assert model.hparams.lr == result["lr_find"].suggestion()


def test_tune_skipped_with_fast_dev_run(tmp_path):
    model = BatchSized()
    assert Tuner(quiet_trainer(tmp_path, fast_dev_run=True)).scale_batch_size(model) is None
    assert model.batch_size == 4


def test_attr_helpers():
    model = TinyModel()
    assert lightning_getattr(model, "lr") == 0.05
    lightning_setattr(model, "lr", 0.5)
    assert model.hparams.lr == 0.5
    with pytest.raises(AttributeError, match="nothing"):
        lightning_getattr(model, "nothing")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.timeout(300)
def test_scale_batch_size_on_gpu_catches_real_cuda_oom(tmp_path):
    """On a GPU: each sample needs 1/100 of the free memory, so the limit is just under 100."""
    free, _total = torch.cuda.mem_get_info()
    per_sample = free // 100 // 4  # float32 elements

    class Hungry(BatchSized):
        def training_step(self, batch, batch_idx):
            activations = torch.empty(batch[0].shape[0], per_sample, device=self.device)
            del activations
            return super().training_step(batch, batch_idx)

    results = {}
    for mode in ("power", "binsearch"):
        model = Hungry(batch_size=2, n=4096)
        trainer = quiet_trainer(tmp_path, accelerator="gpu", devices=1, max_epochs=1)
        results[mode] = Tuner(trainer).scale_batch_size(model, mode=mode, steps_per_trial=1)
        torch.cuda.empty_cache()
    assert results["power"] == 64
    assert 64 < results["binsearch"] < 100


def test_plot_needs_matplotlib():
    finder = LRFinder("exponential", 1e-5, 1.0, 10)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="matplotlib"):
            finder.plot()
    else:
        import matplotlib

        matplotlib.use("Agg")
        finder.results = {"lr": [1e-5, 1e-3, 1e-1], "loss": [1.0, 0.5, 2.0]}
        assert finder.plot() is not None
