"""The local cluster's Kueue manager, on plain data: the pinned version agrees everywhere,
and its configuration turns off what the local cluster cannot serve
(volt_operator/testing/kueue_process.py; the process itself runs in tests/e2e/test_kueue_e2e.py)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from volt_operator.testing import kueue_process

pytestmark = pytest.mark.timeout(30)


def test_kueue_version_agrees_with_build_script_and_makefile(repo_root: Path) -> None:
    version = kueue_process.KUEUE_VERSION
    script = (repo_root / "scripts" / "build-kueue.sh").read_text()
    makefile = (repo_root / "Makefile").read_text()
    assert f'KUEUE_VERSION="${{KUEUE_VERSION:-{version}}}"' in script
    assert re.search(rf"^KUEUE_VERSION \?= {re.escape(version)}$", makefile, re.M)
    assert re.search(r"^test: .*\bkueue\b", makefile, re.M), "make test must build Kueue"


def test_configuration_needs_no_webhook_certificates_leader_or_aggregation(tmp_path: Path) -> None:
    config = kueue_process.configuration(1001, 1002, 1003, tmp_path)
    assert config["apiVersion"] == "config.kueue.x-k8s.io/v1beta2" and config["kind"] == "Configuration"
    assert config["internalCertManagement"] == {"enable": False}
    assert config["leaderElection"] == {"leaderElect": False}
    assert config["featureGates"] == {"VisibilityOnDemand": False}
    assert config["health"]["healthProbeBindAddress"] == "127.0.0.1:1001"
    assert config["metrics"]["bindAddress"] == "127.0.0.1:1002"
    assert config["webhook"] == {"host": "127.0.0.1", "port": 1003, "certDir": str(tmp_path)}
    assert config["integrations"]["frameworks"] == ["batch/job"]
    assert "waitForPodsReady" not in config
    strict = kueue_process.configuration(1001, 1002, 1003, tmp_path, pods_ready_timeout=40)
    assert strict["waitForPodsReady"] == {"timeout": "40s", "requeuingStrategy": {"backoffBaseSeconds": 1}}


def test_missing_build_names_the_make_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLT_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make kueue"):
        kueue_process.find_kueue()
