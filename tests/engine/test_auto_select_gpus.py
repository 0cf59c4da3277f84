"""Trainer(auto_select_gpus=True): picks the GPUs with the most free memory, or says why it cannot."""
import logging
from typing import Any

import pytest
import torch

import volt
from volt.trainer.arguments import free_gpus

pytestmark = pytest.mark.timeout(60)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only message")
def test_without_cuda_it_logs_that_there_is_nothing_to_select(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="volt.trainer.arguments")
    trainer = volt.Trainer(auto_select_gpus=True, logger=False, default_root_dir=str(tmp_path))
    assert trainer.accelerator == "cpu"
    assert "Trainer(auto_select_gpus=True): training runs on cpu (torch sees 0 CUDA GPU(s)), so there are no GPUs " \
           "to select" in caplog.text
    with pytest.raises(ValueError, match="torch sees none"):
        volt.Trainer(auto_select_gpus=True, gpus=1, logger=False, default_root_dir=str(tmp_path))


@cuda
def test_it_picks_the_gpu_with_the_most_free_memory(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="volt.trainer.arguments")
    count = torch.cuda.device_count()
    free = {i: torch.cuda.mem_get_info(i)[0] for i in range(count)}
    best = min(free, key=lambda i: (-free[i], i))  # most free memory, then the lowest index
    assert free_gpus(1) == [best]
    trainer = volt.Trainer(auto_select_gpus=True, gpus=1, logger=False, default_root_dir=str(tmp_path))
    assert len(trainer.device_ids) == 1 and trainer.device_ids[0] in range(count)
    assert "auto_select_gpus=True) selected GPU(s)" in caplog.text
    with pytest.raises(ValueError, match=f"needs {count + 1} free GPU"):
        free_gpus(count + 1)
