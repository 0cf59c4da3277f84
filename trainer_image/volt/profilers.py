"""Profilers: ``Trainer(profiler=None | "simple" | "advanced" | "pytorch" | Profiler())``, as in Lightning.

A profiler records named *actions*. The engine names them as Lightning does:
``[LightningModule]Model.training_step``, ``[Callback]ModelCheckpoint{...}.on_train_batch_end``,
``run_training_epoch``, ``run_training_batch``, ``get_train_batch``, ``optimizer_step``, ``backward``,
``get_validate_batch`` ... (the list is in docs/engine.md). User code may add its own with
``self.trainer.profiler.profile("name")``.

At the end of ``fit``/``validate``/``test``/``predict`` the trainer calls :meth:`Profiler.describe`:
the report goes to ``dirpath/<stage>-<filename>.txt`` when ``filename`` is given (``dirpath``
defaults to ``trainer.log_dir``), else to the ``volt.profilers`` logger at INFO. Under DDP every
rank profiles itself and writes ``<stage>-<filename>-rank<k>.txt`` (global rank: pods on
different nodes may share one volume).

With ``profiler=None`` the trainer holds a :class:`PassThroughProfiler` and the loops run their
plain code path: no profiling call at all per step (the choice is made once per run).
"""
from __future__ import annotations

import cProfile
import io
import logging
import os
import pstats
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, TextIO, Union

import torch

log = logging.getLogger(__name__)

__all__ = ["Profiler", "PassThroughProfiler", "SimpleProfiler", "AdvancedProfiler", "PyTorchProfiler",
           "profiler_from_argument"]


class Profiler(ABC):
    """Base class: subclasses implement :meth:`start`/:meth:`stop` and :meth:`summary`."""

    def __init__(self, dirpath: Optional[Union[str, Path]] = None, filename: Optional[str] = None) -> None:
        self.dirpath = os.fspath(dirpath) if dirpath is not None else None
        self.filename = filename
        self._stage: Optional[str] = None
        self._rank: Optional[int] = None  # set under DDP only: it goes into the file name
        self._output_file: Optional[TextIO] = None
        self._write_stream: Optional[Callable[[str], Any]] = None

    @abstractmethod
    def start(self, action_name: str) -> None:
        """Start recording ``action_name``."""

    @abstractmethod
    def stop(self, action_name: str) -> None:
        """Stop recording ``action_name`` (started by :meth:`start`)."""

    def summary(self) -> str:
        """The report (empty: nothing to report)."""
        return ""

    @contextmanager
    def profile(self, action_name: str) -> Iterator[str]:
        """``with profiler.profile("load data"): ...`` records the block as one call of the action."""
        self.start(action_name)
        try:
            yield action_name
        finally:
            self.stop(action_name)

    # --- lifecycle, driven by the trainer (or by hand when a profiler is used alone) ---------------
    def setup(self, stage: str, local_rank: Optional[int] = None, log_dir: Optional[str] = None) -> None:
        """Called before a run: ``stage`` names the report, ``local_rank`` (None: single process) the file.

        (The trainer passes the global rank: Lightning's name for the argument, volt's meaning.)
        """
        self._stage = stage
        self._rank = local_rank
        self.dirpath = self.dirpath or log_dir

    def teardown(self, stage: Optional[str]) -> None:
        """Close the report file."""
        self._write_stream = None
        if self._output_file is not None:
            self._output_file.close()
            self._output_file = None

    def describe(self) -> None:
        """Write the report: to the file when ``filename`` is set, else to the log (rank 0 only)."""
        self._prepare_streams()
        report = self.summary()
        if report and self._write_stream is not None:
            self._write_stream(report)
        self.teardown(self._stage)

    @property
    def local_rank(self) -> int:
        return self._rank or 0

    def _prepare_filename(self, action_name: Optional[str] = None, extension: str = ".txt") -> str:
        parts = [p for p in (self._stage, self.filename) if p]
        if self._rank is not None:
            parts.append(f"rank{self._rank}")
        if action_name is not None:
            parts.append(action_name)
        return "-".join(parts) + extension

    def _prepare_streams(self) -> None:
        if self._write_stream is not None:
            return
        if self.filename and self.dirpath:
            os.makedirs(self.dirpath, exist_ok=True)
            self._output_file = open(os.path.join(self.dirpath, self._prepare_filename()), "a")
            self._write_stream = self._output_file.write
        else:
            self._write_stream = self._log_report

    def _log_report(self, report: str) -> None:
        if self._rank in (None, 0):
            log.info("%s", report)

    def _header(self) -> str:
        stage = f"{self._stage.upper()} " if self._stage else ""
        rank = f" (rank {self._rank})" if self._rank is not None else ""
        return f"{stage}Profiler Report{rank}"

    def __del__(self) -> None:
        try:
            self.teardown(self._stage)
        except Exception:  # interpreter shutdown: the file object may already be gone
            pass


class PassThroughProfiler(Profiler):
    """Records nothing: what ``profiler=None`` means. ``profile()`` still works in user code."""

    def start(self, action_name: str) -> None:
        pass

    def stop(self, action_name: str) -> None:
        pass


class SimpleProfiler(Profiler):
    """Wall-clock duration of every action: mean, calls, total and share of the run, one row per action."""

    def __init__(self, dirpath: Optional[Union[str, Path]] = None, filename: Optional[str] = None,
                 extended: bool = True) -> None:
        super().__init__(dirpath, filename)
        self.extended = extended
        self.current_actions: Dict[str, float] = {}
        self.recorded_durations: Dict[str, List[float]] = {}
        self.start_time = time.monotonic()

    def start(self, action_name: str) -> None:
        if action_name in self.current_actions:
            raise ValueError(f"profiler action {action_name!r} was started while it is already running")
        self.current_actions[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        end = time.perf_counter()
        started = self.current_actions.pop(action_name, None)
        if started is None:
            raise ValueError(f"profiler action {action_name!r} was stopped but never started")
        self.recorded_durations.setdefault(action_name, []).append(end - started)

    def summary(self) -> str:
        if not self.recorded_durations:
            return ""
        total = max(time.monotonic() - self.start_time, 1e-12)
        rows = [(name, sum(d) / len(d), len(d), sum(d)) for name, d in self.recorded_durations.items()]
        rows.sort(key=lambda r: r[3], reverse=True)
        width = max(len("Action"), *(len(r[0]) for r in rows))
        if self.extended:
            head = (f"| {'Action':<{width}} | {'Mean duration (s)':>17} | {'Num calls':>9} | {'Total time (s)':>14} "
                    f"| {'Percentage %':>12} |")
            calls = sum(r[2] for r in rows)
            lines = [f"| {'Total':<{width}} | {'-':>17} | {calls:>9} | {total:>14.5g} | {'100 %':>12} |"]
            lines += [f"| {n:<{width}} | {m:>17.5g} | {c:>9} | {t:>14.5g} | {100 * t / total:>12.5g} |"
                      for n, m, c, t in rows]
        else:
            head = f"| {'Action':<{width}} | {'Mean duration (s)':>17} | {'Total time (s)':>14} |"
            lines = [f"| {n:<{width}} | {m:>17.5g} | {t:>14.5g} |" for n, m, _, t in rows]
        rule = "-" * len(head)
        return os.linesep.join([self._header(), rule, head, rule, *lines, rule]) + os.linesep


class AdvancedProfiler(Profiler):
    """One ``cProfile`` per action: the report is each action's function-level statistics.

    Python runs one profiler at a time, so while a nested action runs (a training_step inside
    run_training_batch) only the inner action's profile records: each function call is reported
    under the innermost action running it.
    ``line_count_restriction`` limits the rows printed per action (an int, or a fraction of them);
    ``dump_stats=True`` also writes each action's raw stats to ``dirpath`` (``<...>-<action>.prof``).
    """

    def __init__(self, dirpath: Optional[Union[str, Path]] = None, filename: Optional[str] = None,
                 line_count_restriction: float = 1.0, dump_stats: bool = False) -> None:
        super().__init__(dirpath, filename)
        self.line_count_restriction = line_count_restriction
        self.dump_stats = dump_stats
        self.profiled_actions: Dict[str, cProfile.Profile] = {}
        self._running: List[cProfile.Profile] = []  # innermost last; only that one is enabled

    def start(self, action_name: str) -> None:
        prof = self.profiled_actions.get(action_name)
        if prof is None:
            prof = self.profiled_actions[action_name] = cProfile.Profile()
        if self._running:
            self._running[-1].disable()
        self._running.append(prof)
        prof.enable()

    def stop(self, action_name: str) -> None:
        prof = self.profiled_actions.get(action_name)
        if prof is None or prof not in self._running:
            raise ValueError(f"profiler action {action_name!r} was stopped but never started")
        innermost = self._running[-1] is prof
        prof.disable()
        self._running.remove(prof)
        if innermost and self._running:
            self._running[-1].enable()

    def summary(self) -> str:
        sections = [self._header()]
        for name, prof in self.profiled_actions.items():
            stream = io.StringIO()
            try:
                stats = pstats.Stats(prof, stream=stream)
            except TypeError:  # never enabled (always nested in another action): nothing of its own
                continue
            if self.dump_stats and self.dirpath:
                os.makedirs(self.dirpath, exist_ok=True)
                stats.dump_stats(os.path.join(self.dirpath, self._prepare_filename(_safe(name), ".prof")))
            stats.strip_dirs().sort_stats("cumulative").print_stats(self.line_count_restriction)
            sections.append(f"Profile stats for: {name}" + (f" rank: {self._rank}" if self._rank is not None else ""))
            sections.append(stream.getvalue())
        return os.linesep.join(sections) if len(sections) > 1 else ""


class PyTorchProfiler(Profiler):
    """``torch.profiler``: operator-level CPU (and CUDA) times, each action marked with ``record_function``.

    The profiler steps at the end of each ``*_step`` action, so ``schedule`` counts steps (default:
    every step recorded; pass ``schedule=torch.profiler.schedule(wait=1, warmup=1, active=3)`` to
    bound a long run's trace). With ``dirpath``/``filename`` (or the trainer's ``log_dir``) a Chrome
    trace is written there (``export_to_chrome``) and the report is an operator table
    (``key_averages().table``), ``row_limit`` rows sorted by ``sort_by_key`` (``table_kwargs`` go to
    ``table()``, e.g. ``max_name_column_width``).
    Other keyword arguments go to :class:`torch.profiler.profile` (``record_shapes``,
    ``profile_memory``, ``with_stack``, ``activities``, ...).
    """

    STEP_FUNCTIONS = ("training_step", "validation_step", "test_step", "predict_step")

    def __init__(self, dirpath: Optional[Union[str, Path]] = None, filename: Optional[str] = None,
                 group_by_input_shapes: bool = False, export_to_chrome: bool = True, row_limit: int = 20,
                 sort_by_key: Optional[str] = None, table_kwargs: Optional[Dict[str, Any]] = None,
                 **profiler_kwargs: Any) -> None:
        super().__init__(dirpath, filename)
        if "on_trace_ready" in profiler_kwargs:
            raise ValueError("PyTorchProfiler(on_trace_ready=...) is not supported: the trace goes to dirpath")
        self.group_by_input_shapes = group_by_input_shapes and bool(profiler_kwargs.get("record_shapes"))
        self.export_to_chrome = export_to_chrome
        self.row_limit = row_limit
        self.table_kwargs = dict(table_kwargs or {})
        cuda = torch.cuda.is_available()
        self.sort_by_key = sort_by_key or ("cuda_time_total" if cuda else "cpu_time_total")
        if "activities" not in profiler_kwargs:
            profiler_kwargs["activities"] = [torch.profiler.ProfilerActivity.CPU] + (
                [torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        self._kwargs = profiler_kwargs
        self.profiler: Optional[torch.profiler.profile] = None
        self.trace_paths: List[str] = []
        self._events: Any = None
        self._recording: Dict[str, Any] = {}

    def start(self, action_name: str) -> None:
        if self.profiler is None:
            self.profiler = torch.profiler.profile(on_trace_ready=self._trace_ready, **self._kwargs)
            self.profiler.__enter__()
        if action_name not in self._recording:
            rec = torch.profiler.record_function("[volt][profile]" + action_name)
            rec.__enter__()
            self._recording[action_name] = rec

    def stop(self, action_name: str) -> None:
        rec = self._recording.pop(action_name, None)
        if rec is not None:
            rec.__exit__(None, None, None)
        if self.profiler is not None and action_name.endswith(self.STEP_FUNCTIONS):
            self.profiler.step()

    def _trace_ready(self, prof: torch.profiler.profile) -> None:
        # called when a scheduled window closes, and once when the profiler stops
        self._events = prof.events()
        if self.export_to_chrome and self.dirpath:
            os.makedirs(self.dirpath, exist_ok=True)
            n = len(self.trace_paths)
            path = os.path.join(self.dirpath, self._prepare_filename(f"trace{n}" if n else None, ".pt.trace.json"))
            prof.export_chrome_trace(path)
            self.trace_paths.append(path)

    def _stop_profiler(self) -> None:
        for rec in self._recording.values():
            rec.__exit__(None, None, None)
        self._recording.clear()
        if self.profiler is not None:
            prof, self.profiler = self.profiler, None
            prof.__exit__(None, None, None)
            if self._events is None:
                try:
                    self._events = prof.events()
                except (AssertionError, RuntimeError):  # the schedule never reached a recording step
                    self._events = None

    def summary(self) -> str:
        self._stop_profiler()
        if not self._events:
            return ""
        table = self._events.key_averages(group_by_input_shapes=self.group_by_input_shapes).table(
            sort_by=self.sort_by_key, row_limit=self.row_limit, **self.table_kwargs)
        return os.linesep.join([self._header(), table])

    def teardown(self, stage: Optional[str]) -> None:
        self._stop_profiler()
        super().teardown(stage)


def _safe(name: str) -> str:
    """An action name usable in a file name."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


_BY_NAME = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}


def profiler_from_argument(value: Any) -> Profiler:
    """``Trainer(profiler=...)``: None, a Profiler, or one of "simple", "advanced", "pytorch"."""
    if value is None:
        return PassThroughProfiler()
    if isinstance(value, Profiler):
        return value
    if isinstance(value, str):
        cls = _BY_NAME.get(value.lower())
        if cls is None:
            raise ValueError(f"Trainer(profiler={value!r}): choose one of {sorted(_BY_NAME)}, a Profiler instance, "
                             "or None")
        return cls()
    raise TypeError(f"Trainer(profiler=...) must be None, one of {sorted(_BY_NAME)} or a volt.profilers.Profiler, "
                    f"got {type(value).__name__}")
