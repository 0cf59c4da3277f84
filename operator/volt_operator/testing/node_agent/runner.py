"""Runs the containers of one pod as local process groups inside its netns.

Each container is `ip netns exec <netns> unshare --uts python -I -S sandbox.py
<spec> <command...>` started in its own session, so its pid is its process
group: deletion signals the whole group (SIGTERM, then SIGKILL after the grace
period) and anything left in the group when the main process exits is killed,
as the end of a container's pid namespace would. stdout and stderr go to one
log file per container start (`logs/<container>/<restartCount>.log`).
Init containers run one after another before the containers; exited
containers restart under the pod's restartPolicy with the kubelet's doubling
back-off.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from .podenv import EnvError, Lookup, expand, resolve_env
from .status import (RUNNING, TERMINATED, WAITING, ContainerRecord, PodRecord, Termination,
                     exit_code_of, will_restart)
from .volumes import Mount, VolumeError, container_mounts

log = logging.getLogger(__name__)

SANDBOX = Path(__file__).with_name("sandbox.py")
MAX_BACKOFF_S = 300.0
HOST_DIRS_LOCK = Path("/run/volt-node-agent/host-dirs.lock")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def host_base_env(hostname: str) -> dict[str, str]:
    """The "image" environment: the agent's own Python environment first on PATH.

    Pods run on the host's Python (no images), so `python` and `volt-run`
    must resolve to the venv the agent runs from. Nothing else of the agent's
    environment leaks in (notably not KUBECONFIG): pods get no API credentials.
    """
    path = [os.path.dirname(sys.executable)]
    path += [p for p in os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":") if p not in path]
    env = {"PATH": ":".join(path), "HOME": "/root", "HOSTNAME": hostname}
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "LANG", "LC_ALL", "TZ"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def resolve_executable(name: str, env: Mapping[str, str]) -> str | None:
    if "/" in name:
        return name  # a path: checked by exec inside the container's mounts
    return shutil.which(name, path=env.get("PATH", ""))


# The engine writes its final progress to the file this variable names (see builders.py).
TERMINATION_ENV = "VOLT_TERMINATION_MESSAGE_PATH"
MAX_TERMINATION_MESSAGE_BYTES = 4096


class HostDirs:
    """Mount targets and working dirs the agent had to create on the host.

    A bind mount needs an existing target, and the pods share the host's
    filesystem; the agent creates missing ones and records them in a file so
    that shutdown (or the next start after a crash) removes them, once no pod
    can be using them.
    """

    def __init__(self, record_file: Path, lock_file: Path = HOST_DIRS_LOCK) -> None:
        self.record_file = record_file
        self.lock_file = lock_file
        self._lock = threading.Lock()

    def hold_shared(self) -> int:
        """A shared lock (its fd) that keeps every agent's `remove_all` waiting.

        Held from creating a container's mount targets until its sandbox has
        mounted on them (the sandbox inherits the fd and closes it then), so no
        cleanup can rmdir a target between the mkdir and the mount.
        """
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd

    def _load(self) -> list[str]:
        try:
            return json.loads(self.record_file.read_text())
        except (FileNotFoundError, ValueError):
            return []

    def ensure_dir(self, path: str) -> None:
        if os.path.exists(path):
            return
        with self._lock:
            created = self._load()
            missing = []
            probe = Path(path)
            while not probe.exists():
                missing.append(str(probe))
                probe = probe.parent
            os.makedirs(path, exist_ok=True)
            created.extend(p for p in missing if p not in created)
            self.record_file.write_text(json.dumps(created))

    def remove_all(self) -> None:
        if not self._load():
            return
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a") as exclusive, self._lock:
            fcntl.flock(exclusive, fcntl.LOCK_EX)  # no sandbox is between mkdir and mount
            created = self._load()
            # rmdir of a directory that is a mount point in another mount
            # namespace succeeds and silently detaches that mount: a pod of
            # another agent using the same mountPath would then write to the
            # host. So keep every directory some process still mounts on.
            busy = mount_points_in_use()
            for path in sorted(created, key=lambda p: p.count("/"), reverse=True):  # deepest first
                if os.path.realpath(path) in busy:
                    log.info("left %s in place: another pod mounts on it", path)
                    continue
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError:
                    log.warning("left %s in place (not empty)", path)
            self.record_file.unlink(missing_ok=True)


def mount_points_in_use() -> set[str]:
    """Every mount point of every mount namespace on the machine (one read per namespace)."""
    seen_namespaces: set[str] = set()
    points: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            namespace = os.readlink(proc / "ns" / "mnt")
            if namespace in seen_namespaces:
                continue
            seen_namespaces.add(namespace)
            mountinfo = (proc / "mountinfo").read_text()
        except OSError:  # the process is gone, or not ours to read
            continue
        for line in mountinfo.splitlines():
            fields = line.split()
            if len(fields) > 4:
                # The kernel writes space, tab, newline and backslash as octal escapes.
                points.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    return points


@dataclass
class Container:
    spec: dict[str, Any]
    record: ContainerRecord
    is_init: bool
    process: subprocess.Popen[bytes] | None = None
    not_before: float = 0.0
    kill_deadline: float | None = None
    pod_done: bool = False


# on_event(type, reason, message, container): see events.py
EventSink = Callable[[str, str, str, "str | None"], None]


def _no_events(kind: str, reason: str, message: str, container: str | None) -> None:
    pass


@dataclass
class PodContext:
    """What the runner needs to start containers, resolved by the agent."""

    pod: dict[str, Any]
    pod_dir: Path
    netns: str
    volume_paths: dict[str, str]
    lookup: Lookup
    node_allocatable: dict[str, str]
    host_dirs: HostDirs
    backoff_s: float = 10.0
    base_env: dict[str, str] = field(default_factory=dict)
    on_event: EventSink = _no_events
    # Per container name, variables the node adds before the pod's own env (GPUs).
    node_env: dict[str, dict[str, str]] = field(default_factory=dict)


class PodRuntime:
    """The processes of one pod and the record status.py turns into its status."""

    def __init__(self, context: PodContext, record: PodRecord) -> None:
        self.context = context
        self.record = record
        self.terminating = False
        spec = context.pod["spec"]
        self.restart_policy = spec.get("restartPolicy") or "Always"
        self.containers = [
            Container(c, ContainerRecord(c["name"], c.get("image", "")), is_init=True)
            for c in spec.get("initContainers") or []
        ] + [
            Container(c, ContainerRecord(c["name"], c.get("image", "")), is_init=False)
            for c in spec.get("containers") or []
        ]
        record.init_containers = [c.record for c in self.containers if c.is_init]
        record.containers = [c.record for c in self.containers if not c.is_init]
        self._lock = threading.Lock()

    @staticmethod
    def waiting_record(spec: Mapping[str, Any], reason: str, message: str | None) -> ContainerRecord:
        return ContainerRecord(spec["name"], spec.get("image", ""), waiting_reason=reason,
                               waiting_message=message)

    # -- queries ------------------------------------------------------------

    def log_path(self, container: str, restart: int) -> Path:
        return self.context.pod_dir / "logs" / container / f"{restart}.log"

    def container_record(self, name: str) -> ContainerRecord | None:
        return next((c.record for c in self.containers if c.record.name == name), None)

    def alive(self) -> bool:
        return any(c.process is not None for c in self.containers)

    def finished(self) -> bool:
        """No process left and none will start again."""
        if self.alive():
            return False
        if self.terminating:
            return True
        return all(c.pod_done for c in self.containers if not c.is_init) or self._init_failed()

    def _init_failed(self) -> bool:
        return any(c.is_init and c.pod_done and c.record.terminated is not None
                   and c.record.terminated.exit_code != 0 for c in self.containers)

    # -- the loop step ------------------------------------------------------

    def step(self) -> bool:
        """Reap exits, enforce kill deadlines, start what is due. True if anything changed."""
        with self._lock:
            changed = self._reap()
            changed |= self._enforce_deadlines()
            if not self.terminating:
                changed |= self._start_due()
            return changed

    def _reap(self) -> bool:
        changed = False
        for container in self.containers:
            process = container.process
            if process is None or process.poll() is None:
                continue
            _kill_group(process.pid, signal.SIGKILL)  # leftovers of the "container"
            exit_code = exit_code_of(process.returncode)
            record = container.record
            record.pid, container.process, container.kill_deadline = None, None, None
            restart = self._exited(container, Termination(
                exit_code, record.started_at, utcnow(), message=self._termination_message(record.name)))
            log.info("pod %s container %s exited %d%s", self._pod_name(), record.name, exit_code,
                     " (will restart)" if restart else "")
            changed = True
        return changed

    def _exited(self, container: Container, termination: Termination) -> bool:
        """Record a termination and apply the restart policy; True if it will restart."""
        record = container.record
        record.terminated, record.state = termination, TERMINATED
        if container.is_init:  # init containers are retried on failure unless Never
            restart = termination.exit_code != 0 and self.restart_policy != "Never"
        else:
            restart = will_restart(self.restart_policy, termination.exit_code)
        restart = restart and not self.terminating
        if not restart:
            container.pod_done = True
            return False
        delay = min(self.context.backoff_s * (2 ** record.restart_count), MAX_BACKOFF_S)
        container.not_before = time.monotonic() + delay
        record.last_terminated, record.terminated = record.terminated, None
        record.restart_count += 1
        record.state = WAITING
        record.waiting_reason = "CrashLoopBackOff"
        record.waiting_message = f"back-off {delay:.0f}s restarting failed container={record.name}"
        self.context.on_event("Warning", "BackOff",
                              f"Back-off restarting failed container {record.name}", record.name)
        return True

    def adopt(self, previous: Mapping[str, Any]) -> None:
        """Take over the container statuses a previous agent reported for this pod.

        Its processes died with it (the startup sweep kills what is left), so a
        container it reported running is now terminated (137, as if killed)
        and the restart policy decides, as a kubelet does for a container that
        died while it was down; finished containers stay finished.
        """
        reported = {s["name"]: s for s in (previous.get("initContainerStatuses") or [])
                    + (previous.get("containerStatuses") or [])}
        now = utcnow()
        with self._lock:
            for container in self.containers:
                status = reported.get(container.record.name) or {}
                state = status.get("state") or {}
                container.record.restart_count = int(status.get("restartCount") or 0)
                last = (status.get("lastState") or {}).get("terminated")
                if last:
                    container.record.last_terminated = Termination(
                        int(last.get("exitCode", 0)), parse_time(last.get("startedAt")),
                        parse_time(last.get("finishedAt")) or now, last.get("reason"), last.get("message"))
                if "running" in state:
                    started = parse_time(state["running"].get("startedAt"))
                    self._exited(container, Termination(
                        137, started, now, message="the node agent restarted and lost the process"))
                elif "terminated" in state:
                    done = state["terminated"]
                    self._exited(container, Termination(
                        int(done.get("exitCode", 0)), parse_time(done.get("startedAt")),
                        parse_time(done.get("finishedAt")) or now, done.get("reason"), done.get("message")))

    def _enforce_deadlines(self) -> bool:
        now = time.monotonic()
        for container in self.containers:
            if container.process is not None and container.kill_deadline is not None \
                    and now >= container.kill_deadline:
                log.info("pod %s container %s: grace period over, SIGKILL", self._pod_name(),
                         container.record.name)
                _kill_group(container.process.pid, signal.SIGKILL)
                container.kill_deadline = None
        return False

    def _start_due(self) -> bool:
        inits = [c for c in self.containers if c.is_init]
        for init in inits:
            if init.pod_done and init.record.terminated and init.record.terminated.exit_code == 0:
                continue
            if init.pod_done or init.process is not None:
                return False  # failed for good, or still running
            return self._maybe_start(init)
        changed = False
        for container in self.containers:
            if not container.is_init and container.process is None and not container.pod_done:
                changed |= self._maybe_start(container)
        return changed

    def _maybe_start(self, container: Container) -> bool:
        if time.monotonic() < container.not_before:
            return False
        if self.record.start_time is None:
            self.record.start_time = utcnow()
        self._start(container)
        return True

    def _start(self, container: Container) -> None:
        record, ctx = container.record, self.context
        try:
            env, argv, mounts, working_dir = self._launch_plan(container.spec)
        except (EnvError, VolumeError) as error:
            if record.waiting_message != str(error):
                ctx.on_event("Warning", "Failed", f"Error: {error}", record.name)
            record.state, record.waiting_reason = WAITING, "CreateContainerConfigError"
            record.waiting_message = str(error)
            self.record.config_error = str(error)
            container.not_before = time.monotonic() + self.context.backoff_s
            return
        self.record.config_error = None
        record.container_id = f"volt-local://{self.record.pod_ip}/{record.name}/{record.restart_count}"
        if resolve_executable(argv[0], env) is None:
            message = f'exec: "{argv[0]}": executable file not found in $PATH'
            self._start_failed(container, message)
            return
        spec_file = ctx.pod_dir / "containers" / f"{record.name}.json"
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        hostname = env.get("HOSTNAME", "")
        lock_fd = ctx.host_dirs.hold_shared()
        try:
            spec_file.write_text(json.dumps({
                "hostname": hostname,
                "workingDir": working_dir,
                "mounts": [m.to_spec() for m in mounts],
                "releaseFd": lock_fd,
            }))
            for mount in mounts:
                if os.path.isdir(mount.source):
                    ctx.host_dirs.ensure_dir(mount.target)
            if working_dir:
                ctx.host_dirs.ensure_dir(working_dir)
            log_file = self.log_path(record.name, record.restart_count)
            log_file.parent.mkdir(parents=True, exist_ok=True)
            command = ["ip", "netns", "exec", ctx.netns, "unshare", "--uts",
                       sys.executable, "-I", "-S", str(SANDBOX), str(spec_file), *argv]
            with open(log_file, "ab") as output:
                container.process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                    env=env, start_new_session=True, close_fds=True, pass_fds=(lock_fd,))
        finally:
            os.close(lock_fd)  # the sandbox's copy keeps the lock until it has mounted
        record.pid = container.process.pid
        record.state, record.started_at = RUNNING, utcnow()
        record.waiting_reason, record.waiting_message = "ContainerCreating", None
        ctx.on_event("Normal", "Started", f"Started container {record.name}", record.name)
        log.info("pod %s container %s started pid %d: %s", self._pod_name(), record.name,
                 record.pid, " ".join(argv))

    def _start_failed(self, container: Container, message: str) -> None:
        record = container.record
        now = utcnow()
        log_file = self.log_path(record.name, record.restart_count)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(message + "\n")
        self.context.on_event("Warning", "Failed", f"Error: {message}", record.name)
        self._exited(container, Termination(128, now, now, reason="StartError", message=message))
        if record.state == WAITING:
            record.waiting_message = message

    def _launch_plan(self, spec: dict[str, Any]) -> tuple[dict[str, str], list[str], list[Mount], str]:
        ctx = self.context
        pod = dict(ctx.pod)
        pod["status"] = dict(pod.get("status") or {}, podIP=self.record.pod_ip,
                             hostIP=self.record.host_ip,
                             podIPs=[{"ip": self.record.pod_ip}], hostIPs=[{"ip": self.record.host_ip}])
        base = {**ctx.base_env, **ctx.node_env.get(spec["name"], {})}
        env = resolve_env(pod, spec, base, ctx.lookup, ctx.node_allocatable)
        command = list(spec.get("command") or [])
        if not command:
            raise EnvError(f"container {spec['name']!r} has no command: the local node agent "
                           "runs no images, so there is no image entrypoint to fall back to")
        argv = [expand(part, env) for part in command + list(spec.get("args") or [])]
        mounts = container_mounts(spec, ctx.volume_paths)
        if TERMINATION_ENV in env:
            # A kubelet mounts a per-container file at terminationMessagePath; here the
            # containers share the host's /dev, so the engine is pointed at a file of its own.
            message_file = self.termination_message_path(spec["name"])
            message_file.parent.mkdir(parents=True, exist_ok=True)
            message_file.write_bytes(b"")
            env[TERMINATION_ENV] = str(message_file)
        return env, argv, mounts, spec.get("workingDir") or ""

    def termination_message_path(self, container_name: str) -> Path:
        return self.context.pod_dir / "containers" / f"{container_name}.termination-log"

    def _termination_message(self, container_name: str) -> str | None:
        """What the container left in its termination message file (at most 4 KiB, like a kubelet)."""
        try:
            with open(self.termination_message_path(container_name), "rb") as handle:
                data = handle.read(MAX_TERMINATION_MESSAGE_BYTES)
        except OSError:
            return None
        return data.decode("utf-8", "replace") or None

    # -- termination --------------------------------------------------------

    def terminate(self, grace_seconds: float) -> None:
        """SIGTERM every container's process group now, SIGKILL after `grace_seconds`."""
        with self._lock:
            if self.terminating:
                return
            self.terminating = True
            deadline = time.monotonic() + max(grace_seconds, 0)
            for container in self.containers:
                if container.process is not None:
                    self.context.on_event("Normal", "Killing", f"Stopping container {container.record.name}",
                                          container.record.name)
                    sig = signal.SIGTERM if grace_seconds > 0 else signal.SIGKILL
                    _kill_group(container.process.pid, sig)
                    container.kill_deadline = deadline
                elif container.record.state == WAITING:
                    container.pod_done = True

    def kill_now(self) -> None:
        with self._lock:
            self.terminating = True
            for container in self.containers:
                if container.process is not None:
                    _kill_group(container.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.alive() and time.monotonic() < deadline:
            self.step()
            time.sleep(0.05)

    def _pod_name(self) -> str:
        meta = self.context.pod["metadata"]
        return f"{meta['namespace']}/{meta['name']}"


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
