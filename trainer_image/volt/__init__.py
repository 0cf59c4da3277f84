"""volt: a Lightning-style PyTorch training engine (``from volt import Trainer, LightningModule``)."""
__version__ = "0.1.0"

from volt.callbacks.base import Callback  # noqa: E402
from volt.datamodule import LightningDataModule  # noqa: E402
from volt.module import LightningModule  # noqa: E402
from volt.seed import seed_everything  # noqa: E402
from volt.trainer import Trainer  # noqa: E402

__all__ = ["Callback", "LightningDataModule", "LightningModule", "Trainer", "seed_everything", "__version__"]
