"""`python -m volt_operator.testing.node_agent --kubeconfig K --nodes n1,n2 --workdir W`.

Prints `node-agent ready nodes=... subnet=... kubelet-port=...` on stdout once
its nodes are registered and its pod watches synced; runs until SIGTERM or
SIGINT, then stops every pod process and removes its namespaces, links,
iptables rule and files (exit 0).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from .agent import AgentConfig, NodeAgent
from .nodes import NodeShape


def parse_args(argv: list[str] | None = None) -> AgentConfig:
    parser = argparse.ArgumentParser(prog="python -m volt_operator.testing.node_agent",
                                     description="Run the pods bound to some nodes as local processes.")
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of a user allowed to manage "
                        "nodes, leases, pods/status, PVs and service account tokens")
    parser.add_argument("--nodes", required=True, help="comma-separated Node names to register")
    parser.add_argument("--workdir", required=True, type=Path,
                        help="state dir: pod volumes and logs, provisioned PVs, certificates")
    parser.add_argument("--cpu", default="8", help="cpu capacity of each node (default 8)")
    parser.add_argument("--memory", default="16Gi", help="memory capacity of each node (default 16Gi)")
    parser.add_argument("--pods", type=int, default=110, help="pod capacity of each node")
    parser.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu capacity of each node")
    parser.add_argument("--client-ca-file", type=Path, default=None,
                        help="CA that signs the API server's kubelet client certificate; "
                             "the log endpoint then requires it")
    parser.add_argument("--restart-backoff", type=float, default=10.0,
                        help="first container restart back-off in seconds, doubling up to 300")
    parser.add_argument("--kubelet-port", type=int, default=0,
                        help="port of the log endpoint (default: an ephemeral port)")
    args = parser.parse_args(argv)
    if not Path(args.kubeconfig).is_file():
        parser.error(f"--kubeconfig: {args.kubeconfig} is not a file")
    try:
        return AgentConfig(
            kubeconfig=args.kubeconfig,
            nodes=[n.strip() for n in args.nodes.split(",")],
            workdir=args.workdir.resolve(),
            shape=NodeShape(cpu=args.cpu, memory=args.memory, pods=args.pods, gpus=args.gpus),
            client_ca=args.client_ca_file,
            restart_backoff_s=args.restart_backoff,
            kubelet_port=args.kubelet_port,
        )
    except ValueError as error:
        parser.error(str(error))
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    logging.basicConfig(level=os.environ.get("VOLT_NODE_AGENT_LOG", "INFO"),
                        format="%(asctime)s node-agent %(levelname)s %(message)s", stream=sys.stderr)
    if os.geteuid() != 0:
        print("node agent: must run as root (it creates network namespaces and bridges)",
              file=sys.stderr)
        return 2
    agent = NodeAgent(cfg)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        subnet = agent.start()
        port = agent.log_server.port if agent.log_server else 0
        print(f"node-agent ready nodes={','.join(cfg.nodes)} subnet={subnet} "
              f"address={agent.network.gateway} kubelet-port={port}", flush=True)
        agent.run()
    finally:
        agent.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
