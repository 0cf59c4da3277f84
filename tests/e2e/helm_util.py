"""Find (or build) the helm binary that the chart tests use.

`make helm` builds it into the cache; a direct `pytest` run builds it here when
it is missing (scripts/build-helm.sh is idempotent and fast once cached).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "volt"
HELM_VERSION = os.environ.get("HELM_VERSION", "v3.22.0")


def helm_binary() -> Path:
    cache = Path(os.environ.get("VOLT_CACHE", Path.home() / ".cache" / "volt"))
    binary = cache / "helm" / HELM_VERSION / "helm"
    if not binary.is_file():
        subprocess.run(["bash", str(REPO / "scripts" / "build-helm.sh")], check=True, timeout=1800)
    return binary


def run_helm(helm: Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run helm; with check=True a failure raises with helm's own output."""
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
