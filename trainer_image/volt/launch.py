"""``volt-run``: start this node's training processes with torch's elastic agent.

    volt-run [options] python train.py [args...]
    volt-run [options] train.py [args...]          # runs it with this Python

Every node (pod) runs ``volt-run`` with the same command. The node layout comes
from the volt pod contract (``NUM_NODES``, ``NODE_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``, ``WORLD_SIZE``, ``PET_*``; see ``volt.cluster``) or the flags.
Processes per node: ``--nproc-per-node``, else ``PET_NPROC_PER_NODE``, else
``devices``/``gpus`` in ``VOLT_TRAINER``, else ``WORLD_SIZE / NUM_NODES``, else 1.

What volt-run adds to torch's agent:

* a roll call before rendezvous: node 0 waits ``--rdzv-timeout`` seconds for
  every node and then names the missing node ranks; the others name node 0 when
  it never comes up. Both exit with ``RENDEZVOUS_TIMEOUT``.
* failure propagation across nodes: a node whose worker fails reports it in the
  rendezvous store; the other nodes stop their workers (at once for a root
  cause, after ``PEER_LOST_GRACE_S`` for a mere ``PEER_LOST``) instead of waiting
  30 minutes for a gloo/NCCL timeout.
* each node exits with what it saw first-hand (``exit_codes.node_exit_code``):
  the node whose rank raised exits 1 and the others ``PEER_LOST``, whoever
  reported first.
* SIGTERM is forwarded to the workers, which checkpoint and exit with
  ``CHECKPOINTED`` (``volt.signals``); after ``--grace-period`` seconds the
  stragglers are killed.
* the root cause as the container's termination message: the failing rank's
  exception, as the Trainer recorded it or, raised outside the Trainer, as read
  from the traceback in the worker's stderr (``describe_uncaught_errors``).
* exit codes from ``volt.exit_codes``.
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from types import FrameType
from typing import Any, Dict, List, Mapping, Optional, Sequence

from volt import exit_codes, termination
from volt.cluster import ClusterConfigError, NodeEnvironment, check_num_nodes, check_world_size, node_environment
from volt.contract import ENV_GRACE_PERIOD, ENV_LAUNCHER, VOLT_RUN, JobContract, job_contract

log = logging.getLogger("volt.launch")

RDZV_BACKEND = "volt"
_FAILED_KEY = "volt/failed"
_ROOT_CAUSE_KEY = "volt/failed/root"
#: How long a node waits after another node reported only PEER_LOST before it stops its
#: own workers (the node with the real failure gets that long to report it).
PEER_LOST_GRACE_S = 10.0
#: How long node 0 keeps the store up after its own failure, waiting for the other nodes to finish.
_STORE_LINGER_S = PEER_LOST_GRACE_S + 2.0
_DEFAULT_RDZV_TIMEOUT = 300.0
_DEFAULT_GRACE_PERIOD = 25.0
#: What volt-run puts before every line a worker prints (torch's template: ${rank} is the global rank).
RANK_PREFIX_TEMPLATE = "[rank ${rank}] "


class RendezvousTimeout(RuntimeError):
    """A node did not arrive (or node 0 never came up) within the timeout."""


@dataclass(frozen=True)
class LaunchPlan:
    """Everything ``run`` needs: resolved from flags and the environment."""

    node: NodeEnvironment
    nproc_per_node: int
    command: List[str]
    run_id: str
    rdzv_timeout: float
    grace_period: float
    max_restarts: int

    @property
    def world_size(self) -> int:
        return self.node.num_nodes * self.nproc_per_node


# --- planning (pure) ---------------------------------------------------------------


def _count_devices(value: Any, name: str) -> Optional[int]:
    """Processes per node implied by a Trainer ``devices``/``gpus`` value, if definite."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        if value == -1:
            return _cuda_count() or None
        if value < 0:
            raise ClusterConfigError(f"VOLT_TRAINER {name}={value} is invalid: use a count >= 0, -1 or a list")
        return value or None
    if isinstance(value, (list, tuple)):
        return len(value) or None
    if isinstance(value, str):
        text = value.strip()
        if text in ("auto", ""):
            return _cuda_count() or None
        if "," in text:
            return len([part for part in text.split(",") if part.strip()]) or None
        try:
            return _count_devices(int(text), name)
        except ValueError:
            raise ClusterConfigError(f"VOLT_TRAINER {name}={value!r} is not a device count or list") from None
    raise ClusterConfigError(f"VOLT_TRAINER {name} must be an int, list or string, got {type(value).__name__}")


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _normalize_command(command: Sequence[str]) -> List[str]:
    command = [part for part in command]
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ClusterConfigError("no command given: volt-run [options] python train.py [args...]")
    if command[0].endswith(".py"):
        command = [sys.executable, *command]
    elif shutil.which(command[0]) is None:
        raise ClusterConfigError(f"command {command[0]!r} is not an executable on PATH")
    return command


def plan_launch(args: argparse.Namespace, env: Mapping[str, str]) -> LaunchPlan:
    """Resolve the node layout; raise ``ClusterConfigError`` naming any inconsistency."""
    node = node_environment(env)
    changes: dict = {}
    if args.nnodes is not None:
        changes["num_nodes"] = args.nnodes
    if args.node_rank is not None:
        changes["node_rank"] = args.node_rank
    if args.master_addr is not None:
        changes["master_addr"] = args.master_addr
    if args.master_port is not None:
        changes["master_port"] = args.master_port
    node = replace(node, **changes)
    if node.num_nodes < 1 or not 0 <= node.node_rank < node.num_nodes:
        raise ClusterConfigError(f"node rank {node.node_rank} is out of range for {node.num_nodes} node(s)")

    nproc, source = args.nproc_per_node, "--nproc-per-node"
    contract = JobContract.from_env(env)
    settings = contract.trainer_settings
    if nproc is None and node.nproc_per_node is not None:
        nproc, source = node.nproc_per_node, "PET_NPROC_PER_NODE"
    for key in ("devices", "gpus", "num_processes"):
        if nproc is None:
            nproc, source = _count_devices(settings.get(key), key), f"VOLT_TRAINER {key}"
    if nproc is None and node.world_size is not None:
        nproc, source = node.world_size // node.num_nodes, "WORLD_SIZE / NUM_NODES"
    if nproc is None:
        nproc, source = 1, "default"
    if nproc < 1:
        raise ClusterConfigError(f"processes per node must be >= 1, got {nproc} from {source}")
    for key in ("devices", "gpus", "num_processes"):
        wanted = _count_devices(settings.get(key), key)
        if wanted is not None and wanted != nproc:
            raise ClusterConfigError(
                f"VOLT_TRAINER {key}={settings[key]!r} asks for {wanted} process(es) per node but {source} "
                f"gives {nproc}"
            )
    if node.world_size is not None:
        check_world_size(node.world_size, f"WORLD_SIZE={node.world_size}", node.num_nodes, nproc,
                         f"NUM_NODES and {source}")
    if settings.get("num_nodes") is not None:
        check_num_nodes(node.num_nodes, "NUM_NODES", settings["num_nodes"],
                        f"VOLT_TRAINER num_nodes={settings['num_nodes']}")

    run_id = args.run_id or contract.job_name or "volt"
    if contract.attempt is not None:
        run_id = f"{run_id}-{contract.attempt}"
    if args.max_restarts < 0:
        raise ClusterConfigError(f"--max-restarts must be >= 0, got {args.max_restarts}")
    if args.max_restarts and node.num_nodes > 1:
        # The rendezvous is static (one round) and the failure reports in node 0's store
        # outlive a restart: the other nodes would stop the restarted processes at once.
        raise ClusterConfigError(
            f"--max-restarts={args.max_restarts} restarts one node's processes in place, which a job of "
            f"{node.num_nodes} nodes cannot do (DDP needs every rank): restart the whole gang instead (the "
            "volt operator does, failurePolicy.maxRestarts), or use --max-restarts 0"
        )
    if args.rdzv_timeout <= 0 or args.grace_period <= 0:
        raise ClusterConfigError("--rdzv-timeout and --grace-period must be > 0 seconds")
    return LaunchPlan(
        node=node,
        nproc_per_node=nproc,
        command=_normalize_command(args.command),
        run_id=run_id,
        rdzv_timeout=args.rdzv_timeout,
        grace_period=args.grace_period,
        max_restarts=args.max_restarts,
    )


# --- the rendezvous store -----------------------------------------------------------

#: Node 0 writes its run id (``<job>-<attempt>``) here as soon as its store is up.
_OWNER_KEY = "volt/owner"
#: How long a new connection waits for that key before taking the store for someone else's.
_OWNER_WAIT_S = 5.0
_CONNECT_ATTEMPT_S = 10.0


def _host_store(plan: LaunchPlan) -> Any:
    """Node 0: listen on MASTER_PORT (every interface) and sign the store with our run id.

    The server's own client connects over loopback: node 0 resolving its own DNS
    name could get a stale record (a previous attempt's pod) and fail to start.
    """
    from torch.distributed import TCPStore

    node = plan.node
    try:
        store = TCPStore("127.0.0.1", node.master_port, None, True, timedelta(seconds=plan.rdzv_timeout),
                         wait_for_workers=False, multi_tenant=True)
    except Exception as err:  # DistNetworkError, socket errors
        raise RendezvousTimeout(f"node 0 could not listen on port {node.master_port} ({err})") from err
    store.set(_OWNER_KEY, plan.run_id)
    return store


def _resolve(host: str, port: int) -> List[str]:
    """Every address ``host`` has now, in resolver order (empty if it does not resolve yet)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return list(dict.fromkeys(info[4][0] for info in infos))


def _store_owner(store: Any, wait_s: float) -> Optional[str]:
    """The run id node 0 signed ``store`` with, waiting up to ``wait_s`` for it; None if unsigned."""
    deadline = time.monotonic() + wait_s
    while not store.check([_OWNER_KEY]):
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)
    return store.get(_OWNER_KEY).decode()


def _join_store(plan: LaunchPlan) -> "tuple[Any, str]":
    """Other nodes: connect to node 0's store *of this run*, returning it and its address.

    A gang restart recreates node 0 under the same DNS name. Until every resolver
    forgets the old pod (CoreDNS caches answers; a local hosts file is rewritten
    when pods come and go), the name can lead to the previous attempt's node 0,
    still shutting down, whose store holds a completed roll call. Joining it would
    start this attempt's workers against a store that then vanishes, and they fail
    as "peer lost" a while later. So: resolve afresh, connect to each address, and
    keep only the store signed with our run id; retry until the rendezvous timeout.
    """
    from torch.distributed import TCPStore

    node = plan.node
    deadline = time.monotonic() + plan.rdzv_timeout
    strangers: Dict[str, str] = {}  # address -> run id of the store found there
    last_error: Optional[BaseException] = None
    while True:
        for address in _resolve(node.master_addr, node.master_port):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                store = TCPStore(address, node.master_port, None, False,
                                 timedelta(seconds=min(left, _CONNECT_ATTEMPT_S)), wait_for_workers=False)
                owner = _store_owner(store, min(left, _OWNER_WAIT_S))
            except Exception as err:  # not listening yet, or it went away while we asked
                last_error = err
                continue
            if owner == plan.run_id:
                store.set_timeout(timedelta(seconds=plan.rdzv_timeout))
                return store, address
            if strangers.get(address) != owner:
                log.warning(
                    "%s:%d is node 0 of run %r, not of this run %r (a previous attempt still shutting down, "
                    "or a stale DNS record): waiting for ours", address, node.master_port, owner, plan.run_id,
                )
            strangers[address] = str(owner)
            del store
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    found = "; only found " + ", ".join(f"{a} (run {r})" for a, r in strangers.items()) if strangers else ""
    cause = f" ({last_error})" if last_error is not None and not strangers else ""
    raise RendezvousTimeout(
        f"node 0 (MASTER_ADDR={node.master_addr}, MASTER_PORT={node.master_port}) of run {plan.run_id!r} did "
        f"not come up within {plan.rdzv_timeout:.0f} s; this is node {node.node_rank} of {node.num_nodes}"
        f"{found}{cause}"
    )


# --- rendezvous with a roll call ----------------------------------------------------


def _wait_for_any(store: Any, keys: List[str], deadline: float) -> Optional[str]:
    """Poll ``store`` until one of ``keys`` exists (returns it) or ``deadline`` passes."""
    while True:
        for key in keys:
            try:
                if store.check([key]):
                    return key
            except Exception as err:  # node 0's store went away
                raise RendezvousTimeout(f"node 0 left during the roll call ({err})") from err
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _make_rendezvous_handler(plan: LaunchPlan) -> Any:
    """A static TCP rendezvous (node 0 hosts the store) that names missing nodes."""
    from torch.distributed import PrefixStore
    from torch.distributed.elastic.rendezvous import RendezvousHandler, RendezvousInfo, RendezvousStoreInfo

    class RollCallRendezvous(RendezvousHandler):
        def __init__(self) -> None:
            self._store: Optional[Any] = None
            self.prefixed: Optional[Any] = None
            # Where this node's workers reach the store: the address the owner check
            # passed (a name could resolve elsewhere later); node 0's is its own.
            self.store_address = "127.0.0.1"

        def get_backend(self) -> str:
            return RDZV_BACKEND

        @property
        def use_agent_store(self) -> bool:
            return True

        def _connect(self) -> Any:
            if plan.node.node_rank == 0:
                return _host_store(plan)
            store, self.store_address = _join_store(plan)
            return store

        def _roll_call(self, store: Any) -> None:
            node = plan.node
            deadline = time.monotonic() + plan.rdzv_timeout
            store.set(f"volt/rollcall/{node.node_rank}", socket.gethostname())
            if node.node_rank == 0:
                missing = list(range(node.num_nodes))
                while True:
                    missing = [r for r in missing if not store.check([f"volt/rollcall/{r}"])]
                    if not missing or time.monotonic() >= deadline:
                        break
                    time.sleep(0.05)
                if missing:
                    message = (
                        f"node rank(s) {missing} of NUM_NODES={node.num_nodes} did not join within "
                        f"{plan.rdzv_timeout:.0f} s (joined: "
                        f"{sorted(set(range(node.num_nodes)) - set(missing))})"
                    )
                    store.set("volt/rollcall/abort", message)
                    time.sleep(1.0)  # keep the store up so the joined nodes can read why
                    raise RendezvousTimeout(message)
                store.set("volt/rollcall/go", "1")
                return
            found = _wait_for_any(store, ["volt/rollcall/go", "volt/rollcall/abort"], deadline)
            if found is None:
                raise RendezvousTimeout(f"node 0 did not confirm the roll call within {plan.rdzv_timeout:.0f} s")
            if found.endswith("abort"):
                raise RendezvousTimeout(store.get("volt/rollcall/abort").decode())

        def next_rendezvous(self) -> Any:
            if self._store is None:
                store = self._connect()
                self._roll_call(store)
                self._store = store
                self.prefixed = PrefixStore(plan.run_id, store)
            bootstrap = RendezvousStoreInfo(self.store_address, plan.node.master_port)
            return RendezvousInfo(self.prefixed, plan.node.node_rank, plan.node.num_nodes, bootstrap)

        @property
        def raw_store(self) -> Optional[Any]:
            return self._store

        def is_closed(self) -> bool:
            return False

        def set_closed(self) -> None:
            pass

        def num_nodes_waiting(self) -> int:
            return 0

        def get_run_id(self) -> str:
            return plan.run_id

        def shutdown(self) -> bool:
            return True

    return RollCallRendezvous()


# --- the agent ---------------------------------------------------------------------


class _Supervisor:
    """Shared state between the agent's monitor, the peer watcher and the SIGTERM handler."""

    def __init__(self, plan: LaunchPlan) -> None:
        self.plan = plan
        self.sigterm_at: Optional[float] = None
        self.peer_report: Optional[Dict[str, Any]] = None  # the first failure another node reported
        self.peer_root_cause: Optional[Dict[str, Any]] = None  # the first one that was not PEER_LOST
        self.peer_report_seen_at: Optional[float] = None
        self.store_lost = False
        self.own_failure_reported = False
        self.stopped_for_peer = False  # we killed our workers because another node failed
        self.stopping = threading.Event()  # the workers are done: the peer watcher ends
        self.finished = threading.Event()  # our exit code is decided
        self.linger_over = threading.Event()  # SIGTERM after that: node 0 stops keeping the store up

    def should_stop_for_peer(self, now: float) -> bool:
        return should_stop_for_peer(
            self.peer_report, self.peer_root_cause, self.store_lost,
            0.0 if self.peer_report_seen_at is None else now - self.peer_report_seen_at,
        )


def should_stop_for_peer(
    report: Optional[Mapping[str, Any]],
    root_cause: Optional[Mapping[str, Any]],
    store_lost: bool,
    report_age_s: float,
) -> bool:
    """Whether a healthy node kills its workers because of what other nodes reported.

    * A root cause (a code other than PEER_LOST and CHECKPOINTED) stops us at once.
    * A PEER_LOST report is only a consequence: the node whose rank really failed
      may still be exiting (a rank's sockets close before its interpreter ends).
      Killing its rank now would replace its own exit code with our SIGKILL, so
      wait ``PEER_LOST_GRACE_S``; our own ranks usually exit PEER_LOST by themselves
      well before (gloo sees the closed connection).
    * A CHECKPOINTED report: our ranks take part in the same save and exit 75 themselves.
    * Node 0's store vanished with nothing reported: node 0 is gone, stop at once.
      After a report the store going away only means that node 0 exited; the
      report decides.
    """
    if root_cause is not None:
        return True
    if report is not None:
        return report.get("exitcode") == exit_codes.PEER_LOST and report_age_s >= PEER_LOST_GRACE_S
    return store_lost


def _make_agent(plan: LaunchPlan, supervisor: _Supervisor, log_dir: str) -> Any:
    from torch.distributed.elastic.agent.server.api import WorkerSpec, WorkerState
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std

    rdzv = _make_rendezvous_handler(plan)

    class VoltAgent(LocalElasticAgent):
        def worker_pids(self) -> List[int]:
            return list(self._pcontext.pids().values()) if self._pcontext is not None else []

        def _kill_workers(self, sig: int) -> None:
            for pid in self.worker_pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

        def _monitor_workers(self, worker_group: Any) -> Any:
            result = super()._monitor_workers(worker_group)
            if result.state == WorkerState.FAILED and self._pcontext is not None:
                describe_uncaught_errors(result.failures, self._pcontext.stderrs)
            if result.state == WorkerState.FAILED and not supervisor.own_failure_reported:
                supervisor.own_failure_reported = True
                _report_failure(rdzv.raw_store, plan, supervisor, result)
            if result.state == WorkerState.HEALTHY and not supervisor.stopped_for_peer and (
                supervisor.should_stop_for_peer(time.monotonic())
            ):
                peer = supervisor.peer_root_cause or supervisor.peer_report
                if peer is None:
                    log.error("node 0's store is gone (node 0 left): stopping this node's workers")
                else:
                    log.error(
                        "node %s rank %s failed (exit code %s): stopping this node's workers",
                        peer.get("node"), peer.get("rank"), peer.get("exitcode"),
                    )
                supervisor.stopped_for_peer = True
                self._kill_workers(signal.SIGKILL)
            return result

    spec = WorkerSpec(
        role="trainer",
        local_world_size=plan.nproc_per_node,
        entrypoint=plan.command[0],
        args=tuple(plan.command[1:]),
        rdzv_handler=rdzv,
        max_restarts=plan.max_restarts,
        monitor_interval=0.1,
        master_addr=None,
        master_port=None,
    )
    # Each worker's stdout/stderr goes to a file in log_dir and is copied to ours line by line with
    # its global rank in front (the ranks of a node would interleave unlabelled otherwise).
    logs = DefaultLogsSpecs(log_dir=log_dir, tee=Std.ALL)
    # A node that succeeded waits here for the others (node 0 keeps the store up meanwhile):
    # as long as nodes may take to arrive, not torch's 60 s, so that one node's rank-local
    # work after fit() does not find the store gone and count as node 0's death.
    options: dict = dict(spec=spec, logs_specs=logs, start_method="spawn",
                         exit_barrier_timeout=max(60, int(plan.rdzv_timeout)))
    if "log_line_prefix_template" in inspect.signature(LocalElasticAgent.__init__).parameters:
        options["log_line_prefix_template"] = RANK_PREFIX_TEMPLATE
    if "shutdown_timeout" in inspect.signature(LocalElasticAgent.__init__).parameters:  # torch >= 2.12
        options["shutdown_timeout"] = int(plan.grace_period)
    agent = VoltAgent(**options)
    agent.rdzv = rdzv
    return agent


def _worker_codes(result: Any) -> List[int]:
    """The failed workers' exit codes in the order the agent saw them (signal N as 128 + N).

    Failure timestamps are whole seconds; the sort is stable, and the agent records
    the failures it found before stopping the rest first, so ties keep that order.
    A worker that had recorded its exit code (``termination.exit_for_error``) and was
    then stopped by the agent before it exited counts with that code: it chose it first-hand.
    """
    if result is None:
        return []
    failures = sorted(result.failures.values(), key=lambda f: f.timestamp)
    codes = []
    for failure in failures:
        code = failure.exitcode if failure.exitcode >= 0 else exit_codes.from_signal(-failure.exitcode)
        intended = termination.intended_exit_code(failure.error_file_data)
        codes.append(intended if intended is not None and code >= 128 else code)
    return codes


def _node_code(result: Any, supervisor: _Supervisor, rendezvous_failed: bool = False) -> int:
    return exit_codes.node_exit_code(
        _worker_codes(result),
        failed=result is None or result.is_failed(),
        sigterm=supervisor.sigterm_at is not None,
        stopped_for_peer=supervisor.stopped_for_peer,
        rendezvous_failed=rendezvous_failed,
    )


def _report_failure(store: Any, plan: LaunchPlan, supervisor: _Supervisor, result: Any) -> None:
    """Tell the other nodes that ours failed, and whether first-hand (a root cause) or not.

    ``_FAILED_KEY`` takes the first report of any kind; ``_ROOT_CAUSE_KEY`` the first
    that is neither PEER_LOST nor CHECKPOINTED. First writer wins on each.
    Our own exit code never depends on what others wrote (``exit_codes.node_exit_code``).
    """
    if store is None:
        return
    failures = result.failures
    rank = min(failures, key=lambda r: failures[r].timestamp) if failures else None
    code = _node_code(result, supervisor)
    value = json.dumps({"node": plan.node.node_rank, "rank": rank, "exitcode": code})
    consequence = code in (exit_codes.PEER_LOST, exit_codes.CHECKPOINTED)  # 75: every node saves and exits 75
    keys = [_FAILED_KEY] if consequence else [_FAILED_KEY, _ROOT_CAUSE_KEY]
    for key in keys:
        try:
            store.compare_set(key, "", value)
        except Exception:  # node 0's store may be gone already
            return


def _watch_peers(agent: Any, supervisor: _Supervisor) -> None:
    """Poll the store for other nodes' failure reports; a vanished store (node 0 gone) is one too."""
    misses = 0
    me = supervisor.plan.node.node_rank
    while not supervisor.stopping.wait(0.5):
        store = agent.rdzv.raw_store
        if store is None:
            continue
        try:
            for key in (_FAILED_KEY, _ROOT_CAUSE_KEY):
                if store.check([key]):
                    report = json.loads(store.get(key).decode())
                    if report.get("node") == me:
                        continue
                    if key == _ROOT_CAUSE_KEY:
                        supervisor.peer_root_cause = report
                    elif supervisor.peer_report is None:
                        supervisor.peer_report_seen_at = time.monotonic()
                        supervisor.peer_report = report
                        log.warning("node %s rank %s reported exit code %s", report.get("node"),
                                    report.get("rank"), report.get("exitcode"))
            misses = 0
        except Exception:
            misses += 1
            if misses >= 6 and me != 0:
                supervisor.store_lost = True


def run(plan: LaunchPlan) -> int:
    """Run this node's workers to completion; return the process exit code."""
    supervisor = _Supervisor(plan)
    os.environ[ENV_LAUNCHER] = VOLT_RUN  # the workers' contract: who started them, and their grace period
    os.environ.setdefault(ENV_GRACE_PERIOD, str(plan.grace_period))
    # torch's agent turns these into an exception; SIGTERM is ours (forward, then wait).
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = "SIGINT,SIGHUP,SIGQUIT"
    log_dir = tempfile.mkdtemp(prefix="volt-run-")  # the agent's per-worker error files
    agent = _make_agent(plan, supervisor, log_dir)

    def on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
        if supervisor.finished.is_set():
            supervisor.linger_over.set()  # the exit code is decided; only stop keeping the store up
            return
        if supervisor.sigterm_at is not None:
            return
        supervisor.sigterm_at = time.monotonic()
        if not agent.worker_pids():
            raise SystemExit(exit_codes.from_signal(signal.SIGTERM))  # nothing started yet: nothing to save
        log.warning("SIGTERM: forwarding to workers, %.0f s grace period", plan.grace_period)
        agent._kill_workers(signal.SIGTERM)

        def expire() -> None:
            log.error("workers still running %.0f s after SIGTERM: killing them", plan.grace_period)
            agent._kill_workers(signal.SIGKILL)

        timer = threading.Timer(plan.grace_period, expire)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_sigterm)
    watcher = threading.Thread(target=_watch_peers, args=(agent, supervisor), daemon=True, name="volt-peer-watch")
    watcher.start()
    log.info(
        "node %d/%d: %d process(es), world size %d, master %s:%d",
        plan.node.node_rank, plan.node.num_nodes, plan.nproc_per_node, plan.world_size,
        plan.node.master_addr, plan.node.master_port,
    )
    result = None
    try:
        result = agent.run()
    except RendezvousTimeout as err:
        log.error("rendezvous failed: %s", err)
        return _node_code(None, supervisor, rendezvous_failed=True)
    except Exception as err:
        cause = err
        while cause is not None and not isinstance(cause, RendezvousTimeout):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            log.error("rendezvous failed: %s", cause)
            return _node_code(None, supervisor, rendezvous_failed=True)
        raise
    finally:
        supervisor.stopping.set()
        # A daemon thread still inside a store call when the interpreter exits makes
        # the C++ store abort the process (SIGABRT instead of our exit code) once
        # node 0, which hosts the store, is gone.
        watcher.join(timeout=5.0)
        shutil.rmtree(log_dir, ignore_errors=True)
    code = _node_code(result, supervisor)
    supervisor.finished.set()
    if code == exit_codes.USER_ERROR:
        _explain_failure(result)
    log.log(logging.INFO if code == 0 else logging.ERROR, "exit %d: %s", code, exit_codes.describe(code))
    _check_out(agent.rdzv.raw_store, supervisor, code)
    return code


#: How much of a failed worker's stderr is searched for its traceback.
_STDERR_TAIL_BYTES = 64 * 1024


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - _STDERR_TAIL_BYTES))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def describe_uncaught_errors(failures: Mapping[int, Any], stderrs: Mapping[int, str]) -> None:
    """Give each failed worker that recorded no error the line its printed traceback describes.

    The Trainer records its exceptions (``volt.termination.record_error``); a script
    that raises outside it (at import, in module-level data loading) only prints a
    traceback to stderr, which torch's agent keeps in a file per local rank. Reading
    it makes such a failure ``KeyError: 'label' at train.py:12 in <module> (global rank 1)``
    too. ``failures`` maps global ranks to torch's ``ProcessFailure``; signals are skipped.
    """
    for rank, failure in failures.items():
        if failure.exitcode <= 0 or termination.recorded_error(failure.error_file_data):
            continue
        path = stderrs.get(failure.local_rank)
        message = termination.describe_traceback(_tail(path), rank) if path and os.path.isfile(path) else ""
        if message:
            # A new dict: torch shares one placeholder among every worker without an error file.
            failure.error_file_data = {"message": {"message": message,
                                                   "extraInfo": {"timestamp": str(failure.timestamp)}}}
            failure.message = message


def root_cause_message(result: Any) -> str:
    """The exception the first failing worker recorded (``volt.termination.record_error``), or ``""``.

    Workers that only reacted to it (PEER_LOST, a checkpointed exit, a signal) come last.
    """
    if result is None:
        return ""
    reactions = (exit_codes.PEER_LOST, exit_codes.CHECKPOINTED)
    failures = sorted(result.failures.values(),
                      key=lambda f: (f.exitcode in reactions or f.exitcode < 0, f.timestamp))
    for failure in failures:
        message = termination.recorded_error(failure.error_file_data)
        if message:
            return message
    return ""


def _explain_failure(result: Any) -> None:
    """Leave the failing rank's exception as the container's termination message (the operator's
    ``lastFailure.message``), and say it here, where the workers' tracebacks scrolled by."""
    message = root_cause_message(result)
    if message:
        log.error("root cause: %s", message)
        termination.write_termination_text(message)


def _check_out(store: Any, supervisor: _Supervisor, code: int) -> None:
    """Tell node 0 this node is done; on node 0, keep the store up until every node is.

    Node 0's ``volt-run`` hosts the store. Leaving right after its own failure
    would take its report with it, and a node that then finds the store gone
    with nothing reported must assume node 0 vanished and kill its ranks at once,
    maybe before its own failing rank has exited with its own code. A successful
    run needs none of this (torch's exit barrier already waits for every node),
    nor a checkpointed one (every node saves and exits 75 together). Bounded by
    ``_STORE_LINGER_S``, under the operator's 15 s wait for a root cause after a 76.
    """
    if store is None:
        return
    node = supervisor.plan.node
    try:
        store.set(f"volt/done/{node.node_rank}", str(code))
        if node.node_rank != 0 or node.num_nodes == 1 or code in (exit_codes.SUCCESS, exit_codes.CHECKPOINTED):
            return
        if supervisor.sigterm_at is not None:
            return  # the pod is being deleted: its grace period is not ours to spend
        keys = [f"volt/done/{rank}" for rank in range(1, node.num_nodes)]
        deadline = time.monotonic() + _STORE_LINGER_S
        while not store.check(keys) and time.monotonic() < deadline:
            if supervisor.linger_over.wait(0.2):
                return
    except Exception:  # best effort: a store that is gone has nothing to keep up
        pass


def build_parser() -> argparse.ArgumentParser:
    job = job_contract()  # the TrainingJob's timeouts are the defaults of the flags
    parser = argparse.ArgumentParser(
        prog="volt-run",
        description="Start this node's volt training processes (torch elastic agent, static rendezvous).",
        epilog="Exit codes: " + "; ".join(
            f"{c} {exit_codes.describe(c)}" for c in (0, 1, 75, 76, 77, 78, 79, 80)
        ),
    )
    parser.add_argument("--nproc-per-node", "--nproc_per_node", type=int, default=None,
                        help="processes on this node (default: PET_NPROC_PER_NODE, VOLT_TRAINER devices, 1)")
    parser.add_argument("--nnodes", type=int, default=None, help="number of nodes (default: NUM_NODES or 1)")
    parser.add_argument("--node-rank", type=int, default=None, help="this node's rank (default: NODE_RANK or 0)")
    parser.add_argument("--master-addr", default=None, help="node 0's address (default: MASTER_ADDR)")
    parser.add_argument("--master-port", type=int, default=None, help="rendezvous port (default: MASTER_PORT)")
    parser.add_argument("--rdzv-timeout", type=float,
                        default=job.rendezvous_timeout_s or _DEFAULT_RDZV_TIMEOUT,
                        help="seconds to wait for all nodes (default: VOLT_RENDEZVOUS_TIMEOUT or 300)")
    parser.add_argument("--grace-period", type=float,
                        default=job.grace_period_s or _DEFAULT_GRACE_PERIOD,
                        help="seconds between SIGTERM and killing the workers (default: VOLT_GRACE_PERIOD_S or 25)")
    parser.add_argument("--max-restarts", type=int, default=0,
                        help="in-place worker group restarts (default 0: the operator restarts the gang)")
    parser.add_argument("--run-id", default=None, help="rendezvous id (default: VOLT_JOB_NAME-VOLT_ATTEMPT)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the training command")
    return parser


def _import_torch_quietly() -> None:
    """Import torch with c10's C++ warnings off in this agent only (they dump stack frames
    for every expected store retry); workers inherit the user's setting."""
    previous = os.environ.get("TORCH_CPP_LOG_LEVEL")
    os.environ["TORCH_CPP_LOG_LEVEL"] = "FATAL"
    try:
        import torch  # noqa: F401
    finally:
        if previous is None:
            del os.environ["TORCH_CPP_LOG_LEVEL"]
        else:
            os.environ["TORCH_CPP_LOG_LEVEL"] = previous


def main(argv: Optional[Sequence[str]] = None) -> int:
    _import_torch_quietly()
    logging.basicConfig(level=logging.INFO, format="[volt-run %(levelname)s] %(message)s", stream=sys.stderr)
    for noisy in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args = build_parser().parse_args(argv)
        plan = plan_launch(args, os.environ)
    except (ClusterConfigError, ValueError) as err:
        log.error("%s", err)
        return exit_codes.CONFIG_ERROR
    return run(plan)


def relaunch_argv() -> List[str]:
    """The command that re-runs the current script, for ``Trainer(devices=N)`` without a launcher."""
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        name = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return [sys.executable, "-m", name, *sys.argv[1:]]
    return [sys.executable, os.path.abspath(sys.argv[0]), *sys.argv[1:]]


def exec_under_volt_run(nproc_per_node: int, num_nodes: int) -> None:
    """Replace this process with ``volt-run`` running the same script ``nproc_per_node`` times."""
    argv = [sys.executable, "-m", "volt.launch", "--nproc-per-node", str(nproc_per_node), "--nnodes",
            str(num_nodes), "--", *relaunch_argv()]
    if num_nodes == 1 and "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())
    log.info("devices=%d without a launcher: re-running under volt-run", nproc_per_node)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
