"""A TrainingJob manifest from command-line settings: a pure function of plain values.

``volt submit`` builds the manifest here and the API server checks it against
the CRD (the same rules `kubectl apply` meets), so the client repeats only the
checks that give a clearer message before anything is sent: counts are
positive, ``KEY=VALUE`` pairs have a key, a checkpoint has both its claim and
its path.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from volt import __version__

API_VERSION = "volt.dev/v1alpha1"
KIND = "TrainingJob"
#: The trainer image built from this version of volt.
DEFAULT_IMAGE = f"volt-trainer:{__version__}"
# A TrainingJob's name becomes pod and Service names: a DNS label, short enough
# for "<name>-node-<rank>" (the operator's CRD refuses longer ones too).
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class SpecError(ValueError):
    """A setting cannot make a TrainingJob; the message names the flag."""


@dataclass(frozen=True)
class JobSettings:
    """What ``volt submit`` accepts as flags; ``None`` leaves the CRD's default."""

    command: Sequence[str]
    name: Optional[str] = None
    image: str = DEFAULT_IMAGE
    image_pull_policy: Optional[str] = None
    nodes: int = 1
    devices: Optional[str] = None
    accelerator: Optional[str] = None
    precision: Optional[str] = None
    max_epochs: Optional[int] = None
    max_steps: Optional[int] = None
    env: Sequence[str] = field(default_factory=tuple)
    cpu: Optional[str] = None
    memory: Optional[str] = None
    gpus: Optional[int] = None
    checkpoint_claim: Optional[str] = None
    checkpoint_path: Optional[str] = None
    checkpoint_every_n_steps: Optional[int] = None
    max_restarts: Optional[int] = None
    labels: Sequence[str] = field(default_factory=tuple)


def _pairs(items: Sequence[str], flag: str, key_pattern: re.Pattern) -> List[Tuple[str, str]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key_pattern.match(key):
            raise SpecError(f"{flag} {item!r}: expected KEY=VALUE with a valid KEY")
        out.append((key, value))
    return out


def _positive(value: Optional[int], flag: str, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise SpecError(f"{flag} must be >= {minimum}, got {value}")


def _devices(value: Optional[str]) -> Optional[Any]:
    """--devices as the CRD takes it: a count (int), "auto" or indices ("0,1")."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        count = int(text)
        if count < 1:
            raise SpecError(f"--devices must be >= 1, \"auto\" or indices like 0,1; got {value!r}")
        return count
    if text == "auto" or re.fullmatch(r"[0-9]+( *, *[0-9]+)*", text):
        return text
    raise SpecError(f"--devices must be a count, \"auto\" or indices like 0,1; got {value!r}")


def build_manifest(settings: JobSettings) -> Dict[str, Any]:
    """The TrainingJob object for ``settings`` (camelCase, only what was set)."""
    if not settings.command:
        raise SpecError("a command to run is required: volt submit [flags] -- COMMAND [ARGS...]")
    if settings.name is not None and (len(settings.name) > 50 or not _NAME.match(settings.name)):
        raise SpecError(
            f"--name {settings.name!r}: lower-case letters, digits and '-', starting with a "
            "letter, at most 50 characters"
        )
    if not settings.image:
        raise SpecError("--image must not be empty")
    _positive(settings.nodes, "--nodes")
    _positive(settings.max_epochs, "--max-epochs")
    _positive(settings.max_steps, "--max-steps")
    _positive(settings.gpus, "--gpus", 0)
    _positive(settings.checkpoint_every_n_steps, "--checkpoint-every-n-steps")
    _positive(settings.max_restarts, "--max-restarts", 0)
    if (settings.checkpoint_claim is None) != (settings.checkpoint_path is None):
        raise SpecError("--checkpoint-claim and --checkpoint-path go together")
    if settings.checkpoint_path is not None and not settings.checkpoint_path.startswith("/"):
        raise SpecError(f"--checkpoint-path must be absolute, got {settings.checkpoint_path!r}")
    if settings.checkpoint_every_n_steps is not None and settings.checkpoint_claim is None:
        raise SpecError("--checkpoint-every-n-steps needs --checkpoint-claim and --checkpoint-path")

    trainer: Dict[str, Any] = {"numNodes": settings.nodes}
    devices = _devices(settings.devices)
    for key, value in (("devices", devices), ("accelerator", settings.accelerator),
                       ("maxEpochs", settings.max_epochs), ("maxSteps", settings.max_steps)):
        if value is not None:
            trainer[key] = value
    if settings.precision is not None:
        # The CRD takes 16/32/64 as numbers and the named precisions as text.
        trainer["precision"] = int(settings.precision) if settings.precision.isdigit() \
            else settings.precision

    spec: Dict[str, Any] = {
        "image": settings.image,
        "command": list(settings.command[:1]),
        "trainer": trainer,
    }
    if len(settings.command) > 1:
        spec["args"] = list(settings.command[1:])
    if settings.image_pull_policy is not None:
        spec["imagePullPolicy"] = settings.image_pull_policy
    env = _pairs(settings.env, "--env", _ENV_NAME)
    if env:
        spec["env"] = [{"name": key, "value": value} for key, value in env]
    requests = {key: value for key, value in (("cpu", settings.cpu), ("memory", settings.memory))
                if value is not None}
    resources: Dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if settings.gpus:
        resources["limits"] = {"nvidia.com/gpu": settings.gpus}
        trainer.setdefault("accelerator", "gpu")
    if resources:
        spec["resources"] = resources
    if settings.checkpoint_claim is not None:
        spec["checkpoint"] = {"claimName": settings.checkpoint_claim,
                              "path": settings.checkpoint_path}
        if settings.checkpoint_every_n_steps is not None:
            spec["checkpoint"]["everyNSteps"] = settings.checkpoint_every_n_steps
    if settings.max_restarts is not None:
        spec["failurePolicy"] = {"maxRestarts": settings.max_restarts}

    metadata: Dict[str, Any] = {}
    if settings.name is not None:
        metadata["name"] = settings.name
    else:
        metadata["generateName"] = "volt-"
    labels = _pairs(settings.labels, "--label", re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?$"))
    if labels:
        metadata["labels"] = dict(labels)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


def split_manifests(documents: Sequence[Optional[Dict[str, Any]]], source: str
                    ) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The one TrainingJob of a file, and the other objects it holds (a PVC...)."""
    objects = [doc for doc in documents if doc]
    for doc in objects:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise SpecError(f"-f {source}: every document must be an object with apiVersion and kind")
    jobs = [doc for doc in objects if doc["kind"] == KIND]
    if len(jobs) != 1:
        raise SpecError(f"-f {source}: expected exactly one {KIND}, found {len(jobs)}")
    if jobs[0]["apiVersion"] != API_VERSION:
        raise SpecError(f"-f {source}: the {KIND} must have apiVersion {API_VERSION}, "
                        f"got {jobs[0]['apiVersion']!r}")
    return jobs[0], [doc for doc in objects if doc is not jobs[0]]
