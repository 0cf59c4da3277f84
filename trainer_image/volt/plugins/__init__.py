"""What ``Trainer(plugins=...)`` accepts: precision, checkpoint IO and cluster environment.

Lightning 2.x takes plugin *instances* of four kinds; volt takes the three that
mean something here (there is no LayerSync plugin: ``sync_batchnorm=True`` is the
switch):

* a :class:`Precision` instance (``volt.precision.Precision`` or a subclass), in
  place of ``precision=``;
* a :class:`CheckpointIO` instance: how checkpoint files are written, read and
  deleted (``trainer.save_checkpoint``, ModelCheckpoint, ``fit(ckpt_path=...)``);
* a :class:`ClusterEnvironment` (``volt.cluster``'s record of ranks and the master
  address), in place of reading them from the launcher's environment variables.

A 1.x DDP strategy name (``plugins="ddp_find_unused_parameters_true"``) selects
that strategy, as 1.x did. ``volt.trainer.arguments.parse_plugins`` does the checks.
"""
from volt.cluster import ClusterEnvironment
from volt.plugins.io import CheckpointIO, TorchCheckpointIO
from volt.precision import Precision

__all__ = ["CheckpointIO", "ClusterEnvironment", "Precision", "TorchCheckpointIO"]
