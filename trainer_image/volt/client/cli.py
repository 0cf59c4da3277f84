"""The ``volt`` command: the client's operations on the command line.

    volt submit --nodes 2 --devices 2 -- python -m volt.examples.synthetic
    volt submit -f examples/trainingjob.yaml
    volt get | volt describe JOB | volt logs JOB --rank 1 -f | volt wait JOB
    volt suspend JOB | volt resume JOB | volt delete JOB

Exit status: 0 when the job (or the command) succeeded, 1 when the job Failed,
2 for bad input (a flag, a file, or a job the API server refuses), 3 for any
other error (no such job, the API server unreachable, a wait that timed out),
130 when interrupted (the job keeps running).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from dataclasses import asdict
from typing import Callable, List, Optional, Sequence, TextIO

import urllib3

from volt.client.api import ClientError, InvalidJob, VoltClient
from volt.client.results import Condition, JobDescription, JobStatus, age, format_duration
from volt.client.spec import DEFAULT_IMAGE, JobSettings, SpecError, build_manifest

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# After the job finished, rank 0's log stream gets this long to deliver its last lines.
DRAIN_SECONDS = 15.0

# submit flags that build the spec (refused together with -f); dest -> flag.
SPEC_FLAGS = {
    "name": "--name", "image": "--image", "image_pull_policy": "--image-pull-policy",
    "nodes": "--nodes", "devices": "--devices", "accelerator": "--accelerator",
    "precision": "--precision", "max_epochs": "--max-epochs", "max_steps": "--max-steps",
    "env": "--env", "label": "--label", "cpu": "--cpu", "memory": "--memory", "gpus": "--gpus",
    "checkpoint_claim": "--checkpoint-claim", "checkpoint_path": "--checkpoint-path",
    "checkpoint_every_n_steps": "--checkpoint-every-n-steps", "max_restarts": "--max-restarts",
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    common.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    common.add_argument("--context", help="kubeconfig context (default: the current one)")

    parser = argparse.ArgumentParser(
        prog="volt", description="Submit and manage volt TrainingJobs.",
        epilog="Exit status: 0 succeeded, 1 the job Failed, 2 bad input, 3 other errors.")
    commands = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    submit = commands.add_parser(
        "submit", parents=[common], help="create a TrainingJob, stream rank 0 and wait",
        description="Create a TrainingJob from flags (then -- COMMAND ARGS) or from -f FILE. "
        "By default it streams rank 0's output and exits 0 when the job Succeeded, 1 when it "
        "Failed.")
    submit.add_argument("-f", "--filename", help="a YAML file with one TrainingJob (and e.g. its PVC)")
    submit.add_argument("--name", help="job name (default: volt-<random>)")
    submit.add_argument("--image", help=f"trainer image (default: {DEFAULT_IMAGE})")
    submit.add_argument("--image-pull-policy", choices=["Always", "IfNotPresent", "Never"])
    submit.add_argument("--nodes", type=int, help="pods, one per node (default 1)")
    submit.add_argument("--devices", help="processes (GPUs) per node: a count, auto or 0,1")
    submit.add_argument("--accelerator", choices=["cpu", "gpu", "auto"])
    submit.add_argument("--precision", help="Trainer precision: 32, 16-mixed, bf16-mixed, ...")
    submit.add_argument("--max-epochs", type=int)
    submit.add_argument("--max-steps", type=int)
    submit.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable of every rank (repeatable)")
    submit.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="label of the TrainingJob (repeatable)")
    submit.add_argument("--cpu", help="CPU request per node, e.g. 4 or 500m")
    submit.add_argument("--memory", help="memory request per node, e.g. 8Gi")
    submit.add_argument("--gpus", type=int, help="nvidia.com/gpu per node (sets --accelerator gpu)")
    submit.add_argument("--checkpoint-claim", help="PVC for checkpoints (with --checkpoint-path)")
    submit.add_argument("--checkpoint-path", help="where the PVC is mounted, e.g. /checkpoints")
    submit.add_argument("--checkpoint-every-n-steps", type=int)
    submit.add_argument("--max-restarts", type=int, help="gang restarts allowed (failurePolicy)")
    submit.add_argument("--no-wait", action="store_true",
                        help="print the job's name and return once it is created")
    submit.add_argument("--quiet", action="store_true", help="wait without streaming rank 0")
    submit.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    submit.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- COMMAND [ARGS...]: what volt-run starts on every node")

    get = commands.add_parser("get", parents=[common], help="list TrainingJobs or show one")
    get.add_argument("job", nargs="?")
    get.add_argument("-o", "--output", choices=["table", "json", "name"], default="table")

    describe = commands.add_parser("describe", parents=[common],
                                   help="status, conditions, events and pods of a job")
    describe.add_argument("job")

    logs = commands.add_parser("logs", parents=[common], help="a rank's or a node's output")
    logs.add_argument("job")
    where = logs.add_mutually_exclusive_group()
    where.add_argument("--rank", type=int, help="global rank (default: node 0, every rank)")
    where.add_argument("--node", type=int, help="node (pod) index, every rank of it")
    logs.add_argument("-f", "--follow", action="store_true", help="stream until the pod ends")
    logs.add_argument("-p", "--previous", action="store_true",
                      help="the output of the container's previous run")

    wait = commands.add_parser("wait", parents=[common],
                               help="wait until a job Succeeded (exit 0) or Failed (exit 1)")
    wait.add_argument("job")
    wait.add_argument("--timeout", type=float, help="give up after this many seconds (exit 3)")

    for verb, text in (("delete", "delete a job and its pods"),
                       ("suspend", "delete a job's pods and keep the job"),
                       ("resume", "start a suspended job again")):
        commands.add_parser(verb, parents=[common], help=text).add_argument("job")
    for name, sub in commands.choices.items():
        sub.set_defaults(parser=sub)  # errors found after parsing print this command's usage
    return parser


def settings_from_args(args: argparse.Namespace) -> JobSettings:
    """The JobSettings of ``volt submit``'s flags (pure)."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    return JobSettings(
        command=command, name=args.name, image=args.image or DEFAULT_IMAGE,
        image_pull_policy=args.image_pull_policy, nodes=1 if args.nodes is None else args.nodes,
        devices=args.devices, accelerator=args.accelerator, precision=args.precision,
        max_epochs=args.max_epochs, max_steps=args.max_steps, env=tuple(args.env),
        labels=tuple(args.label), cpu=args.cpu, memory=args.memory, gpus=args.gpus,
        checkpoint_claim=args.checkpoint_claim, checkpoint_path=args.checkpoint_path,
        checkpoint_every_n_steps=args.checkpoint_every_n_steps, max_restarts=args.max_restarts)


def _check_submit_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.filename is None:
        return
    given = [flag for dest, flag in SPEC_FLAGS.items() if getattr(args, dest) not in (None, [])]
    if given:
        parser.error(f"-f {args.filename} holds the whole job: drop {', '.join(given)}")
    if [part for part in args.command if part != "--"]:
        parser.error(f"-f {args.filename} holds the command: drop '{' '.join(args.command)}'")


# -- output -------------------------------------------------------------------------


def outcome_line(status: JobStatus) -> str:
    """One line saying how the job ended (or stands)."""
    text = f"trainingjob {status.name} {status.phase or 'Pending'}"
    facts = [f"{key} {value}" for key, value in (("epoch", status.epoch), ("step", status.step),
                                                 ("loss", status.loss)) if value is not None]
    if status.restarts:
        facts.append(f"{status.restarts} restarts")
    if facts:
        text += f" ({', '.join(facts)})"
    failure = status.last_failure
    if status.phase == "Failed":
        reason = next((c.message for c in status.conditions
                       if c.type == "Failed" and c.status == "True" and c.message), "")
        if failure is not None:
            reason = failure.message or reason
            if failure.pod not in reason:  # the operator's message may already say where
                reason += f" [pod {failure.pod}, exit code {failure.exit_code}, {failure.reason}]"
        if reason:
            text += f": {reason}"
    elif status.blocked_by is not None:
        text += f": {_blocked(status.blocked_by)}"
    return text


def _blocked(cond: Condition) -> str:
    """A blocking condition as the phase and outcome lines quote it."""
    return f"blocked by {_condition(cond)}"


def _condition(cond: Condition) -> str:
    return f"{cond.type}={cond.status} {cond.reason}: {cond.message}"


def _progress(status: JobStatus) -> str:
    return "" if status.progress is None else f"{100 * status.progress:.0f}%"


def job_table(jobs: Sequence[JobStatus]) -> str:
    header = ["NAME", "PHASE", "NODES", "PROGRESS", "EPOCH", "STEP", "LOSS", "ETA", "RESTARTS", "AGE"]
    rows = [header] + [[
        job.name, job.phase or "Pending", job.ready_nodes, _progress(job),
        "" if job.epoch is None else str(job.epoch), "" if job.step is None else str(job.step),
        "" if job.loss is None else f"{job.loss:.4g}", format_duration(job.eta_seconds),
        str(job.restarts), age(job.created)] for job in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def describe_text(d: JobDescription) -> str:
    st = d.status
    trainer = d.spec.get("trainer") or {}
    lines = [f"Name:        {st.name}", f"Namespace:   {st.namespace}",
             f"Phase:       {st.phase or 'Pending'}{' (suspended)' if st.suspended else ''}",
             f"Image:       {d.spec.get('image', '')}",
             f"Command:     {' '.join(d.spec.get('command', []) + d.spec.get('args', []))}",
             f"Layout:      {trainer.get('numNodes', 1)} nodes, devices "
             f"{trainer.get('devices', 'auto')}, accelerator {trainer.get('accelerator', 'auto')}",
             f"Nodes:       {st.ready_nodes} ready, attempt {st.attempt}, {st.restarts} restarts"]
    if st.blocked_by is not None:
        lines.insert(3, f"Blocked by:  {_condition(st.blocked_by)}")
    training = [f"{k} {v}" for k, v in (("epoch", st.epoch), ("step", st.step), ("loss", st.loss),
                                        ("progress", _progress(st) or None),
                                        ("throughput", st.throughput),
                                        ("ETA", format_duration(st.eta_seconds) or None))
                if v is not None]
    if training:
        lines.append(f"Training:    {', '.join(training)}")
    if st.last_failure:
        f = st.last_failure
        lines.append(f"Last failure: pod {f.pod} (node {f.node_rank}), attempt {f.attempt}, "
                     f"exit code {f.exit_code}, {f.reason}: {f.message}")
    lines.append("Conditions:")
    lines += [f"  {_condition(c)}" for c in st.conditions] or ["  <none>"]
    lines.append("Pods:")
    lines += [f"  {p.name}  node {p.node_rank}  attempt {p.attempt}  {p.phase}  {p.state}"
              f"{'  on ' + p.node if p.node else ''}" for p in d.pods] or ["  <none>"]
    lines.append("Events:")
    lines += [f"  {age(e.last_seen):>6}  {e.type:<7} {e.reason:<18} {e.source}: {e.message}"
              + (f" (x{e.count})" if e.count > 1 else "") for e in d.events] or ["  <none>"]
    return "\n".join(lines)


class PhasePrinter:
    """Prints a job's phase when it changes (and the failure that caused a restart)."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.last = out, None

    def __call__(self, status: JobStatus) -> None:
        blocked = status.blocked_by
        key = (status.phase, status.ready_nodes, status.restarts, blocked and blocked.message)
        if key != self.last:
            self.last = key
            text = f"volt: {status.name} {status.phase or 'Pending'} (nodes {status.ready_nodes})"
            if blocked is not None:
                text += f": {_blocked(blocked)}"
            elif status.phase == "Restarting" and status.last_failure:
                text += f": {status.last_failure.reason} {status.last_failure.message}".rstrip()
            print(text, file=self.out, flush=True)


# -- commands -----------------------------------------------------------------------


def _stream(lines_of: Callable[[], object], out: TextIO) -> threading.Thread:
    def run() -> None:
        try:
            for line in lines_of():  # type: ignore[attr-defined]
                print(line, file=out, flush=True)
        except ClientError as err:
            print(f"volt: logs: {err}", file=sys.stderr, flush=True)

    thread = threading.Thread(target=run, name="volt-logs", daemon=True)
    thread.start()
    return thread


def _submit(client: VoltClient, args: argparse.Namespace) -> int:
    job = args.filename if args.filename is not None else settings_from_args(args)
    name = client.submit(job)
    if args.no_wait:
        print(name)
        return EXIT_OK
    print(f"volt: trainingjob.volt.dev/{name} created in namespace {client.namespace}",
          file=sys.stderr, flush=True)
    logs = None if args.quiet else _stream(lambda: client.follow_rank(name, 0), sys.stdout)
    status = client.wait(name, timeout=args.timeout, on_update=PhasePrinter(sys.stderr))
    if logs is not None:
        logs.join(DRAIN_SECONDS)
    print(f"volt: {outcome_line(status)}", file=sys.stderr, flush=True)
    return EXIT_OK if status.succeeded else EXIT_FAILED


def _get(client: VoltClient, args: argparse.Namespace) -> int:
    jobs = [client.get(args.job)] if args.job else client.list()
    if args.output == "json":
        print(json.dumps([asdict(j) for j in jobs] if not args.job else asdict(jobs[0]), indent=2))
    elif args.output == "name":
        print("\n".join(f"trainingjob.volt.dev/{j.name}" for j in jobs))
    elif jobs:
        print(job_table(jobs))
    else:
        print(f"No trainingjobs in namespace {client.namespace}.", file=sys.stderr)
    return EXIT_OK


def _logs(client: VoltClient, args: argparse.Namespace) -> int:
    for line in client.logs(args.job, rank=args.rank, node=args.node, follow=args.follow,
                            previous=args.previous):
        print(line, flush=args.follow)
    return EXIT_OK


def _wait(client: VoltClient, args: argparse.Namespace) -> int:
    status = client.wait(args.job, timeout=args.timeout, on_update=PhasePrinter(sys.stderr))
    print(f"volt: {outcome_line(status)}", file=sys.stderr)
    return EXIT_OK if status.succeeded else EXIT_FAILED


def _simple(verb: str) -> Callable[[VoltClient, argparse.Namespace], int]:
    done = {"delete": "deleted", "suspend": "suspended", "resume": "resumed"}[verb]

    def run(client: VoltClient, args: argparse.Namespace) -> int:
        getattr(client, verb)(args.job)
        print(f"trainingjob.volt.dev/{args.job} {done}")
        return EXIT_OK
    return run


COMMANDS = {"submit": _submit, "get": _get, "logs": _logs, "wait": _wait,
            "describe": lambda c, a: print(describe_text(c.describe(a.job))) or EXIT_OK,
            "delete": _simple("delete"), "suspend": _simple("suspend"), "resume": _simple("resume")}


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb == "submit":
        _check_submit_args(args.parser, args)
    if args.verb == "logs" and args.rank is not None and args.rank < 0:
        args.parser.error(f"argument --rank: must be >= 0, got {args.rank}")
    # The client's notes ("persistentvolumeclaim/x created") as plain lines, whatever
    # the engine's logging setup is (it prefixes ranks and times).
    notes = logging.getLogger("volt.client")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("volt: %(message)s"))
    notes.handlers[:] = [handler]
    notes.setLevel(logging.INFO)
    notes.propagate = False
    try:
        if args.verb == "submit" and args.filename is None:
            # Check the flags before reading any kubeconfig: bad input is reported first.
            build_manifest(settings_from_args(args))
        client = VoltClient(namespace=args.namespace, kubeconfig=args.kubeconfig,
                            context=args.context)
        return COMMANDS[args.verb](client, args)
    except (SpecError, InvalidJob, ValueError) as err:  # ValueError: a --rank out of range
        print(f"volt {args.verb}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (ClientError, TimeoutError, urllib3.exceptions.HTTPError) as err:
        print(f"volt {args.verb}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        if args.verb in ("submit", "wait", "logs"):
            print("\nvolt: interrupted; the job keeps running (volt delete JOB stops it)",
                  file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
