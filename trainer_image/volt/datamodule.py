"""LightningDataModule: the data side of a training recipe (download, split, loaders)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional

import torch

from volt.hparams import HyperparametersMixin
from volt.utilities import move_data_to_device

if TYPE_CHECKING:  # pragma: no cover
    from volt.trainer.trainer import Trainer


class LightningDataModule(HyperparametersMixin):
    """Override ``prepare_data``, ``setup(stage)`` and the ``*_dataloader`` methods you need."""

    name: Optional[str] = None
    CHECKPOINT_HYPER_PARAMS_KEY = "datamodule_hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "datamodule_hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "datamodule_hparams_type"

    def __init__(self) -> None:
        self.trainer: Optional["Trainer"] = None
        self.prepare_data_per_node: bool = True

    def prepare_data(self) -> None:
        """Download or write data once per node (or once in total: ``prepare_data_per_node=False``)."""

    def setup(self, stage: str) -> None:
        """Build datasets on every process; ``stage`` is fit, validate, test or predict."""

    def teardown(self, stage: str) -> None: ...

    def train_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define train_dataloader()")

    def val_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define val_dataloader()")

    def test_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define test_dataloader()")

    def predict_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define predict_dataloader()")

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return move_data_to_device(batch, device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def on_exception(self, exception: BaseException) -> None: ...

    def state_dict(self) -> Dict[str, Any]:
        """State to store in checkpoints under this class's name."""
        return {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None: ...

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, **kwargs: Any) -> "LightningDataModule":
        """Build the datamodule from a checkpoint's ``datamodule_hyper_parameters`` (``kwargs`` override them)
        and load the state it saved under its class name."""
        from volt.checkpoint import load

        checkpoint = load(checkpoint_path, map_location=map_location or "cpu")
        hparams = dict(checkpoint.get(cls.CHECKPOINT_HYPER_PARAMS_KEY) or {})
        hparams.update(kwargs)
        datamodule = cls(**hparams)
        state = checkpoint.get(cls.__qualname__)
        if state:
            datamodule.load_state_dict(state)
        return datamodule

    @classmethod
    def from_datasets(
        cls,
        train_dataset: Any = None,
        val_dataset: Any = None,
        test_dataset: Any = None,
        predict_dataset: Any = None,
        batch_size: int = 1,
        num_workers: int = 0,
        **dataloader_kwargs: Any,
    ) -> "LightningDataModule":
        """A DataModule that wraps the given datasets in DataLoaders (train shuffled)."""
        from torch.utils.data import DataLoader

        def loader(ds: Any, shuffle: bool) -> DataLoader:
            return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, **dataloader_kwargs)

        dm = cls()
        if train_dataset is not None:
            dm.train_dataloader = lambda: loader(train_dataset, True)  # type: ignore[method-assign]
        if val_dataset is not None:
            dm.val_dataloader = lambda: loader(val_dataset, False)  # type: ignore[method-assign]
        if test_dataset is not None:
            dm.test_dataloader = lambda: loader(test_dataset, False)  # type: ignore[method-assign]
        if predict_dataset is not None:
            dm.predict_dataloader = lambda: loader(predict_dataset, False)  # type: ignore[method-assign]
        return dm
