"""FSDP2 (strategy="fsdp") over 2 real gloo processes: the same weights as DDP, exact resume."""

import pytest
import torch
from torch.distributed.tensor import DTensor

from ddp_support import SCRIPTS, child_env, free_port, logs, volt_run, wait_all

pytestmark = pytest.mark.slow

#: FSDP reduce-scatters where DDP all-reduces: the float32 sums run in another order.
ATOL = 1e-6


def _train(tmp_path, strategy, out, *extra, name=None):
    log = tmp_path / f"{name or strategy}.log"
    proc = volt_run(["--nproc-per-node", "2", "--master-port", str(free_port()), str(SCRIPTS / "fsdp_train.py"), strategy, str(out), *extra],
                    child_env(), log)
    assert wait_all([proc], 240) == [0], logs(tmp_path)
    return log.read_text()


@pytest.mark.timeout(300)
def test_fsdp_trains_to_ddp_weights_with_gradient_clipping(tmp_path):
    fsdp_log = _train(tmp_path, "fsdp", tmp_path / "fsdp.pt", "--clip", "0.5")
    assert "done: strategy=FSDPStrategy epoch=3 step=12" in fsdp_log, fsdp_log
    assert "FSDP: 2 sharded unit(s) + the root over 2 process(es)" in fsdp_log  # the Linear layers are units
    _train(tmp_path, "ddp", tmp_path / "ddp.pt", "--clip", "0.5")
    _train(tmp_path, "ddp", tmp_path / "ddp_unclipped.pt", name="ddp_unclipped")
    fsdp, ddp, unclipped = (torch.load(tmp_path / f) for f in ("fsdp.pt", "ddp.pt", "ddp_unclipped.pt"))
    assert sorted(fsdp) == sorted(ddp)
    for key in ddp:
        assert not isinstance(fsdp[key], DTensor)  # full tensors, not shards
        torch.testing.assert_close(fsdp[key], ddp[key], rtol=0, atol=ATOL, msg=f"{key}: FSDP differs from DDP")
    # the clip engaged (else the test above would not check clipping on DTensors)
    assert max((ddp[k] - unclipped[k]).abs().max().item() for k in ddp) > 1e-2


@pytest.mark.timeout(300)
def test_fsdp_sharded_async_checkpoint_resumes_exactly(tmp_path):
    ckpt = tmp_path / "ckpt"
    _train(tmp_path, "fsdp-name", tmp_path / "full.pt", name="full")
    _train(tmp_path, "fsdp-name", tmp_path / "one.pt", "--max-epochs", "1", "--ckpt-dir", str(ckpt), name="one")
    assert (ckpt / "last.ckpt" / ".metadata").is_file()  # strategy="fsdp": a sharded directory by default
    resumed = _train(tmp_path, "fsdp-name", tmp_path / "resumed.pt", "--ckpt-dir", str(ckpt), "--ckpt-path", "last",
                     name="resumed")
    assert "resumed from checkpoint" in resumed and "done: strategy=FSDPStrategy epoch=3 step=12" in resumed, resumed
    full, again = torch.load(tmp_path / "full.pt"), torch.load(tmp_path / "resumed.pt")
    for key in full:
        torch.testing.assert_close(again[key], full[key], rtol=0, atol=0, msg=f"{key}: resume is not exact")
