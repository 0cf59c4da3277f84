"""Where this process's rank, world size and master address come from.

Three sources, checked in this order:

* ``torchrun``/``volt-run`` (torch's elastic agent): every worker gets ``RANK``,
  ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK`` (the node
  rank), ``MASTER_ADDR``, ``MASTER_PORT``. ``volt-run`` also sets
  ``VOLT_LAUNCHER=volt-run`` so the source reads ``volt``.
* the volt pod contract (docs/distributed.md), without a launcher: ``MASTER_ADDR``,
  ``MASTER_PORT``, ``NODE_RANK``, ``NUM_NODES``, ``WORLD_SIZE`` (processes, i.e.
  nodes x devices) and their torchrun twins ``PET_*``. No ``RANK``/``LOCAL_RANK``:
  this process is the node's first process and the others still have to be started.
* nothing: one local machine.

Everything here is a pure function of an environment mapping, so it is tested
without touching ``os.environ``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Optional

from volt.contract import ENV_LAUNCHER, VOLT_RUN

Source = Literal["volt", "torchrun", "local"]

DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 29500


class ClusterConfigError(ValueError):
    """The environment (or its combination with Trainer arguments) is inconsistent."""


@dataclass(frozen=True)
class ClusterEnvironment:
    """Rank layout of one process. ``launched`` is True when every rank already runs."""

    global_rank: int
    local_rank: int
    node_rank: int
    world_size: int
    local_world_size: int
    num_nodes: int
    master_addr: str
    master_port: int
    source: Source
    launched: bool

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def validate(self, devices: int, num_nodes: int) -> None:
        """Fail fast when the Trainer's ``devices``/``num_nodes`` disagree with the launch.

        Running with a mismatch hangs in rendezvous or trains with the wrong number
        of ranks; an error naming both sides costs nothing.
        """
        if devices < 1 or num_nodes < 1:
            raise ClusterConfigError(f"devices and num_nodes must be >= 1, got devices={devices}, num_nodes={num_nodes}")
        if not self.launched and self.source == "local":
            return  # the Trainer decides the layout itself
        check_world_size(self.world_size, f"WORLD_SIZE={self.world_size} from the {self.source} environment",
                         num_nodes, devices, f"Trainer(num_nodes={num_nodes}, devices={devices})")
        check_num_nodes(self.num_nodes, f"the {self.source} environment", num_nodes, f"Trainer(num_nodes={num_nodes})")
        if self.launched and self.local_world_size != devices:
            raise ClusterConfigError(
                f"the launcher started LOCAL_WORLD_SIZE={self.local_world_size} process(es) on this node but "
                f"Trainer(devices={devices}); start {devices} process(es) per node (volt-run --nproc-per-node)"
            )


def check_world_size(world_size: int, world_from: str, num_nodes: int, per_node: int, layout_from: str) -> None:
    """The layout invariant, checked here only: world size = nodes x processes (devices) per node.

    ``world_from`` and ``layout_from`` say where each side came from, so the message names both.
    """
    expected = num_nodes * per_node
    if world_size != expected:
        raise ClusterConfigError(
            f"{world_from}, but {layout_from} = {num_nodes} node(s) x {per_node} process(es) per node = {expected} "
            f"processes. Make them agree: WORLD_SIZE counts processes (num_nodes x devices), not nodes"
        )


def check_num_nodes(env_nodes: int, env_from: str, trainer_nodes: int, trainer_from: str) -> None:
    """The Trainer's (or VOLT_TRAINER's) num_nodes must be the launch's; ``trainer_from`` shows the value."""
    if env_nodes != trainer_nodes:
        raise ClusterConfigError(f"{env_from} has {env_nodes} node(s) but {trainer_from}")


@dataclass(frozen=True)
class NodeEnvironment:
    """What one node (pod) knows before its processes start: used by ``volt-run``."""

    node_rank: int
    num_nodes: int
    nproc_per_node: Optional[int]
    world_size: Optional[int]
    master_addr: str
    master_port: int


def _int(env: Mapping[str, str], name: str) -> Optional[int]:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw.strip())
    except ValueError:
        raise ClusterConfigError(f"environment variable {name} must be an integer, got {raw!r}") from None


def _first(env: Mapping[str, str], *names: str) -> Optional[int]:
    """The value of the first set variable among ``names``; set ones must agree."""
    found: Optional[int] = None
    found_name = ""
    for name in names:
        value = _int(env, name)
        if value is None:
            continue
        if found is not None and value != found:
            raise ClusterConfigError(f"{found_name}={found} and {name}={value} disagree; set only one or make them equal")
        if found is None:
            found, found_name = value, name
    return found


def _master(env: Mapping[str, str]) -> tuple[str, int]:
    addr = env.get("MASTER_ADDR") or env.get("PET_MASTER_ADDR") or DEFAULT_MASTER_ADDR
    port = _first(env, "MASTER_PORT", "PET_MASTER_PORT")
    port = DEFAULT_MASTER_PORT if port is None else port
    if not 0 < port < 65536:
        raise ClusterConfigError(f"MASTER_PORT must be in 1..65535, got {port}")
    return addr, port


def _check_range(name: str, value: int, upper: int, upper_name: str) -> None:
    if not 0 <= value < upper:
        raise ClusterConfigError(f"{name}={value} is out of range: it must be in 0..{upper - 1} ({upper_name}={upper})")


def node_environment(env: Mapping[str, str]) -> NodeEnvironment:
    """Read the per-node contract (``NODE_RANK``/``NUM_NODES``/... or ``PET_*``)."""
    num_nodes = _first(env, "NUM_NODES", "PET_NNODES")
    num_nodes = 1 if num_nodes is None else num_nodes
    if num_nodes < 1:
        raise ClusterConfigError(f"NUM_NODES must be >= 1, got {num_nodes}")
    node_rank = _first(env, "NODE_RANK", "PET_NODE_RANK", "GROUP_RANK")
    node_rank = 0 if node_rank is None else node_rank
    _check_range("NODE_RANK", node_rank, num_nodes, "NUM_NODES")
    nproc = _first(env, "PET_NPROC_PER_NODE")
    world_size = _int(env, "WORLD_SIZE")
    if nproc is not None and nproc < 1:
        raise ClusterConfigError(f"PET_NPROC_PER_NODE must be >= 1, got {nproc}")
    if world_size is not None:
        if world_size < 1:
            raise ClusterConfigError(f"WORLD_SIZE must be >= 1, got {world_size}")
        if world_size % num_nodes:
            raise ClusterConfigError(
                f"WORLD_SIZE={world_size} is not a multiple of NUM_NODES={num_nodes}: WORLD_SIZE counts processes "
                f"(num_nodes x devices), not pods"
            )
        if nproc is not None:
            check_world_size(world_size, f"WORLD_SIZE={world_size}", num_nodes, nproc,
                             f"NUM_NODES={num_nodes} x PET_NPROC_PER_NODE={nproc}")
    addr, port = _master(env)
    return NodeEnvironment(node_rank, num_nodes, nproc, world_size, addr, port)


def _is_volt_contract(env: Mapping[str, str]) -> bool:
    return any(k in env for k in ("NODE_RANK", "NUM_NODES", "PET_NNODES", "PET_NODE_RANK"))


def cluster_environment(env: Mapping[str, str]) -> ClusterEnvironment:
    """The rank layout of this process, from ``env`` alone (see the module docstring)."""
    rank = _int(env, "RANK")
    local_rank = _int(env, "LOCAL_RANK")
    addr, port = _master(env)

    if rank is not None and local_rank is not None:
        # Started by torchrun / volt-run: the agent set every per-process variable.
        world_size = _int(env, "WORLD_SIZE")
        if world_size is None:
            raise ClusterConfigError("RANK and LOCAL_RANK are set but WORLD_SIZE is not")
        local_world_size = _int(env, "LOCAL_WORLD_SIZE")
        if local_world_size is None:
            local_world_size = world_size // (_first(env, "NUM_NODES", "PET_NNODES") or 1)
        if local_world_size < 1 or world_size % local_world_size:
            raise ClusterConfigError(
                f"WORLD_SIZE={world_size} is not a multiple of LOCAL_WORLD_SIZE={local_world_size}"
            )
        num_nodes = world_size // local_world_size
        node_rank = _first(env, "GROUP_RANK")
        node_rank = rank // local_world_size if node_rank is None else node_rank
        _check_range("RANK", rank, world_size, "WORLD_SIZE")
        _check_range("LOCAL_RANK", local_rank, local_world_size, "LOCAL_WORLD_SIZE")
        _check_range("GROUP_RANK", node_rank, num_nodes, "number of nodes")
        if rank != node_rank * local_world_size + local_rank:
            raise ClusterConfigError(
                f"RANK={rank} does not match GROUP_RANK={node_rank} x LOCAL_WORLD_SIZE={local_world_size} + "
                f"LOCAL_RANK={local_rank}"
            )
        source: Source = "volt" if env.get(ENV_LAUNCHER) == VOLT_RUN else "torchrun"
        return ClusterEnvironment(
            rank, local_rank, node_rank, world_size, local_world_size, num_nodes, addr, port, source, True
        )

    if rank is not None:
        raise ClusterConfigError(
            "RANK is set without LOCAL_RANK: volt never reads a pod-level RANK. Start the script with volt-run "
            "(or torchrun), or unset RANK"
        )

    if _is_volt_contract(env):
        node = node_environment(env)
        world_size = node.world_size if node.world_size is not None else node.num_nodes * (node.nproc_per_node or 1)
        local_world_size = world_size // node.num_nodes
        if local_rank is not None:
            # A process our own launcher spawned for this node (LOCAL_RANK only).
            _check_range("LOCAL_RANK", local_rank, local_world_size, "WORLD_SIZE / NUM_NODES")
            return ClusterEnvironment(
                node.node_rank * local_world_size + local_rank, local_rank, node.node_rank, world_size,
                local_world_size, node.num_nodes, addr, port, "volt", True,
            )
        return ClusterEnvironment(
            node.node_rank * local_world_size, 0, node.node_rank, world_size, local_world_size, node.num_nodes,
            addr, port, "volt", world_size == 1,
        )

    if local_rank is not None:
        raise ClusterConfigError("LOCAL_RANK is set without RANK or NODE_RANK/NUM_NODES; cannot place this process")
    return ClusterEnvironment(0, 0, 0, 1, 1, 1, addr, port, "local", False)
