"""A test node agent: a small kubelet that runs pods as local processes.

See docs/design/local-cluster-node-agent.md. Run it with
`python -m volt_operator.testing.node_agent --kubeconfig K --nodes n1,n2 --workdir W`.
"""

from .agent import AgentConfig, NodeAgent
from .nodes import NodeShape

__all__ = ["AgentConfig", "NodeAgent", "NodeShape"]
