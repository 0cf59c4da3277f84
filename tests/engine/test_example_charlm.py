"""The character-level language model example: real text, a LightningDataModule, and a loss that falls."""
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pydoc_data.topics
import pytest
import torch

import yaml
from ddp_support import REPO, child_env, logs, start_nodes, wait_all
from volt.examples.charlm import CharDataModule, CharLM, build_parser, load_corpus
from volt_operator.api import TrainingJobSpec

EXAMPLE = ["python", "-m", "volt.examples.charlm"]


def _done(output: str) -> Dict[str, Any]:
    """The JSON after the last ``done: `` (volt-run puts ``[rank 0] `` before it)."""
    line = [line for line in output.splitlines() if "done: {" in line][-1]
    return json.loads(line.split("done: ", 1)[1])


@pytest.mark.timeout(60)
def test_the_corpus_is_pythons_help_text_split_into_shifted_windows():
    data = CharDataModule(context=64, batch_size=8)
    topics = pydoc_data.topics.topics
    assert len(data.text) > 100_000 and topics["assert"] in data.text  # real prose, nothing downloaded
    assert data.decode(data.encode("The assert statement")) == "The assert statement"
    data.setup("fit")
    assert len(data.train_set) > 5 * len(data.val_set) > 0
    inputs, targets = data.train_set[3]
    assert inputs.shape == targets.shape == (64,)
    assert torch.equal(inputs[1:], targets[:-1])  # each target is the next character
    assert data.decode(inputs.tolist()) == data.text[3 * 64:4 * 64]
    # Text files of one's own instead (here: this repository's docs).
    own = CharDataModule([str(REPO / "docs" / "operator.md")])
    assert own.text == (REPO / "docs" / "operator.md").read_text() and own.vocab != data.vocab
    with pytest.raises(ValueError, match="val_fraction"):
        CharDataModule(val_fraction=1.0)
    assert load_corpus() == data.text  # the same order every time: every rank reads the same text


@pytest.mark.timeout(60)
def test_sampling_continues_a_prompt_with_codes_of_the_vocabulary():
    model = CharLM(vocab_size=10, embedding=4, hidden=8)
    codes = model.sample(torch.tensor([1, 2, 3]), 12, seed=1)
    assert len(codes) == 12 and all(0 <= code < 10 for code in codes)
    assert codes == model.sample(torch.tensor([1, 2, 3]), 12, seed=1)


@pytest.mark.parametrize("manifest", ["charlm.yaml", "charlm-gpu.yaml"])
@pytest.mark.timeout(60)
def test_the_manifests_are_training_jobs_that_run_this_script(manifest: str):
    claim, job = yaml.safe_load_all((REPO / "examples" / manifest).read_text())
    spec = TrainingJobSpec.model_validate(job["spec"])
    assert spec.command == EXAMPLE and spec.checkpoint.claim_name == claim["metadata"]["name"]
    build_parser().parse_args(spec.args)  # every flag exists
    assert spec.trainer.max_steps and spec.resources.limits["memory"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_forty_steps_bring_the_loss_well_below_chance(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "volt.examples.charlm", "--max-steps", "40", "--val-batches", "5"],
        env=child_env(), cwd=tmp_path, capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = _done(done.stdout)
    assert result["step"] == 40 and result["chance_loss"] == round(math.log(result["vocab"]), 4)
    # Untrained: about chance (ln of the vocabulary). 40 steps: more than a nat lower (measured 4.63 -> 2.93).
    assert abs(result["val_loss_before"] - result["chance_loss"]) < 0.3, result
    assert result["val_loss_after"] < result["val_loss_before"] - 1.0, result
    assert result["sample"].startswith("The ") and len(result["sample"]) == 4 + 120
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_under_volt_run_train_it_too(tmp_path: Path):
    """What the TrainingJob runs, on one node: DDP over gloo, each rank its share of the windows."""
    procs = start_nodes(1, 2, EXAMPLE + ["--max-steps", "25", "--val-batches", "4"], tmp_path)
    assert wait_all(procs, 280) == [0], logs(tmp_path)
    result = _done((tmp_path / "node0.log").read_text())
    assert result["step"] == 25
    assert result["val_loss_after"] < result["val_loss_before"] - 0.5, result
