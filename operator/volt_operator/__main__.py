"""``python -m volt_operator``: run the TrainingJob operator (kopf).

    python -m volt_operator [--namespace NS ... | --all-namespaces]
                            [--standalone | --leader-elect [--leader-election-namespace NS]
                                                           [--leader-election-lease NAME]]
                            [--log-format json|text] [--health-port P | --liveness URL]
                            [--metrics-port P] [--progress-interval S] [--progress-rate R]
                            [--resync-interval S] [--relist-interval S]
                            [--stuck-pod-margin S] [--network-policy-peers JSON] [--kueue]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

import kopf


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m volt_operator", description="Run the volt TrainingJob operator."
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true",
                       help="watch every namespace (the default when no --namespace)")
    parser.add_argument("--standalone", action="store_true",
                        help="no kopf peering (run exactly one operator replica)")
    parser.add_argument("--leader-elect", action="store_true",
                        help="several replicas: only the holder of a coordination.k8s.io "
                        "Lease acts (implies no kopf peering)")
    parser.add_argument("--leader-election-namespace", metavar="NS",
                        default=os.environ.get("POD_NAMESPACE", "default"),
                        help="namespace of the Lease (env POD_NAMESPACE)")
    parser.add_argument("--leader-election-lease", metavar="NAME", default="volt-operator",
                        help="name of the Lease; operators that watch different namespaces "
                        "from one namespace need one each (default volt-operator)")
    parser.add_argument("--log-format", choices=("json", "text"), default="text")
    parser.add_argument("--verbose", "-v", action="store_true")
    health = parser.add_mutually_exclusive_group()
    health.add_argument("--health-port", type=int, metavar="P",
                        help="serve liveness at http://0.0.0.0:P/healthz")
    health.add_argument("--liveness", metavar="URL",
                        help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz")
    # Defaults from the environment stay strings: argparse converts them with the
    # flag's type, so a bad value is reported as the flag's error, not a traceback.
    parser.add_argument(
        "--metrics-port", type=int, metavar="P",
        default=os.environ.get("VOLT_OPERATOR_METRICS_PORT", "8080"),
        help="Prometheus metrics port (env VOLT_OPERATOR_METRICS_PORT; 0 picks a free "
        "port, -1 disables)",
    )
    parser.add_argument(
        "--progress-interval", type=float, metavar="S",
        default=os.environ.get("VOLT_OPERATOR_PROGRESS_SECONDS", "5"),
        help="poll rank 0's /progress at most once per S seconds per job "
        "(env VOLT_OPERATOR_PROGRESS_SECONDS)",
    )
    parser.add_argument(
        "--progress-rate", type=float, metavar="R",
        default=os.environ.get("VOLT_OPERATOR_PROGRESS_RATE", "20"),
        help="reads of /progress per second over all jobs (env VOLT_OPERATOR_PROGRESS_RATE)",
    )
    parser.add_argument(
        "--resync-interval", type=float, metavar="S",
        default=os.environ.get("VOLT_OPERATOR_RESYNC_SECONDS", "3"),
        help="period of the resync sweep over live jobs (env VOLT_OPERATOR_RESYNC_SECONDS)",
    )
    parser.add_argument(
        "--relist-interval", type=float, metavar="S",
        default=os.environ.get("VOLT_OPERATOR_RELIST_SECONDS", "300"),
        help="check the watch cache against a full LIST every S seconds, for deletions a "
        "watch gap hid (env VOLT_OPERATOR_RELIST_SECONDS)",
    )
    parser.add_argument(
        "--stuck-pod-margin", type=float, metavar="S",
        default=os.environ.get("VOLT_OPERATOR_STUCK_POD_MARGIN_SECONDS", "30"),
        help="force-delete a job's pod still terminating S seconds after its grace period "
        "ended (its node does not report back); env VOLT_OPERATOR_STUCK_POD_MARGIN_SECONDS",
    )
    parser.add_argument(
        "--network-policy-peers", metavar="JSON",
        default=os.environ.get("VOLT_OPERATOR_NETWORK_POLICY_PEERS"),
        help="create a NetworkPolicy per job: its pods reach each other, and the metrics ports "
        "accept these NetworkPolicyPeers (a JSON list, e.g. Prometheus' and the operator's "
        "namespace/pod selectors); unset: no NetworkPolicy",
    )
    parser.add_argument(
        "--kueue", action="store_true",
        default=os.environ.get("VOLT_OPERATOR_KUEUE", "") == "1",
        help="admit TrainingJobs labelled kueue.x-k8s.io/queue-name through Kueue: a Workload per "
        "job, no pod until Kueue admits it (docs/kueue.md; env VOLT_OPERATOR_KUEUE=1)",
    )
    args = parser.parse_args(argv)
    if args.network_policy_peers is not None:
        try:
            peers = json.loads(args.network_policy_peers)
        except json.JSONDecodeError as exc:
            parser.error(f"--network-policy-peers is not JSON: {exc.msg} at position {exc.pos}")
        if not isinstance(peers, list) or not all(isinstance(p, dict) for p in peers):
            parser.error("--network-policy-peers must be a JSON list of NetworkPolicyPeer objects")
        args.network_policy_peers = peers
    for port, flag in ((args.health_port, "--health-port"), (args.metrics_port, "--metrics-port")):
        if port is not None and not -1 <= port <= 65535:
            parser.error(f"{flag} must be a TCP port, got {port}")
    for value, flag in ((args.progress_interval, "--progress-interval"), (args.progress_rate, "--progress-rate"),
                        (args.resync_interval, "--resync-interval"), (args.relist_interval, "--relist-interval")):
        if not value > 0:  # also refuses nan
            parser.error(f"{flag} must be > 0, got {value}")
    if args.stuck_pod_margin < 0:
        parser.error(f"--stuck-pod-margin must be >= 0, got {args.stuck_pod_margin}")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    log_format = kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(verbose=args.verbose, log_format=log_format)
    from kubernetes.config import ConfigException

    from . import handlers  # registers the handlers
    from .kube import load_configuration

    try:
        configuration = load_configuration()
    except ConfigException as exc:
        sys.stderr.write(
            f"volt_operator: no Kubernetes credentials (not in a pod, and no usable "
            f"kubeconfig; set KUBECONFIG): {exc}\n"
        )
        sys.exit(2)

    liveness = args.liveness
    if args.health_port is not None:
        liveness = f"http://0.0.0.0:{args.health_port}/healthz"
    memo = kopf.Memo()
    memo.options = handlers.Options(
        progress_seconds=args.progress_interval,
        progress_rate=args.progress_rate,
        resync_seconds=args.resync_interval,
        relist_seconds=args.relist_interval,
        stuck_pod_margin=args.stuck_pod_margin,
        leader_namespace=args.leader_election_namespace if args.leader_elect else None,
        leader_lease=args.leader_election_lease,
        metrics_port=None if args.metrics_port == -1 else args.metrics_port,
        kube_configuration=configuration,
        namespaces=list(args.namespace),
        network_policy_peers=args.network_policy_peers,
        kueue=args.kueue,
    )
    if args.network_policy_peers is not None:
        handlers.watch_network_policies()
    if args.kueue:
        handlers.watch_kueue_workloads()
    namespaces = args.namespace
    logging.getLogger("volt_operator").info(
        "watching %s", ", ".join(namespaces) if namespaces else "all namespaces"
    )
    kopf.run(
        standalone=args.standalone or args.leader_elect,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
        memo=memo,
    )


if __name__ == "__main__":
    sys.exit(main())
