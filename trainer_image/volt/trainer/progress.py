"""Progress: the loop counters, one serializable object that checkpoints store."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict


@dataclass
class Progress:
    """Where training is. Saved as ``checkpoint["loops"]["fit_loop"]``.

    ``batch_idx`` counts the batches of ``current_epoch`` that are fully done;
    ``epoch_batches_done`` is set once the epoch's last batch is done (before
    end-of-epoch validation), so a checkpoint taken then resumes at the next epoch.
    """

    current_epoch: int = 0
    global_step: int = 0  # optimizer steps
    batch_idx: int = 0
    batches_that_stepped: int = 0  # training batches done, over all epochs (logger step)
    epoch_batches_done: bool = False
    epoch_schedulers_stepped: bool = False  # the epoch-interval LR schedulers ran for current_epoch

    def start_epoch(self, epoch: int) -> None:
        self.current_epoch = epoch
        self.batch_idx = 0
        self.epoch_batches_done = False
        self.epoch_schedulers_stepped = False

    def state_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        unknown = set(state) - known
        if unknown:
            raise ValueError(f"checkpoint loops.fit_loop has unknown fields {sorted(unknown)} (saved by a newer volt?)")
        for name, value in state.items():
            setattr(self, name, value)
