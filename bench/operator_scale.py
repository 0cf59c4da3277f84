"""The operator at scale: what it costs the API server, and how fast it reacts.

    python bench/operator_scale.py idle [--jobs 40,50] [--window 30] [--operator-src DIR]
    python bench/operator_scale.py kwok [--jobs 50] [--nodes 1000] [--window 30] [--apply-rate 0]
    (both: [--cluster-dir D] [--out FILE.json])

``kwok``: KWOK (``volt_operator/testing/kwok.py``) simulates ``--nodes`` nodes
and the lifecycle of the pods placed on them against the real local API
server. N TrainingJobs of 8 nodes each are applied at once (one kubectl call,
which POSTs them one after the other; or ``--apply-rate``
per second, as jobs arrive on a shared cluster); once every pod
runs and every job has settled, the operator's requests are counted over
``--window`` seconds (steady state); then one pod of every tenth job is killed
(exit 137), each such gang is restarted by the operator, and finally every pod
finishes (exit 0) and every job must read Succeeded. From the API server's
audit log: apply -> all 8 pods created (p50/p99), pod failure (KWOK's status
write) -> gang restart begun (the operator's first pod deletion; p50/p99),
requests per second at steady state and per restart, and the check that every
job's pods were created once per attempt (no duplicate) and every killed job
restarted (no missed failure), once, plus at most once per pod KWOK deleted
unasked (``simulator_deletes``: a late deletion by name that hit the next
attempt's pod of that name, which a loaded machine makes KWOK do; a deleted
pod of a gang that ran is a free restart, one deleted before its gang ran is
only created again). The split of apply -> pods created: apply -> the
operator's first status write for the job (waiting to be taken up), then
that write -> the 8th pod (the job's own requests); and the API server's
time on each of the operator's writes until then (audit: received -> response
complete), which tells a slow server from a slow operator. The operator's RSS (peak)
and CPU come from /proc. It exits non-zero when a check fails.

``idle``: starts the local control plane (no nodes), applies N suspended TrainingJobs
(no pods, nothing to do), starts the operator (`python -m volt_operator`, resync
every 3 s, its default) and, once every job reads Suspended and a warm-up
has passed, counts the operator's requests in the API server's audit log over
``--window`` seconds: requests per second in total, and the reads (get/list)
among them. The operator's requests are those with its user agents (the
reconciler's ``volt-operator``, kopf's ``kopf/...``; an operator from before the
reconciler named itself sends urllib3's ``python-urllib3/...``).

``--operator-src DIR`` runs the operator package from another checkout (DIR/operator),
to compare a change against what it replaces on the same machine and cluster.
``--cluster-dir D`` uses a running local cluster instead of starting one.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "trainer_image"), str(REPO / "tests")]

from operator_process import apply_crd, free_port, get_json, wait_until  # noqa: E402
from volt_operator.testing.cluster import LocalCluster  # noqa: E402
from volt_operator.testing.kwok import FAIL_ANNOTATION, FINISH_ANNOTATION, POD_PLACEMENT, Kwok  # noqa: E402

OPERATOR_AGENTS = ("volt-operator", "kopf/", "python-urllib3/")
WARM_UP_S = 10.0


def suspended_job(name: str) -> Dict[str, Any]:
    return {
        "apiVersion": "volt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {"image": "volt-trainer:bench", "command": ["python", "-c", "pass"], "suspend": True,
                 "trainer": {"numNodes": 8, "devices": 1, "accelerator": "cpu", "maxEpochs": 1}},
    }


def completed_requests(kube: LocalCluster) -> Iterator[Dict[str, Any]]:
    """Every completed request in the audit log (and the file it rotated into)."""
    return (event for event in kube.audit_events() if event.get("stage") == "ResponseComplete")


def is_operator(event: Dict[str, Any]) -> bool:
    return str(event.get("userAgent", "")).startswith(OPERATOR_AGENTS)


def operator_requests(kube: LocalCluster, start: str, end: str) -> List[Dict[str, Any]]:
    """The operator's completed requests received in [start, end) (audit timestamps)."""
    return [e for e in completed_requests(kube)
            if is_operator(e) and start <= e["requestReceivedTimestamp"] < end]


def audit_now(kube: LocalCluster) -> str:
    """The API server's clock as the audit log writes it (a request we make, then read back)."""
    marker = f"bench-clock-{time.monotonic_ns()}"
    kube.kubectl("get", "configmap", marker, "-n", "default", "--ignore-not-found")

    def stamp() -> Any:
        # From the end: the marker is among the last lines of a log that may be large.
        for line in reversed(kube.audit_log.read_text().splitlines()):
            if marker in line:
                return json.loads(line)["requestReceivedTimestamp"]
        return None

    return wait_until("the audit log to record our marker", stamp, 30, every=0.2)


def measure(kube: LocalCluster, jobs: int, window: float, operator_src: Path, log_dir: Path) -> Dict[str, Any]:
    namespace = f"idle-{jobs}-{secrets.token_hex(2)}"
    kube.kubectl("create", "namespace", namespace)
    kube.kubectl("apply", "-n", namespace, "-f", "-",
                 input=yaml.safe_dump_all([suspended_job(f"idle-{i}") for i in range(jobs)]))
    proc = start_operator(kube, namespace, operator_src, log_dir / f"operator-{jobs}.log")
    try:
        watch_jobs(kube, namespace, f"{jobs} jobs Suspended", 300, lambda st: len(st) == jobs and all(
            s.get("phase") == "Suspended" for s in st.values()))
        time.sleep(WARM_UP_S)  # let start-up reads (one per job) pass before the window
        start = audit_now(kube)
        time.sleep(window)  # the measurement itself: what happens in a quiet window
        end = audit_now(kube)
        time.sleep(1.0)  # the audit backend writes in batches; let the window's last one land
        events = operator_requests(kube, start, end)
        reads = [e for e in events if e["verb"] in ("get", "list")]
        by_kind: Dict[str, int] = {}
        for event in events:
            ref = event.get("objectRef") or {}
            kind = f"{event['verb']} {ref.get('resource', event.get('requestURI'))}"
            by_kind[kind] = by_kind.get(kind, 0) + 1
        return {"jobs": jobs, "window_s": window, "requests": len(events),
                "requests_per_s": round(len(events) / window, 3),
                "reads_per_s": round(len(reads) / window, 3), "by_verb_and_resource": by_kind}
    finally:
        stop_process(proc)
        kube.kubectl("delete", "namespace", namespace, "--wait=false")



# -- kwok ---------------------------------------------------------------------------------

NODES_PER_JOB = 8


def scale_job(name: str) -> Dict[str, Any]:
    """8 nodes on KWOK's nodes; restarts at once (no backoff), no stall clock (no /progress)."""
    return {
        "apiVersion": "volt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {"image": "volt-trainer:bench", "command": ["python", "-c", "pass"],
                 "trainer": {"numNodes": NODES_PER_JOB, "devices": 1, "accelerator": "cpu", "maxEpochs": 1},
                 "failurePolicy": {"backoffSeconds": 0, "maxRestarts": 3, "stallTimeoutSeconds": 0},
                 "template": dict(POD_PLACEMENT)},
    }


def seconds_between(start: str, end: str) -> float:
    """Seconds from one audit timestamp (RFC 3339, microseconds) to another."""
    def parse(stamp: str) -> float:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return parse(end) - parse(start)


def percentiles(values: List[float]) -> Dict[str, Optional[float]]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"p50": round(statistics.median(ordered), 3), "p99": round(p99, 3), "max": round(ordered[-1], 3)}


class ProcessSampler(threading.Thread):
    """RSS (peak) and CPU seconds of one process, from /proc every 0.5 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_rss_mib, self._stop = pid, 0.0, threading.Event()
        self.ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.ticks  # utime + stime

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.peak_rss_mib = max(self.peak_rss_mib, self.rss_mib())
            except (FileNotFoundError, ProcessLookupError):
                return

    def stop(self) -> None:
        self._stop.set()


def in_parallel(action: Callable[[str], Any], names: List[str]) -> None:
    """``action`` on every name, 8 at a time (one kubectl each: sequential would take minutes)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(action, names))


def start_operator(kube: LocalCluster, namespace: str, operator_src: Path, log_path: Path) -> subprocess.Popen:
    """The operator with its defaults (resync 3 s, progress 5 s), once its liveness answers."""
    env = kube.env()
    env["PYTHONPATH"] = os.pathsep.join([str(operator_src / "operator"), str(REPO / "trainer_image")])
    env.pop("VOLT_OPERATOR_RESYNC_SECONDS", None)
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "volt_operator", "--standalone", "--namespace", namespace,
             "--metrics-port", "-1", "--health-port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_until("the operator's liveness endpoint", healthy, 60)
    return proc


def stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def jobs_status(kube: LocalCluster, namespace: str) -> Dict[str, Dict[str, Any]]:
    return {j["metadata"]["name"]: (j.get("status") or {}) for j in get_json(kube, "-n", namespace, "tj")["items"]}


def jobs_path(namespace: str) -> str:
    return f"/apis/volt.dev/v1alpha1/namespaces/{namespace}/trainingjobs"


def watch_jobs(kube: LocalCluster, namespace: str, what: str, timeout: float,
               until: Callable[[Dict[str, Dict[str, Any]]], bool]) -> None:
    """Watch the namespace's TrainingJobs until ``until(status by job name)`` holds: one
    watch, not a LIST of every job each second (at 500 jobs, load the bench would add
    beside the operator it measures)."""
    kube.watch(jobs_path(namespace),
               lambda jobs: until({n: (j.get("status") or {}) for n, j in jobs.items()}), timeout, what)


def create_jobs(kube: LocalCluster, namespace: str, names: List[str], rate: float, timeout: float) -> float:
    """Create the jobs: all in one kubectl call (``rate`` 0), or one POST every ``1 / rate``
    seconds, as jobs arrive on a shared cluster (a POST that comes late is not made up
    for). Returns the rate achieved, in jobs per second."""
    started = time.monotonic()
    if rate <= 0:
        kube.kubectl("create", "-n", namespace, "-f", "-", timeout=timeout,
                     input=yaml.safe_dump_all([scale_job(n) for n in names]))
    else:
        path = jobs_path(namespace)
        with ThreadPoolExecutor(max_workers=8) as pool:  # one slow POST does not delay the next
            posts = []
            for index, name in enumerate(names):
                time.sleep(max(0.0, started + index / rate - time.monotonic()))  # the arrival schedule
                posts.append(pool.submit(kube.request, "POST", path, scale_job(name)))
            for post in posts:
                post.result()
    return round((len(names) - 1) / max(time.monotonic() - started, 1e-3), 1)  # arrivals' spacing


def measure_kwok(kube: LocalCluster, jobs: int, nodes: int, window: float, operator_src: Path,
                 work_dir: Path, timeout: float, apply_rate: float = 0.0) -> Dict[str, Any]:
    """The kwok scenario (module docstring); returns its figures and the checks' failures."""
    namespace = f"kwok-{jobs}-{secrets.token_hex(2)}"
    names = [f"j{i:04d}" for i in range(jobs)]
    killed = names[::10]
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    kube.kubectl("create", "namespace", namespace)
    # Pods are admitted once the namespace's default ServiceAccount exists.
    wait_until("the default ServiceAccount", lambda: kube.kubectl(
        "get", "serviceaccount", "default", "-n", namespace, check=False).returncode == 0, 60)
    kwok = Kwok(kube, nodes, work_dir).start(timeout=left())
    proc = start_operator(kube, namespace, operator_src, work_dir / f"operator-kwok-{jobs}.log")
    sampler = ProcessSampler(proc.pid)
    sampler.start()
    try:
        achieved_rate = create_jobs(kube, namespace, names, apply_rate, left())

        watch_jobs(kube, namespace, f"{jobs} jobs Running", left(), lambda st: len(st) == jobs and all(
            s.get("phase") == "Running" for s in st.values()))
        # Settled: every job has had its first /progress read (there is none: ProgressPolled
        # False is written once); after that nothing changes.
        watch_jobs(kube, namespace, "every job's first progress read", left(), lambda st: all(
            any(c["type"] == "ProgressPolled" for c in s.get("conditions") or []) for s in st.values()))
        cpu_before, start = sampler.cpu_seconds(), audit_now(kube)
        time.sleep(window)  # the steady-state window: what the operator does while nothing changes
        end, cpu_after = audit_now(kube), sampler.cpu_seconds()
        steady_rss = sampler.rss_mib()

        # Kill one pod (rank 1) of every tenth job; KWOK reports it Failed with exit 137.
        in_parallel(lambda name: kube.kubectl(
            "annotate", "-n", namespace, "pod", f"{name}-node-1", f"{FAIL_ANNOTATION}=true"), killed)

        # (at a later attempt too: see simulator_deletes)
        watch_jobs(kube, namespace, f"{len(killed)} gangs restarted and Running", left(), lambda st: all(
            st[n].get("attempt", 0) >= 1 and st[n].get("phase") == "Running" for n in killed))
        restart_end = audit_now(kube)
        # Every pod finishes; every job must succeed.
        in_parallel(lambda name: kube.kubectl(
            "annotate", "-n", namespace, "pods", "-l", f"volt.dev/job={name}", f"{FINISH_ANNOTATION}=true"), names)

        watch_jobs(kube, namespace, f"{jobs} jobs Succeeded", left(), lambda st: all(
            s.get("phase") == "Succeeded" for s in st.values()))
        final = jobs_status(kube, namespace)
        time.sleep(1.0)  # the audit backend writes in batches; let the last one land
        figures = audit_figures(kube, namespace, names, killed, (start, end), (end, restart_end))
        figures.update({
            "jobs": jobs, "nodes": nodes, "pods": jobs * NODES_PER_JOB, "window_s": window,
            # "At once" is one kubectl call, which POSTs the jobs one after the other, each
            # when the last was answered: its rate says how fast the API server took them.
            "apply": f"{apply_rate:g} per second" if apply_rate > 0 else "one kubectl call",
            "apply_rate_per_s": achieved_rate,
            "operator_cpu_percent_steady": round(100 * (cpu_after - cpu_before) / window, 1),
            "operator_cpu_seconds_total": round(sampler.cpu_seconds(), 1),
            "operator_rss_mib_steady": round(steady_rss, 1),
            "operator_rss_mib_peak": round(sampler.peak_rss_mib, 1),
            "load_average_1m_at_end": round(os.getloadavg()[0], 1),  # the machine's other work
        })
        simulator = figures.pop("simulator_deletes_by_job")
        for name in names:
            restarts, base = final[name].get("restarts", 0), int(name in killed)
            # A pod KWOK deleted unasked (below) is a pod deleted by someone: a free restart.
            if not base <= restarts <= base + simulator.get(name, 0):
                figures["problems"].append(
                    f"{name}: killed {base} time(s), {simulator.get(name, 0)} pod(s) deleted by the "
                    f"simulator, yet restarts={restarts} lastFailure={final[name].get('lastFailure')}")
            elif base and restarts == 1 and (final[name].get("lastFailure") or {}).get("exitCode") != 137:
                figures["problems"].append(f"{name}: lastFailure={final[name].get('lastFailure')}, not the kill")
            # A pod deleted before its gang ran is only created again (status.decide), not a
            # restart: each of KWOK's deletions that caused no restart may add one creation.
            gangs, recreated = NODES_PER_JOB * (1 + restarts), base + simulator.get(name, 0) - restarts
            if not gangs <= figures["pod_creations"].get(name, 0) <= gangs + recreated:
                figures["problems"].append(f"{name}: {figures['pod_creations'].get(name, 0)} pod creations "
                                           f"for {1 + restarts} attempt(s) of {NODES_PER_JOB} pods and "
                                           f"{recreated} pod(s) deleted by the simulator before a gang ran")
        del figures["pod_creations"]
        trace = figures.pop("pod_trace")
        flagged = sorted({problem.split(":")[0] for problem in figures["problems"]} & set(names))
        flagged += sorted(set(simulator) - set(flagged))[:3]  # a sample of KWOK's unasked deletions
        if flagged:
            figures["pod_traces"] = {name: trace.get(name, []) for name in flagged}
        return figures
    finally:
        sampler.stop()
        stop_process(proc)
        try:  # in the background: the pods of deleted nodes go with the pod garbage collector
            kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        finally:
            kwok.stop()


def audit_figures(kube: LocalCluster, namespace: str, names: List[str], killed: List[str],
                  steady: Tuple[str, str], restart: Tuple[str, str]) -> Dict[str, Any]:
    applied: Dict[str, str] = {}
    first_status: Dict[str, str] = {}  # the operator's first status write: when it took the job up
    created: Dict[str, List[Tuple[str, str]]] = {n: [] for n in names}  # job -> [(time, pod)]
    failed_at: Dict[str, str] = {}
    first_delete_after: Dict[str, str] = {}
    steady_requests = restart_requests = 0
    steady_reads = 0
    steady_by_kind: Dict[str, int] = {}
    # KWOK finishes a deletion by deleting the pod itself, by name; on a loaded machine it
    # can do that late, after the operator created the next attempt's pod of that name,
    # and so delete a pod nobody asked to delete (a free restart for the job, as any
    # deleted pod is). Counted per job: a deletion by KWOK with no deletion asked since
    # the pod of that name was created.
    asked: Dict[str, bool] = {}
    simulator_deletes: Dict[str, int] = {}
    pod_trace: Dict[str, List[str]] = {}  # job -> its pods' creations and deletions, for a failed check
    # The API server's time on each of the operator's writes before the steady window
    # (received -> response complete): what the operator waited on the server for,
    # as against its own time and its queue's.
    server_time: List[float] = []
    for event in completed_requests(kube):
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace:
            continue
        stamp, verb, code = event["requestReceivedTimestamp"], event["verb"], (event.get("responseStatus") or {}).get("code")
        name = ref.get("name") or ""
        job = name.rsplit("-node-", 1)[0]
        if is_operator(event):
            if stamp < steady[0] and verb not in ("get", "list", "watch") and "stageTimestamp" in event:
                server_time.append(seconds_between(stamp, event["stageTimestamp"]))
            if steady[0] <= stamp < steady[1]:
                steady_requests += 1
                steady_reads += verb in ("get", "list")
                kind = f"{verb} {ref.get('resource')}{'/' + ref['subresource'] if ref.get('subresource') else ''}"
                steady_by_kind[kind] = steady_by_kind.get(kind, 0) + 1
            if restart[0] <= stamp < restart[1]:
                restart_requests += 1
        if ref.get("resource") == "pods" and not ref.get("subresource") and code in (200, 201, 202):
            if verb in ("create", "delete"):
                pod_trace.setdefault(job, []).append(
                    f"{stamp} {verb} {name} by {event.get('userAgent', '').split(' ')[0]}")
            if verb == "create":
                asked[name] = False
            elif verb == "delete" and event.get("userAgent", "").startswith("kwok"):
                if not asked.get(name, True):
                    simulator_deletes[job] = simulator_deletes.get(job, 0) + 1
                asked[name] = False
            elif verb == "delete":
                asked[name] = True
        if ref.get("resource") == "trainingjobs" and verb == "create" and code == 201 and not ref.get("subresource"):
            applied[name] = stamp
        elif (ref.get("resource") == "trainingjobs" and ref.get("subresource") == "status"
              and is_operator(event) and name not in first_status):
            first_status[name] = stamp
        elif ref.get("resource") == "pods" and verb == "create" and code == 201 and is_operator(event):
            created.setdefault(job, []).append((stamp, name))
        elif (ref.get("resource") == "pods" and ref.get("subresource") == "status" and job in killed
              and name == f"{job}-node-1" and job not in failed_at and verb in ("patch", "update")
              and event.get("userAgent", "").startswith("kwok") and stamp > steady[1]):
            failed_at[job] = stamp  # KWOK's status write after the kill annotation: the failure
        elif (ref.get("resource") == "pods" and verb == "delete" and is_operator(event) and job in failed_at
              and job not in first_delete_after):
            first_delete_after[job] = stamp
    problems: List[str] = []
    to_created, to_taken_up, taken_up_to_created = [], [], []
    for name in names:
        stamps = sorted(created.get(name, []))
        first_gang = stamps[:NODES_PER_JOB]
        if name not in applied or len(first_gang) < NODES_PER_JOB:
            problems.append(f"{name}: applied={name in applied}, pods created={len(stamps)}")
            continue
        to_created.append(seconds_between(applied[name], first_gang[-1][0]))
        if name in first_status:  # the split: waiting for the operator, then its own work
            to_taken_up.append(seconds_between(applied[name], first_status[name]))
            taken_up_to_created.append(seconds_between(first_status[name], first_gang[-1][0]))
        if len({pod for _, pod in stamps}) != NODES_PER_JOB:
            problems.append(f"{name}: pods of {len({pod for _, pod in stamps})} names created")
    restart_delays = [seconds_between(failed_at[j], first_delete_after[j]) for j in killed
                      if j in failed_at and j in first_delete_after]
    missed = [j for j in killed if j not in first_delete_after]
    if missed:
        problems.append(f"failures with no gang restart seen: {missed}")
    steady_s = seconds_between(*steady)
    return {
        "steady_requests_per_s": round(steady_requests / steady_s, 3),
        "steady_reads_per_s": round(steady_reads / steady_s, 3),
        "steady_requests_by_verb": steady_by_kind,
        "requests_per_restart": round(restart_requests / max(1, len(killed)), 1),
        "apply_to_pods_created_s": percentiles(to_created),
        "apply_to_first_status_write_s": percentiles(to_taken_up),
        "first_status_write_to_pods_created_s": percentiles(taken_up_to_created),
        "failure_to_restart_s": percentiles(restart_delays),
        "operator_write_in_api_server_s": percentiles(server_time),
        "restarts": len(killed),
        "simulator_deletes": sum(simulator_deletes.values()),
        "simulator_deletes_by_job": simulator_deletes,
        "pod_creations": {name: len(created.get(name, [])) for name in names},
        "pod_trace": pod_trace,
        "problems": problems,
    }


# -- command line -------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=("idle", "kwok"))
    parser.add_argument("--jobs", default=None, help="comma-separated job counts (idle: 40,50; kwok: 50)")
    parser.add_argument("--nodes", type=int, default=1000, help="KWOK nodes (kwok)")
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="kwok: seconds for one run")
    parser.add_argument("--apply-rate", type=float, default=0.0,
                        help="kwok: TrainingJobs created per second (default 0: all at once)")
    parser.add_argument("--operator-src", type=Path, default=REPO)
    parser.add_argument("--cluster-dir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    counts = [int(n) for n in (args.jobs or ("40,50" if args.scenario == "idle" else "50")).split(",")]
    with tempfile.TemporaryDirectory(prefix="volt-scale-") as tmp:
        if args.cluster_dir:
            kube, own = LocalCluster(args.cluster_dir), False
        else:
            kube, own = LocalCluster(Path(tmp) / "kube", nodes=0).up(), True
        try:
            apply_crd(kube)
            src = args.operator_src.resolve()
            if args.scenario == "idle":
                results = [measure(kube, n, args.window, src, Path(tmp)) for n in counts]
            else:
                results = [measure_kwok(kube, n, args.nodes, args.window, src, Path(tmp) / f"kwok-{n}",
                                        args.timeout, args.apply_rate) for n in counts]
        finally:
            if own:
                kube.down()
    report = {"scenario": args.scenario, "operator_src": str(args.operator_src), "runs": results}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    problems = [p for run in results for p in run.get("problems", [])]
    if problems:
        sys.exit("checks failed:\n" + "\n".join(problems))


if __name__ == "__main__":
    main()
