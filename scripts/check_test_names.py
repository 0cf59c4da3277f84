"""Fail when two test modules share a file name.

The test directories are not packages, so pytest imports each module by its bare name: two
``test_x.py`` files in different tiers collide and the whole run stops at collection.
"""
from __future__ import annotations

import collections
import sys
from pathlib import Path


def duplicate_test_modules(root: Path) -> dict[str, list[Path]]:
    by_name: dict[str, list[Path]] = collections.defaultdict(list)
    for path in root.rglob("*.py"):
        if path.name != "conftest.py" and "__pycache__" not in path.parts:
            by_name[path.name].append(path)
    return {name: paths for name, paths in by_name.items() if len(paths) > 1}


def main() -> int:
    duplicates = duplicate_test_modules(Path(sys.argv[1] if len(sys.argv) > 1 else "tests"))
    for name, paths in sorted(duplicates.items()):
        print(f"test module name {name} is used more than once: " + ", ".join(map(str, sorted(paths))))
    return 1 if duplicates else 0


if __name__ == "__main__":
    sys.exit(main())
