"""Routes ``self.log`` values to loggers, the progress bar and ``callback_metrics``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch

from volt.trainer.results import LoggedMetric, ResultCollection, forked_names
from volt.utilities import infer_batch_size

if TYPE_CHECKING:  # pragma: no cover
    from volt.trainer.trainer import Trainer


class LoggerConnector:
    """One ResultCollection per loop; the trainer's metric dicts are built from them."""

    def __init__(self, trainer: "Trainer") -> None:
        self.trainer = trainer
        self.train_results = ResultCollection()
        self.eval_results = ResultCollection()
        self.active: ResultCollection = self.train_results
        self.dataloader_suffix = ""  # "/dataloader_idx_N" while evaluating several loaders
        self.current_batch: Any = None
        self._batch_size: Optional[int] = None
        self._callback: Dict[str, torch.Tensor] = {}
        self.logged_metrics: Dict[str, torch.Tensor] = {}
        self._progress_bar: Dict[str, torch.Tensor] = {}
        self.enabled = True  # barebones=True turns self.log into a no-op
        self.fx: Optional[str] = None  # the hook running now: self.log's on_step/on_epoch defaults follow it
        # Validation/test batches seen per dataloader in this fit/validate/test call: the logger step
        # of on_step eval metrics (Lightning's count; it runs on across validation runs in one fit).
        self.eval_steps_seen: Dict[int, int] = {}
        self._epoch_value: Optional[Tuple[int, torch.Tensor]] = None  # (epoch, its tensor) for _send

    # --- recording ------------------------------------------------------------
    def set_batch(self, batch: Any) -> None:
        self.current_batch = batch
        self._batch_size = None

    def _current_batch_size(self) -> int:
        if self._batch_size is None:
            self._batch_size = infer_batch_size(self.current_batch)
        return self._batch_size

    def log(self, name: str, value: Any, add_dataloader_idx: bool = True, *, prog_bar: bool, logger: bool,
            on_step: Optional[bool], on_epoch: Optional[bool], reduce_fx: Any, sync_dist: bool,
            batch_size: Optional[int]) -> None:
        # LightningModule.log inlines this body: keep the two in step.
        if not self.enabled:
            return
        fx = self.fx
        if fx is None:
            raise RuntimeError(f"self.log({name!r}) must be called from a LightningModule or Callback hook")
        self.active.log(
            fx, name + self.dataloader_suffix if add_dataloader_idx else name, value, prog_bar=prog_bar, logger=logger,
            on_step=on_step, on_epoch=on_epoch, reduce_fx=reduce_fx, sync_dist=sync_dist, batch_size=batch_size,
            batch_size_fn=self._current_batch_size, strategy=self.trainer.strategy,
        )

    # --- step and epoch boundaries ----------------------------------------------
    def flush_step(self, step: int, extra: Optional[Dict[str, torch.Tensor]] = None) -> None:
        """At a logging point: reduce fresh step values and send those marked logger=True."""
        fresh = self.train_results.step_metrics(self.trainer.strategy)
        to_log: Dict[str, torch.Tensor] = dict(extra or {})
        for m in fresh.values():
            step_name, _ = forked_names(m)
            if m.logger:
                to_log[step_name] = m.step_value  # type: ignore[assignment]
        if to_log:
            self._send(to_log, step)

    def flush_eval_step(self, dataloader_idx: int) -> None:
        """After a validation/test batch: send its on_step values (``step`` = eval batches seen, no ``epoch``)."""
        step = self.eval_steps_seen.get(dataloader_idx, 0)
        self.eval_steps_seen[dataloader_idx] = step + 1
        fresh = self.eval_results.step_metrics(self.trainer.strategy)
        to_log = {forked_names(m)[0]: m.step_value for m in fresh.values() if m.logger}
        if to_log:
            self._send(to_log, step, add_epoch=False)  # type: ignore[arg-type]

    def preview_epoch(self, results: ResultCollection) -> None:
        """Epoch values so far into callback_metrics and the bar, once the epoch's batches are done.

        Lightning computes them whenever callback_metrics is read at that point, so the
        epoch-end hooks see ``x_epoch``; ``finish_epoch`` recomputes them after the module's
        hook. Metric objects are computed here without a reset (torchmetrics caches the result,
        so finish_epoch's compute() reuses it unless the hook updated the metric). Under DDP the
        sync_dist values are reduced here, as Lightning's hooks see them; finish_epoch reuses them
        unless the hook logged the same name again (no second collective).
        """
        distributed = self.trainer.world_size > 1
        if distributed:
            results.sync_epoch(self.trainer.strategy)
        for m in results.metrics.values():
            if not m.on_epoch:
                continue
            if m.metric_object is not None:
                m.epoch_value = torch.as_tensor(m.metric_object.compute()).detach()
            elif m.total is None:
                continue
            elif distributed and m.sync_dist:
                m.epoch_value = m.synced_epoch_value
            else:
                m.epoch_value = m.total / max(m.weight, 1e-12) if m.reduce_fx == "mean" else m.total
            _, epoch_name = forked_names(m)
            self._callback[epoch_name] = self._callback[m.name] = m.epoch_value
            if m.prog_bar:
                self._progress_bar[epoch_name] = m.epoch_value

    def finish_epoch(self, results: ResultCollection, step: int) -> None:
        """Compute epoch aggregates of ``results`` and send them to loggers."""
        results.compute_epoch(self.trainer.strategy)
        to_log: Dict[str, torch.Tensor] = {}
        for m in results.metrics.values():
            if m.on_epoch and m.epoch_value is not None:
                _, epoch_name = forked_names(m)
                self._callback[epoch_name] = m.epoch_value
                self._callback[m.name] = m.epoch_value
                if m.prog_bar:
                    self._progress_bar[epoch_name] = m.epoch_value
                if m.logger:
                    to_log[epoch_name] = m.epoch_value
        if to_log and not self.trainer.sanity_checking:  # sanity-check results never reach loggers
            self._send(to_log, step)

    def _send(self, metrics: Dict[str, torch.Tensor], step: int, add_epoch: bool = True) -> None:
        trainer = self.trainer
        metrics = dict(metrics)
        if not trainer.loggers:  # Lightning's logged_metrics then hold the values alone, without ``epoch``
            self.logged_metrics.update(metrics)
            return
        if add_epoch and "epoch" not in metrics:
            metrics["epoch"] = self._epoch_tensor(trainer.current_epoch)
        self.logged_metrics.update(metrics)
        # One host transfer for the whole dict, not one .item() per value; a value that is
        # already a detached float32 scalar on the device (what self.log stores) is stacked as is.
        device = trainer.strategy.root_device
        float32, Tensor = torch.float32, torch.Tensor
        values = torch.stack([
            v if (type(v) is Tensor and v.dtype is float32 and v.ndim == 0 and not v.requires_grad and v.device == device)
            else v.detach().to(device, float32).reshape(())
            for v in metrics.values()
        ]).tolist()
        floats = dict(zip(metrics, values))
        for logger in trainer.loggers:
            logger.log_metrics(floats, step=step)

    def _epoch_tensor(self, epoch: int) -> torch.Tensor:
        """``epoch`` as the float tensor loggers get: one per epoch, not one per logging point."""
        cached = self._epoch_value
        if cached is None or cached[0] != epoch:
            cached = self._epoch_value = (epoch, torch.tensor(float(epoch)))
        return cached[1]

    def reset_metrics(self) -> None:
        """A new fit/validate/test/predict starts with empty metric dicts, as in Lightning."""
        self.train_results = ResultCollection()
        self.eval_results = ResultCollection()
        self.active = self.train_results
        self._callback = {}
        self.logged_metrics = {}
        self._progress_bar = {}

    def reset_eval(self) -> None:
        self.eval_results = ResultCollection()

    def reset_train_epoch(self) -> None:
        # Step values survive (callback_metrics keeps the last one); epoch aggregates restart.
        for m in self.train_results.metrics.values():
            m.total, m.weight, m.synced_epoch_value = None, 0.0, None

    def discard_sanity_results(self, before: Dict[str, torch.Tensor]) -> None:
        """Sanity-check metrics must not reach callbacks (they would look like real validation)."""
        self._callback.clear()
        self._callback.update(before)
        self._progress_bar = {k: v for k, v in self._progress_bar.items() if k in before}

    # --- the three dicts ----------------------------------------------------------
    def _live(self) -> List[LoggedMetric]:
        return [m for r in (self.train_results, self.eval_results) for m in r.metrics.values()]

    @property
    def callback_metrics(self) -> Dict[str, torch.Tensor]:
        # One dict that lives for the entry point, as Lightning's: what a callback writes into it
        # (LearningRateMonitor's rates, ``trainer.callback_metrics.update(...)``) stays there.
        out = self._callback
        for m in self.train_results.metrics.values():
            if m.on_step and m.step_value is not None:
                step_name, _ = forked_names(m)
                out[step_name] = m.step_value
                if m.on_epoch and m.epoch_value is None:
                    out[m.name] = m.step_value
                elif not m.on_epoch:
                    out[m.name] = m.step_value
        return out

    @property
    def progress_bar_metrics(self) -> Dict[str, float]:
        tensors = dict(self._progress_bar)
        for m in self.train_results.metrics.values():
            if m.prog_bar and m.on_step and m.step_value is not None:
                tensors[forked_names(m)[0]] = m.step_value
        if not tensors:
            return {}
        device = self.trainer.strategy.root_device
        values = torch.stack([v.detach().to(device, torch.float32).reshape(()) for v in tensors.values()]).tolist()
        return dict(zip(tensors, values))
