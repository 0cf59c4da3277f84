"""The synthetic example's knobs that demos and fault tests lean on."""
import pytest

from volt.examples import synthetic


@pytest.mark.timeout(30)
def test_a_restarted_gang_runs_at_the_restart_pace():
    parse = synthetic.build_parser().parse_args
    slow_then_quick = parse(["--step-delay", "0.2", "--restart-step-delay", "0"])
    assert synthetic.step_delay(slow_then_quick, None) == 0.2  # outside a job
    assert synthetic.step_delay(slow_then_quick, 0) == 0.2  # the first gang
    assert synthetic.step_delay(slow_then_quick, 1) == 0.0
    assert synthetic.step_delay(slow_then_quick, 3) == 0.0
    # Without the flag every gang runs at --step-delay.
    assert synthetic.step_delay(parse(["--step-delay", "0.1"]), 2) == 0.1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("flag", ["--step-delay", "--restart-step-delay"])
def test_a_negative_delay_is_refused_naming_the_flag(flag, capsys):
    with pytest.raises(SystemExit):
        synthetic.main([flag, "-1"])
    assert f"{flag} must be >= 0, got -1.0" in capsys.readouterr().err
