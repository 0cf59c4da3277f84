"""The images' lock files (requirements/, docs/packaging.md "What is pinned") agree with
pyproject.toml, pin everything with hashes, and are what the Dockerfiles install.
No network: `make lock` writes the files, this checks what was committed."""
from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from typing import Dict, List

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "requirements"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
_spec = importlib.util.spec_from_file_location("lock_inputs", REPO / "scripts" / "lock_inputs.py")
lock_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock_inputs)


def wanted(image: str) -> List[str]:
    """The image's top-level requirements, from pyproject.toml (the lock script's own derivation)."""
    return lock_inputs.lock_inputs(PYPROJECT)[image]


def requirement_lines(path: Path) -> List[str]:
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def pins(lock: Path) -> Dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of every requirement in a pip-compile lock."""
    out: Dict[str, tuple[str, int]] = {}
    name = None
    for line in lock.read_text().splitlines():
        if line.startswith("#") or not line.strip() or line.lstrip().startswith("#"):
            continue
        pinned = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", line)
        if pinned:
            name = canonicalize_name(pinned.group(1))
            out[name] = (pinned.group(2), 0)
            continue
        assert line.startswith("    --hash=sha256:") and name is not None, f"{lock.name}: unexpected line {line!r}"
        version, hashes = out[name]
        out[name] = (version, hashes + 1)
    return out


@pytest.mark.parametrize("image", ["operator", "trainer"])
def test_the_lock_inputs_are_what_pyproject_says(image: str) -> None:
    assert requirement_lines(LOCKS / f"{image}.in") == wanted(image), \
        f"requirements/{image}.in is stale: run `make lock`"


@pytest.mark.parametrize("image", ["operator", "trainer"])
def test_every_package_is_pinned_with_hashes_and_satisfies_pyproject(image: str) -> None:
    lock = LOCKS / f"{image}.lock"
    pinned = pins(lock)
    assert pinned, f"{lock} pins nothing"
    unhashed = [name for name, (_, hashes) in pinned.items() if hashes == 0]
    assert not unhashed, f"{lock.name}: no hash for {unhashed}"
    assert not [line for line in requirement_lines(lock) if line.startswith(("-e", "--index-url", "--find-links"))]
    for spec in wanted(image):
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pinned, f"{lock.name} does not pin {req.name} (run `make lock`)"
        assert req.specifier.contains(pinned[name][0], prereleases=True), \
            f"{lock.name} pins {req.name}=={pinned[name][0]}, outside pyproject.toml's {req} (run `make lock`)"


def test_the_operator_lock_has_no_torch_and_the_trainer_lock_builds_volt() -> None:
    assert "torch" not in pins(LOCKS / "operator.lock")
    assert {"torch", "numpy", "setuptools", "wheel"} <= pins(LOCKS / "trainer.lock").keys()


@pytest.mark.parametrize("dockerfile, lock", [("Dockerfile", "operator.lock"),
                                              ("trainer_image/Dockerfile", "trainer.lock")])
def test_the_dockerfiles_install_the_lock_with_hashes(dockerfile: str, lock: str) -> None:
    text = (REPO / dockerfile).read_text()
    assert f"requirements/{lock}" in text
    assert re.search(rf"pip install --require-hashes -r /src/{re.escape(lock)}", text)
    assert "!requirements/*.lock" in (REPO / ".dockerignore").read_text()


def test_the_base_image_packages_are_recorded() -> None:
    record = requirement_lines(LOCKS / "base-image.packages")
    names = {line.split("=", 1)[0] for line in record}
    assert {"python3", "python3-venv", "ca-certificates", "base-files"} <= names
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9+.\-]*=[0-9][A-Za-z0-9.+~:\-]*", line) for line in record), record
