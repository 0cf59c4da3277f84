"""volt: a Lightning-style PyTorch training engine (``from volt import Trainer, LightningModule``)."""
__version__ = "0.1.0"

import logging as _logging
import os as _os

from volt.contract import ENV_LAUNCHER as _ENV_LAUNCHER, VOLT_RUN as _VOLT_RUN


def _configure_package_logger() -> None:
    """Engine messages (overrides applied, checkpoints restored) reach stderr, as Lightning's do.

    Only rank 0 logs INFO; other ranks log warnings and errors. Each line carries its
    time and global rank. An application that configures logging itself can remove or
    replace this handler.
    """
    logger = _logging.getLogger("volt")
    if logger.handlers:
        return
    handler = _logging.StreamHandler()
    rank = _os.environ.get("RANK", "0")
    # volt-run already puts "[rank N] " before every line of its workers, and is no rank itself.
    label = "" if _os.environ.get(_ENV_LAUNCHER) == _VOLT_RUN or "RANK" not in _os.environ else f"[rank {rank}] "
    handler.setFormatter(_logging.Formatter(f"{label}%(asctime)s %(name)s %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(_logging.INFO if rank in ("", "0") else _logging.WARNING)
    logger.propagate = False


_configure_package_logger()

from volt.callbacks.base import Callback  # noqa: E402
from volt.datamodule import LightningDataModule  # noqa: E402
from volt.module import LightningModule  # noqa: E402
from volt.seed import seed_everything  # noqa: E402
from volt.trainer import Trainer  # noqa: E402

# Lightning's top level exposes its subpackages (``pl.loggers.CSVLogger``, ``pl.core.LightningModule``).
from volt import core, loggers  # noqa: E402,F401

__all__ = ["Callback", "LightningDataModule", "LightningModule", "Trainer", "seed_everything", "__version__"]
