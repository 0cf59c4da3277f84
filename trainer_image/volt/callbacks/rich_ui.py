"""RichProgressBar and RichModelSummary: Lightning's rich-based names, drawn by volt's own bar and table.

Decision: these accept Lightning 2.6's constructor arguments and behave as volt's
``ProgressBar`` and ``ModelSummary``; they never import rich, even when it is installed.

Why: a script that names ``RichProgressBar`` wants a progress display and a model
table, and must keep running when ported. rich is not a volt dependency, so requiring
it (Lightning raises ModuleNotFoundError without it) would break ports on images
without it, and switching to rich only when it happens to be installed would give two
display paths whose behaviour depends on the image. volt's bar also keeps its
guarantees: it reads metric values only when it draws (no device sync per step) and it
is silent when stdout is not a terminal (pod logs). What is lost is rich's styling.

Argument mapping:

* ``RichProgressBar(refresh_rate=100)``: in Lightning this is draws per second (rich's
  ``refresh_per_second``); here it caps volt's draws per second, and ``0`` disables the bar.
* ``leave``: keep each finished epoch's line, as volt's bar does.
* ``theme``: a ``RichProgressBarTheme`` (same fields and defaults), kept as ``self.theme``, not applied.
* ``console_kwargs``: ``file`` is the stream drawn to and ``force_terminal=True`` draws on a
  non-TTY stream; other rich Console options are kept and ignored.
* ``RichModelSummary(max_depth=1, **summarize_kwargs)``: volt's summary table; the rich
  styling options (``header_style``, ...) are kept as ``self._summarize_kwargs`` and ignored.

Not provided: the rich ``Task`` properties (``train_progress_bar``, ...) and
``RichModelSummary.summarize``'s rich table, which only exist on top of rich. Lightning's
trainer also swaps the default ModelSummary for RichModelSummary when a RichProgressBar
is used; volt's trainer keeps ModelSummary, which prints the same table here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from volt.callbacks.model_summary import ModelSummary
from volt.callbacks.progress import ProgressBar


@dataclass
class RichProgressBarTheme:
    """Lightning's rich styles for each part of the bar (kept for compatibility, not drawn)."""

    description: Any = ""
    progress_bar: Any = "#6206E0"
    progress_bar_finished: Any = "#6206E0"
    progress_bar_pulse: Any = "#6206E0"
    batch_progress: Any = ""
    time: Any = "dim"
    processing_speed: Any = "dim underline"
    metrics: Any = "italic"
    metrics_text_delimiter: str = " "
    metrics_format: str = ".3f"


class RichProgressBar(ProgressBar):
    """Lightning's ``RichProgressBar`` arguments on volt's terminal bar (see the module docstring).

    Args:
        refresh_rate: most draws per second; 0 disables the bar.
        leave: keep the finished epoch's line.
        theme: rich styles (accepted, not applied).
        console_kwargs: ``file`` (the stream) and ``force_terminal`` are used; the rest is ignored.
    """

    def __init__(
        self,
        refresh_rate: int = 100,
        leave: bool = False,
        theme: Optional[RichProgressBarTheme] = None,
        console_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, (int, float)) or refresh_rate < 0:
            raise ValueError(f"RichProgressBar(refresh_rate={refresh_rate!r}) must be a number >= 0 (draws per second)")
        if theme is not None and not isinstance(theme, RichProgressBarTheme):
            raise TypeError(f"RichProgressBar(theme=...) must be a RichProgressBarTheme, got {type(theme).__name__}")
        if console_kwargs is not None and not isinstance(console_kwargs, dict):
            raise TypeError(f"RichProgressBar(console_kwargs=...) must be a dict, got {type(console_kwargs).__name__}")
        kwargs = dict(console_kwargs or {})
        super().__init__(
            refresh_rate=1 if refresh_rate > 0 else 0,  # every batch is a candidate; the per-second cap decides
            leave=leave,
            max_refresh_per_s=float(refresh_rate) if refresh_rate > 0 else 10.0,
            stream=kwargs.get("file"),
        )
        self._draws_per_second = refresh_rate
        self.theme = theme if theme is not None else RichProgressBarTheme()
        self._console_kwargs = kwargs

    @property
    def refresh_rate(self) -> float:
        """Lightning's meaning: draws per second."""
        return self._draws_per_second

    def _is_tty(self) -> bool:
        return bool(self._console_kwargs.get("force_terminal")) or super()._is_tty()


class RichModelSummary(ModelSummary):
    """Lightning's ``RichModelSummary`` arguments on volt's summary table (see the module docstring)."""

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        super().__init__(max_depth=max_depth, **summarize_kwargs)
