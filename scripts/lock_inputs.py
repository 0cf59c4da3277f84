"""The images' top-level requirements, derived from pyproject.toml: requirements/<image>.in.

    python3 scripts/lock_inputs.py pyproject.toml requirements/

scripts/lock-image-requirements.sh (`make lock`) writes the .in files with it and
pip-compiles them; tests/e2e/test_image_locks.py checks the committed files against
the same derivation. docs/packaging.md, "What is pinned", says what each image gets.
"""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any, Dict, List, Mapping

HEADER = "# Generated from pyproject.toml by scripts/lock-image-requirements.sh (make lock); do not edit.\n"


def lock_inputs(pyproject: Mapping[str, Any]) -> Dict[str, List[str]]:
    """Image name -> its requirements.

    operator: the project's dependencies without torch, plus the `operator` extra.
    trainer: the project's dependencies, the `tensorboard` extra (the default logger's
    format) and the build-system requirements (the image builds volt itself with
    --no-build-isolation).
    """
    project = pyproject["project"]
    extras = project["optional-dependencies"]
    return {
        "operator": [d for d in project["dependencies"] if not d.startswith("torch")] + extras["operator"],
        "trainer": project["dependencies"] + extras["tensorboard"] + pyproject["build-system"]["requires"],
    }


def main(pyproject_path: str, out_dir: str) -> None:
    out = Path(out_dir)
    for image, requirements in lock_inputs(tomllib.loads(Path(pyproject_path).read_text())).items():
        (out / f"{image}.in").write_text(HEADER + "".join(f"{r}\n" for r in requirements))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} PYPROJECT OUT_DIR")
    main(sys.argv[1], sys.argv[2])
