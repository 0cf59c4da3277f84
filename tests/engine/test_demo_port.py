"""Lightning's demo classes, ported by changing only their imports, run under volt as under Lightning.

The test reads ``lightning/pytorch/demos/boring_classes.py`` from the installed Lightning (the file is
not part of volt), rewrites its import prefix (``lightning.pytorch`` -> ``volt``; the one helper it
takes from ``lightning_utilities`` -> ``volt.utilities``), and runs BoringModel, ManualOptimBoringModel
and DemoModel with BoringDataModule and with their own loaders through fit, validate, test and predict
(``predict(model, datamodule)`` positionally) with the main venv's python, which has no Lightning;
BoringDataModuleNoLen and IterableBoringDataModule (two loaders per stage) run too. The same driver
runs under Lightning: results, weights included, must match. volt's own ``volt.demos.boring_classes``
runs the same driver and must match too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
REPO = HERE.parent.parent
LIGHTNING = os.environ.get("VOLT_LIGHTNING_PYTHON")
pytestmark = pytest.mark.skipif(not LIGHTNING, reason="VOLT_LIGHTNING_PYTHON is not set (make lightning-env)")

PORT_RULES = (("lightning.pytorch", "volt"), ("from lightning_utilities import", "from volt.utilities import"))


def port(source: str) -> str:
    """Only import lines change: the prefix, and lightning_utilities' helper."""
    lines = []
    for line in source.splitlines(keepends=True):
        if line.lstrip().startswith(("from ", "import ")):
            for old, new in PORT_RULES:
                line = line.replace(old, new)
        lines.append(line)
    return "".join(lines)


def lightning_demo_source() -> str:
    code = "import importlib.util; print(importlib.util.find_spec('lightning').submodule_search_locations[0])"
    root = subprocess.run([LIGHTNING, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    return (Path(root) / "pytorch" / "demos" / "boring_classes.py").read_text()


def run(engine: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{engine}.json"
    cmd = [LIGHTNING if engine == "lightning" else sys.executable, str(HERE / "demo_port_script.py"), engine, str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "trainer_image"), "PYTHONHASHSEED": "0"}
    if engine == "volt":
        cmd.append(str(tmp_path))
    elif engine == "lightning":
        env.pop("PYTHONPATH")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    return {"proc": proc, "out": out}


def finish(job: dict) -> dict:
    output, _ = job["proc"].communicate(timeout=240)
    assert job["proc"].returncode == 0, output[-4000:]
    return json.loads(job["out"].read_text())


@pytest.mark.timeout(300)
def test_lightning_demo_classes_port_by_their_imports(tmp_path: Path) -> None:
    source = lightning_demo_source()
    ported = port(source)
    assert "lightning" not in "".join(l for l in ported.splitlines() if l.startswith(("from ", "import ")))
    assert [l for l in ported.splitlines() if not l.startswith(("from ", "import "))] == \
        [l for l in source.splitlines() if not l.startswith(("from ", "import "))]
    (tmp_path / "ported_boring_classes.py").write_text(ported)

    jobs = {engine: run(engine, tmp_path) for engine in ("volt", "lightning", "volt-demos")}
    volt, lightning, volt_demos = (finish(jobs[e]) for e in ("volt", "lightning", "volt-demos"))

    for name, v, l in [(n, volt[n], lightning[n]) for n in ("boring", "manual", "demo")] + \
                      [(f"volt.demos {n}", volt_demos[n], lightning[n]) for n in ("boring", "manual", "demo")]:
        assert (v["global_step"], v["epoch"]) == (l["global_step"], l["epoch"]), name
        for key in ("weights", "weights_after"):
            for param, values in l[key].items():
                assert v[key][param] == pytest.approx(values, abs=1e-5), (name, key, param)
        assert v["validate"] == l["validate"] and v["test"] == l["test"], name
        assert v["predict"]["predictions"] == l["predict"]["predictions"] and v["predict"]["shape"] == l["predict"]["shape"]
        assert v["predict"]["first"] == pytest.approx(l["predict"]["first"], abs=1e-5), name
    # DemoModel has no validation_step/test_step: both engines refuse with MisconfigurationException
    assert volt["demo"]["validate"] == {"raised": "MisconfigurationException", "also_value_error": True}
    for name in ("boring_own_loaders", "manual_own_loaders", "other_datamodules"):
        assert volt[name] == lightning[name], name
        assert volt_demos[name] == lightning[name], f"volt.demos {name}"
    # IterableBoringDataModule's two training loaders are combined (max_size_cycle), its evaluation loaders
    # run in turn: two lists of predictions
    assert len(volt["other_datamodules"]["iterable"]["predict"]) == 2
