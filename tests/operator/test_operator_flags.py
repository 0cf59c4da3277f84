"""`python -m volt_operator`'s flags: every setting is a flag, some with an environment default."""
from __future__ import annotations

import pytest

from volt_operator.__main__ import parse_args

pytestmark = pytest.mark.timeout(30)

TUNING_ENV = ("VOLT_OPERATOR_METRICS_PORT", "VOLT_OPERATOR_PROGRESS_SECONDS", "VOLT_OPERATOR_PROGRESS_RATE",
              "VOLT_OPERATOR_RESYNC_SECONDS", "VOLT_OPERATOR_RELIST_SECONDS",
              "VOLT_OPERATOR_STUCK_POD_MARGIN_SECONDS")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TUNING_ENV:
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_typed_values() -> None:
    args = parse_args([])
    assert (args.metrics_port, args.progress_interval, args.progress_rate, args.resync_interval,
            args.relist_interval, args.stuck_pod_margin) == (8080, 5.0, 20.0, 3.0, 300.0, 30.0)


def test_the_environment_sets_a_default_and_a_flag_overrides_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLT_OPERATOR_RESYNC_SECONDS", "0.5")
    monkeypatch.setenv("VOLT_OPERATOR_RELIST_SECONDS", "60")
    monkeypatch.setenv("VOLT_OPERATOR_PROGRESS_RATE", "2")
    args = parse_args(["--relist-interval", "30"])
    assert (args.resync_interval, args.relist_interval, args.progress_rate) == (0.5, 30.0, 2.0)


def test_a_bad_environment_value_is_the_flags_error(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VOLT_OPERATOR_RESYNC_SECONDS", "soon")
    with pytest.raises(SystemExit) as exit_:
        parse_args([])
    assert exit_.value.code == 2
    assert "argument --resync-interval: invalid float value: 'soon'" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--progress-interval", "--progress-rate", "--resync-interval",
                                  "--relist-interval"])
@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_periods_and_rates_must_be_positive(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args([flag, value])
    assert f"{flag} must be > 0" in capsys.readouterr().err
