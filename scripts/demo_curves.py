"""The demo's curves: a Prometheus configuration that finds the job's ranks, and
loss by step from Prometheus drawn in the terminal.

    python scripts/demo_curves.py config --targets T.json --operator 127.0.0.1:28081 > prometheus.yml
    python scripts/demo_curves.py discover --kubeconfig K --targets T.json &
    python scripts/demo_curves.py plot --prometheus http://127.0.0.1:28090 --job synthetic ...

Debian's Prometheus is built without Kubernetes discovery, so `discover` does
its part: it watches the pods labelled `volt.dev/job` and writes every
container port named `metrics-<local rank>` (one per rank, on the pod's IP) to
a file that Prometheus reads (`file_sd_configs`). `config` scrapes that file
and the operator's /metrics. `plot` reads
`volt_train_loss` and `volt_train_global_step` of one rank over the job's run
and draws loss against step.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from kubernetes import client, config, watch

SCRAPE_INTERVAL = "1s"


def prometheus_config(targets: str, operator: str) -> Dict[str, object]:
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
        "scrape_configs": [
            {"job_name": "volt-operator", "static_configs": [{"targets": [operator]}]},
            {"job_name": "volt-trainer",
             "file_sd_configs": [{"files": [targets], "refresh_interval": "1s"}]},
        ],
    }


def pod_targets(pod: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The file_sd target groups of one pod: its metrics ports on its IP (none before it has one)."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip or (pod.get("status") or {}).get("phase") not in ("Pending", "Running"):
        return []
    meta = pod["metadata"]
    ports = [p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports") or []
             if str(p.get("name", "")).startswith("metrics-")]
    return [{"targets": [f"{ip}:{port}" for port in ports],
             "labels": {"namespace": meta["namespace"], "pod": meta["name"]}}] if ports else []


def discover(kubeconfig: str, targets: Path) -> None:
    """Keep ``targets`` equal to the metrics ports of the running volt pods (watch, not poll)."""
    api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    groups: Dict[str, List[Dict[str, Any]]] = {}
    while True:
        listed = api.list_pod_for_all_namespaces(label_selector="volt.dev/job", _preload_content=False)
        body = json.load(listed)
        groups = {p["metadata"]["uid"]: pod_targets(p) for p in body["items"]}
        _write(targets, groups)
        stream = watch.Watch()
        for change in stream.stream(api.list_pod_for_all_namespaces, label_selector="volt.dev/job",
                                    resource_version=body["metadata"]["resourceVersion"],
                                    timeout_seconds=300):
            pod = api.api_client.sanitize_for_serialization(change["object"])
            uid = pod["metadata"]["uid"]
            groups[uid] = [] if change["type"] == "DELETED" else pod_targets(pod)
            _write(targets, groups)


def _write(path: Path, groups: Dict[str, List[Dict[str, Any]]]) -> None:
    text = json.dumps([g for uid in sorted(groups) for g in groups[uid]])
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # atomic: Prometheus never reads half a file


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> List[dict]:
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{query}", timeout=10) as response:
        return json.load(response)["data"]["result"]


def loss_by_step(loss: Sequence[Tuple[float, str]], steps: Sequence[Tuple[float, str]]
                 ) -> List[Tuple[int, float]]:
    """(step, loss) at the timestamps both series have, one point per step."""
    step_at = {t: int(float(v)) for t, v in steps}
    points: Dict[int, float] = {}
    for t, value in loss:
        if t in step_at:
            points[step_at[t]] = float(value)
    return sorted(points.items())


def ascii_plot(points: Sequence[Tuple[int, float]], width: int = 60, height: int = 12) -> str:
    """A scatter of (x, y) points as text, with the y range on the left and x below."""
    if not points:
        return "(no points)"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    grid = [[" "] * width for _ in range(height)]
    for x, y in points:
        col = 0 if x1 == x0 else round((x - x0) / (x1 - x0) * (width - 1))
        row = 0 if y1 == y0 else round((y1 - y) / (y1 - y0) * (height - 1))
        grid[row][col] = "*"
    label = max(len(f"{y1:.4g}"), len(f"{y0:.4g}"))
    lines = []
    for i, row in enumerate(grid):
        tick = f"{y1:.4g}" if i == 0 else f"{y0:.4g}" if i == height - 1 else ""
        lines.append(f"{tick:>{label}} |{''.join(row)}")
    lines.append(" " * label + " +" + "-" * width)
    lines.append(" " * label + f"  {x0:<{width // 2}}{x1:>{width - width // 2}}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="verb", required=True)
    config = commands.add_parser("config")
    config.add_argument("--targets", required=True, help="the file `discover` writes")
    config.add_argument("--operator", required=True, help="HOST:PORT of the operator's /metrics")
    find = commands.add_parser("discover")
    find.add_argument("--kubeconfig", required=True)
    find.add_argument("--targets", required=True, type=Path)
    plot = commands.add_parser("plot")
    plot.add_argument("--prometheus", required=True)
    plot.add_argument("--job", required=True)
    plot.add_argument("--rank", default="0")
    plot.add_argument("--start", type=float, required=True, help="Unix time the job started")
    plot.add_argument("--end", type=float, required=True)
    args = parser.parse_args(argv)
    if args.verb == "config":
        print(json.dumps(prometheus_config(args.targets, args.operator), indent=2))
        return 0
    if args.verb == "discover":
        discover(args.kubeconfig, args.targets)
        return 0
    selector = f'{{trainingjob="{args.job}",rank="{args.rank}"}}'
    step = max(1.0, (args.end - args.start) / 10000)  # every scrape (Prometheus returns <= 11000 points)
    loss = query_range(args.prometheus, f"volt_train_loss{selector}", args.start, args.end, step)
    steps = query_range(args.prometheus, f"volt_train_global_step{selector}", args.start, args.end, step)
    if not loss or not steps:
        print(f"Prometheus holds no volt_train_loss{selector} samples between the job's start and end")
        return 1
    points = loss_by_step(loss[0]["values"], steps[0]["values"])
    print(f"loss by step, rank {args.rank} (volt_train_loss and volt_train_global_step{selector}):")
    print(ascii_plot(points))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
