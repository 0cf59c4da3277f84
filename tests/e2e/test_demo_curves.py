"""scripts/demo_curves.py's pure parts: targets of a pod, loss by step, the text plot."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo_curves.py"
spec = importlib.util.spec_from_file_location("demo_curves", SCRIPT)
demo_curves = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_curves)


def pod(phase: str, ip: str = "10.0.0.5") -> dict:
    return {"metadata": {"name": "j-node-1", "namespace": "ns"},
            "spec": {"containers": [{"ports": [{"name": "rendezvous", "containerPort": 29500},
                                               {"name": "metrics-0", "containerPort": 9090},
                                               {"name": "metrics-1", "containerPort": 9091}]}]},
            "status": {"phase": phase, "podIP": ip}}


def test_a_running_pod_is_one_target_per_rank() -> None:
    assert demo_curves.pod_targets(pod("Running")) == [
        {"targets": ["10.0.0.5:9090", "10.0.0.5:9091"], "labels": {"namespace": "ns", "pod": "j-node-1"}}]
    assert demo_curves.pod_targets(pod("Succeeded")) == []
    assert demo_curves.pod_targets(pod("Pending", ip="")) == []


def test_loss_by_step_pairs_samples_at_the_same_time() -> None:
    loss = [(1.0, "0.9"), (2.0, "0.5"), (3.0, "0.5"), (4.0, "0.2")]
    steps = [(1.0, "10"), (2.0, "20"), (3.0, "20"), (5.0, "40")]
    assert demo_curves.loss_by_step(loss, steps) == [(10, 0.9), (20, 0.5)]


def test_the_plot_puts_high_loss_top_left() -> None:
    text = demo_curves.ascii_plot([(0, 1.0), (50, 0.5), (100, 0.0)], width=11, height=3)
    rows = text.splitlines()
    assert rows[0] == "1 |*          " and rows[1] == "  |     *     " and rows[2] == "0 |          *"
    assert rows[3] == "  +-----------" and rows[4].split() == ["0", "100"]
    assert demo_curves.ascii_plot([]) == "(no points)"
