"""The job contract: every variable the volt operator sets on a pod, read in one place.

``JobContract.from_env(environ)`` is a pure function of a mapping (like
``volt.cluster.cluster_environment``, which reads the rank layout): it parses
and checks each variable once, and raises ``JobContractError`` naming the
variable when one is malformed. Code that needs a job setting takes the parsed
object (``trainer.job_contract``) instead of reading ``os.environ``.

Precedence, one rule for every setting (docs/distributed.md, "The job contract"):

1. **The TrainingJob decides** what it owns: the Trainer arguments in
   ``VOLT_TRAINER``, the resume policy ``VOLT_RESUME`` and the checkpoint
   directory ``VOLT_CHECKPOINT_DIR``. They replace the script's values, and
   each replacement is logged once.
2. **The script decides** everything else it passes explicitly.
3. **The TrainingJob's defaults** (``VOLT_CHECKPOINT_EVERY_N_STEPS``,
   ``VOLT_CHECKPOINT_KEEP_LAST``, ``VOLT_METRICS_PORT``, ``VOLT_GRACE_PERIOD_S``,
   ``VOLT_PREEMPTION_CHECK_EVERY_N_STEPS``, ``VOLT_RENDEZVOUS_TIMEOUT``,
   ``VOLT_UNEVEN_CHECK_EVERY_N_BATCHES``) fill in what the script left unset.
4. volt's own defaults come last.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, TypeVar

log = logging.getLogger(__name__)

ENV_TRAINER = "VOLT_TRAINER"
ENV_RESUME = "VOLT_RESUME"
ENV_CHECKPOINT_DIR = "VOLT_CHECKPOINT_DIR"
ENV_CHECKPOINT_EVERY_N_STEPS = "VOLT_CHECKPOINT_EVERY_N_STEPS"
ENV_METRICS_PORT = "VOLT_METRICS_PORT"
ENV_JOB_NAME = "VOLT_JOB_NAME"
ENV_JOB_UID = "VOLT_JOB_UID"
ENV_RESUME_ANY_JOB = "VOLT_RESUME_ANY_JOB"
ENV_CHECKPOINT_KEEP_LAST = "VOLT_CHECKPOINT_KEEP_LAST"
ENV_ATTEMPT = "VOLT_ATTEMPT"
ENV_RENDEZVOUS_TIMEOUT = "VOLT_RENDEZVOUS_TIMEOUT"
ENV_GRACE_PERIOD = "VOLT_GRACE_PERIOD_S"
ENV_PREEMPTION_CHECK_EVERY = "VOLT_PREEMPTION_CHECK_EVERY_N_STEPS"
ENV_UNEVEN_CHECK_EVERY = "VOLT_UNEVEN_CHECK_EVERY_N_BATCHES"
ENV_TERMINATION_MESSAGE_PATH = "VOLT_TERMINATION_MESSAGE_PATH"
ENV_LAUNCHER = "VOLT_LAUNCHER"

#: ``VOLT_LAUNCHER``'s value when ``volt-run`` started this process.
VOLT_RUN = "volt-run"

T = TypeVar("T")


class JobContractError(ValueError):
    """An operator-set environment variable is malformed; the message names it."""


def _text(env: Mapping[str, str], name: str) -> Optional[str]:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    return raw.strip()


def _number(env: Mapping[str, str], name: str, cast: Callable[[str], T], what: str,
            valid: Callable[[T], bool]) -> Optional[T]:
    raw = _text(env, name)
    if raw is None:
        return None
    try:
        value = cast(raw)
    except ValueError:
        raise JobContractError(f"environment variable {name} must be {what}, got {raw!r}") from None
    if not valid(value):
        raise JobContractError(f"environment variable {name} must be {what}, got {raw!r}")
    return value


def _positive_int(env: Mapping[str, str], name: str) -> Optional[int]:
    return _number(env, name, int, "an int >= 1", lambda v: v >= 1)


def _positive_seconds(env: Mapping[str, str], name: str) -> Optional[float]:
    return _number(env, name, float, "a number of seconds > 0", lambda v: v > 0)


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = _text(env, name)
    if raw is None or raw.lower() in ("0", "false", "no"):
        return False
    if raw.lower() in ("1", "true", "yes"):
        return True
    raise JobContractError(f"environment variable {name} must be 1/true/yes or 0/false/no, got {raw!r}")


def job_uid(environ: Mapping[str, str]) -> Optional[str]:
    """``VOLT_JOB_UID`` alone, for code that must not fail on another malformed variable
    (writing a checkpoint's manifest, possibly on the way out after a SIGTERM)."""
    return _text(environ, ENV_JOB_UID)


def parse_trainer_settings(raw: Optional[str]) -> Dict[str, Any]:
    """``VOLT_TRAINER``: a JSON object of snake_case Trainer arguments; empty or unset means none."""
    if raw is None or not raw.strip():
        return {}
    try:
        settings = json.loads(raw)
    except json.JSONDecodeError as err:
        raise JobContractError(
            f"{ENV_TRAINER} is not valid JSON ({err.msg} at position {err.pos}): {raw[:200]!r}"
        ) from None
    if not isinstance(settings, dict):
        raise JobContractError(
            f"{ENV_TRAINER} must be a JSON object of Trainer arguments, got {type(settings).__name__}"
        )
    for key in settings:
        if not key.isidentifier() or key != key.lower():
            raise JobContractError(
                f"{ENV_TRAINER} key {key!r} is not a snake_case Trainer argument name (e.g. max_epochs, num_nodes)"
            )
    return settings


@dataclass(frozen=True)
class JobContract:
    """What the TrainingJob told this process; every field is None (or empty) outside a job."""

    trainer_settings: Mapping[str, Any] = field(default_factory=dict)
    resume: Optional[str] = None  # "auto" | "never" | a checkpoint path
    checkpoint_dir: Optional[str] = None
    checkpoint_every_n_steps: Optional[int] = None
    checkpoint_keep_last: Optional[int] = None
    metrics_port: Optional[int] = None
    job_name: Optional[str] = None
    job_uid: Optional[str] = None  # the TrainingJob's metadata.uid
    resume_any_job: bool = False  # resume from a directory another TrainingJob wrote
    attempt: Optional[int] = None  # the gang attempt, 0 on the first run
    rendezvous_timeout_s: Optional[float] = None
    grace_period_s: Optional[float] = None
    preemption_check_every_n_steps: Optional[int] = None
    uneven_check_every_n_batches: Optional[int] = None
    termination_message_path: Optional[str] = None
    launcher: Optional[str] = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "JobContract":
        """Parse the contract from ``environ``; raise ``JobContractError`` naming a malformed variable."""
        resume = _text(environ, ENV_RESUME)
        if resume is not None and resume.lower() in ("auto", "never"):
            resume = resume.lower()
        return cls(
            trainer_settings=parse_trainer_settings(environ.get(ENV_TRAINER)),
            resume=resume,
            checkpoint_dir=_text(environ, ENV_CHECKPOINT_DIR),
            checkpoint_every_n_steps=_positive_int(environ, ENV_CHECKPOINT_EVERY_N_STEPS),
            checkpoint_keep_last=_positive_int(environ, ENV_CHECKPOINT_KEEP_LAST),
            metrics_port=_number(environ, ENV_METRICS_PORT, int, "a port in 0..65535", lambda v: 0 <= v <= 65535),
            job_name=_text(environ, ENV_JOB_NAME),
            job_uid=job_uid(environ),
            resume_any_job=_flag(environ, ENV_RESUME_ANY_JOB),
            attempt=_number(environ, ENV_ATTEMPT, int, "an int >= 0", lambda v: v >= 0),
            rendezvous_timeout_s=_positive_seconds(environ, ENV_RENDEZVOUS_TIMEOUT),
            grace_period_s=_positive_seconds(environ, ENV_GRACE_PERIOD),
            preemption_check_every_n_steps=_positive_int(environ, ENV_PREEMPTION_CHECK_EVERY),
            uneven_check_every_n_batches=_positive_int(environ, ENV_UNEVEN_CHECK_EVERY),
            termination_message_path=_text(environ, ENV_TERMINATION_MESSAGE_PATH),
            launcher=_text(environ, ENV_LAUNCHER),
        )

    # -- rule 1: the TrainingJob decides ------------------------------------------------
    def resume_ckpt_path(self, ckpt_path: Optional[str]) -> Optional[str]:
        """``fit(ckpt_path=...)`` after the resume policy: ``auto`` = ``"last"`` (nothing saved yet
        means a fresh start), ``never`` = fresh, anything else = that path; unset: the script's value."""
        if self.resume is None:
            return ckpt_path
        wanted = {"auto": "last", "never": None}.get(self.resume, self.resume)
        if wanted != ckpt_path:
            log.warning("%s=%s overrides fit(ckpt_path=%r) with %r", ENV_RESUME, self.resume, ckpt_path, wanted)
        return wanted

    def checkpoint_dir_for(self, script_dir: Optional[str]) -> Optional[str]:
        """Where checkpoints go: the TrainingJob's directory, else the script's (None: the caller's default).

        Every writer (ModelCheckpoint, the SIGTERM checkpoint) and the resume lookup use this,
        so a job always writes to and resumes from its volume.
        """
        return self.checkpoint_dir or script_dir

    # -- rule 3: the TrainingJob's defaults ---------------------------------------------
    @staticmethod
    def default(script_value: Optional[T], job_value: Optional[T], volt_default: T) -> T:
        """The script's explicit value, else the TrainingJob's, else volt's default."""
        if script_value is not None:
            return script_value
        return job_value if job_value is not None else volt_default

    @property
    def under_volt_run(self) -> bool:
        return self.launcher == VOLT_RUN


def job_contract() -> JobContract:
    """This process's contract, for code that runs without a Trainer (volt-run, a strategy or
    callback built by the script); the Trainer parses it once and passes ``trainer.job_contract``."""
    return JobContract.from_env(os.environ)
