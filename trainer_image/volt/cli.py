"""LightningCLI: a Trainer, model and datamodule configured from the command line and config files.

Lightning's ``LightningCLI`` contract on jsonargparse, an optional dependency (``pip install 'volt[cli]'``).
Without jsonargparse, importing this module works and building a parser or a CLI raises
``ModuleNotFoundError`` naming the package.

    python train.py fit --config config.yaml --trainer.max_epochs 3
    python train.py fit --print_config            # the full config, then exit
    python train.py fit --optimizer Adam --optimizer.lr 0.01

With ``run=True`` (the default) the first argument is a subcommand (fit, validate, test, predict), each
with its own config; every subcommand takes ``--seed_everything``, ``--trainer.*``, ``--model.*``,
``--data.*``, ``--optimizer``/``--lr_scheduler`` and its Trainer method's arguments (``--ckpt_path``...).
A SaveConfigCallback writes the config to ``trainer.log_dir/config.yaml`` when the run starts.
"""
from __future__ import annotations

import os
import sys
from functools import partial, update_wrapper
from types import MethodType
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Type, Union

import torch
from torch.optim import Optimizer

from volt import __version__
from volt.callbacks.base import Callback
from volt.datamodule import LightningDataModule
from volt.loggers.base import Logger
from volt.module import LightningModule
from volt.seed import seed_everything
from volt.trainer import Trainer
from volt.utilities.exceptions import MisconfigurationException
from volt.utilities.model_helpers import is_overridden
from volt.utilities.rank_zero import rank_zero_warn
from volt.utilities.types import LRSchedulerTypeTuple, LRSchedulerTypeUnion

try:
    from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, class_from_function
except ImportError as _err:  # an optional extra: the names exist, using them says what to install
    _JSONARGPARSE_ERROR: Optional[ImportError] = _err
    ArgumentParser = object  # type: ignore[assignment,misc]
    Namespace = dict  # type: ignore[assignment,misc]
else:
    _JSONARGPARSE_ERROR = None

ArgsType = Optional[Union[List[str], Dict[str, Any], "Namespace"]]

#: Trainer methods run as subcommands, and their arguments the CLI supplies itself (never parsed).
SUBCOMMANDS: Dict[str, Set[str]] = {
    "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
    "validate": {"model", "dataloaders", "datamodule"},
    "test": {"model", "dataloaders", "datamodule"},
    "predict": {"model", "dataloaders", "datamodule"},
}
#: The Trainer method arguments each subcommand parses (volt's methods also take 1.x keyword spellings,
#: which a command line has no use for).
SUBCOMMAND_ARGUMENTS: Dict[str, Dict[str, Tuple[Any, Any]]] = {
    "fit": {"ckpt_path": (Optional[str], None)},
    "validate": {"ckpt_path": (Optional[str], None), "verbose": (bool, True)},
    "test": {"ckpt_path": (Optional[str], None), "verbose": (bool, True)},
    "predict": {"ckpt_path": (Optional[str], None), "return_predictions": (Optional[bool], None)},
}


def _require_jsonargparse() -> None:
    if _JSONARGPARSE_ERROR is not None:
        raise ModuleNotFoundError(
            "volt.cli needs jsonargparse: pip install 'volt[cli]' (or 'jsonargparse[signatures]>=4.39')"
        ) from _JSONARGPARSE_ERROR


class ReduceLROnPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """torch's ReduceLROnPlateau with the metric it watches (``monitor``), so a config can choose it."""

    def __init__(self, optimizer: Optimizer, monitor: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(optimizer, *args, **kwargs)
        self.monitor = monitor


class LightningArgumentParser(ArgumentParser):  # type: ignore[misc,valid-type]
    """jsonargparse's ArgumentParser with the Lightning class groups (``trainer``, ``model``, ``data``,
    callbacks, ``optimizer``, ``lr_scheduler``)."""

    def __init__(self, *args: Any, description: str = "volt Trainer command line tool", env_prefix: str = "PL",
                 default_env: bool = False, **kwargs: Any) -> None:
        _require_jsonargparse()
        super().__init__(*args, description=description, env_prefix=env_prefix, default_env=default_env, **kwargs)
        self.callback_keys: List[str] = []
        self._optimizers: Dict[str, Tuple[Any, str]] = {}
        self._lr_schedulers: Dict[str, Tuple[Any, str]] = {}

    def add_lightning_class_args(self, lightning_class: Any, nested_key: str, subclass_mode: bool = False,
                                 required: bool = True) -> List[str]:
        """The arguments of a Trainer, LightningModule, LightningDataModule or Callback class (or a function
        returning one) under ``nested_key``; ``subclass_mode`` accepts any subclass by ``class_path``."""
        if callable(lightning_class) and not isinstance(lightning_class, type):
            lightning_class = class_from_function(lightning_class)
        bases = (Trainer, LightningModule, LightningDataModule, Callback)
        if not (isinstance(lightning_class, type) and issubclass(lightning_class, bases)):
            raise MisconfigurationException(
                f"add_lightning_class_args({lightning_class!r}, {nested_key!r}): pass a callable or a subclass of "
                "Trainer, LightningModule, LightningDataModule or Callback"
            )
        if issubclass(lightning_class, Callback):
            self.callback_keys.append(nested_key)
        if subclass_mode:
            return self.add_subclass_arguments(lightning_class, nested_key, fail_untyped=False, required=required)
        if issubclass(lightning_class, Trainer):
            return self._add_trainer_args(lightning_class, nested_key)
        return self.add_class_arguments(lightning_class, nested_key, fail_untyped=False, instantiate=True,
                                        sub_configs=True)

    def _add_trainer_args(self, trainer_class: type, nested_key: str) -> List[str]:
        # volt's Trainer annotates callbacks and logger as Any (it also takes 1.x forms); typed here so that a
        # config can name them by class_path and the parser builds them.
        typed = {
            "callbacks": Optional[Union[List[Callback], Callback]],
            "logger": Optional[Union[bool, Logger, List[Logger]]],
        }
        added = self.add_class_arguments(trainer_class, nested_key, fail_untyped=False, instantiate=False,
                                         sub_configs=True, skip=set(typed))
        for name, kind in typed.items():
            self.add_argument(f"--{nested_key}.{name}", type=kind, default=None)
        return list(added) + [f"{nested_key}.{name}" for name in typed]

    def add_optimizer_args(self, optimizer_class: Any = (Optimizer,), nested_key: str = "optimizer",
                           link_to: str = "AUTOMATIC") -> None:
        """An optimizer's arguments (all but ``params``); a tuple of classes accepts any subclass by name."""
        classes = optimizer_class if isinstance(optimizer_class, tuple) else (optimizer_class,)
        if not all(isinstance(c, type) and issubclass(c, Optimizer) for c in classes):
            raise TypeError(f"add_optimizer_args: {optimizer_class!r} is not an Optimizer subclass (or a tuple of them)")
        kwargs: Dict[str, Any] = {"instantiate": False, "fail_untyped": False, "skip": {"params"}}
        if isinstance(optimizer_class, tuple):
            self.add_subclass_arguments(optimizer_class, nested_key, **kwargs)
        else:
            self.add_class_arguments(optimizer_class, nested_key, sub_configs=True, **kwargs)
        self._optimizers[nested_key] = (optimizer_class, link_to)

    def add_lr_scheduler_args(self, lr_scheduler_class: Any = LRSchedulerTypeTuple, nested_key: str = "lr_scheduler",
                              link_to: str = "AUTOMATIC") -> None:
        """A learning-rate scheduler's arguments (all but ``optimizer``)."""
        classes = lr_scheduler_class if isinstance(lr_scheduler_class, tuple) else (lr_scheduler_class,)
        if not all(isinstance(c, type) and issubclass(c, LRSchedulerTypeTuple) for c in classes):
            raise TypeError(f"add_lr_scheduler_args: {lr_scheduler_class!r} is not an LRScheduler subclass")
        kwargs: Dict[str, Any] = {"instantiate": False, "fail_untyped": False, "skip": {"optimizer"}}
        if isinstance(lr_scheduler_class, tuple):
            self.add_subclass_arguments(lr_scheduler_class, nested_key, **kwargs)
        else:
            self.add_class_arguments(lr_scheduler_class, nested_key, sub_configs=True, **kwargs)
        self._lr_schedulers[nested_key] = (lr_scheduler_class, link_to)


class SaveConfigCallback(Callback):
    """Writes the run's config to ``trainer.log_dir/config_filename`` at setup (global rank 0).

    An existing file raises (a previous run's record is not overwritten) unless ``overwrite=True``.
    Subclass and override ``save_config`` to also store it elsewhere (e.g. as logger hyper-parameters).
    """

    def __init__(self, parser: LightningArgumentParser, config: "Namespace", config_filename: str = "config.yaml",
                 overwrite: bool = False, multifile: bool = False, save_to_log_dir: bool = True) -> None:
        self.parser = parser
        self.config = config
        self.config_filename = config_filename
        self.overwrite = overwrite
        self.multifile = multifile
        self.save_to_log_dir = save_to_log_dir
        self.already_saved = False
        if not save_to_log_dir and not is_overridden("save_config", self, SaveConfigCallback):
            raise ValueError(
                "SaveConfigCallback(save_to_log_dir=False) saves nothing unless a subclass overrides save_config()"
            )

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        if self.save_to_log_dir:
            log_dir = trainer.log_dir
            if log_dir is None:
                raise RuntimeError("SaveConfigCallback: the Trainer has no log_dir to write the config into")
            path = os.path.join(log_dir, self.config_filename)
            exists = trainer.strategy.broadcast(os.path.isfile(path) if trainer.is_global_zero else False)
            if exists and not self.overwrite:
                raise RuntimeError(
                    f"SaveConfigCallback: {path} exists (a previous run's config). Delete it, pass "
                    "LightningCLI(save_config_kwargs={'overwrite': True}) or LightningCLI(save_config_callback=None)"
                )
            if trainer.is_global_zero:
                os.makedirs(log_dir, exist_ok=True)
                self.parser.save(self.config, path, skip_none=False, overwrite=self.overwrite, multifile=self.multifile)
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Runs on global rank 0 only (no collectives here): store the config somewhere else too."""


class LightningCLI:
    """Parse the command line (or ``args``) into a Trainer, a model and a datamodule, then run a subcommand.

    Arguments follow Lightning's: ``model_class``/``datamodule_class`` (None: any subclass, by class_path),
    ``save_config_callback`` (None: write no config), ``save_config_kwargs``, ``trainer_class``,
    ``trainer_defaults``, ``seed_everything_default``, ``parser_kwargs`` (per subcommand under its name),
    ``parser_class``, ``subclass_mode_model``/``subclass_mode_data``, ``args`` (a list, dict or Namespace in
    place of ``sys.argv[1:]``), ``run`` (False: parse and instantiate only, no subcommand),
    ``auto_configure_optimizers``. ``load_from_checkpoint_support`` is accepted; the model's
    hyper-parameters are not read back from ``--ckpt_path`` into the config.
    """

    def __init__(
        self,
        model_class: Optional[Union[Type[LightningModule], Callable[..., LightningModule]]] = None,
        datamodule_class: Optional[Union[Type[LightningDataModule], Callable[..., LightningDataModule]]] = None,
        save_config_callback: Optional[Type[SaveConfigCallback]] = SaveConfigCallback,
        save_config_kwargs: Optional[Dict[str, Any]] = None,
        trainer_class: Union[Type[Trainer], Callable[..., Trainer]] = Trainer,
        trainer_defaults: Optional[Dict[str, Any]] = None,
        seed_everything_default: Union[bool, int] = True,
        parser_kwargs: Optional[Dict[str, Any]] = None,
        parser_class: Type[LightningArgumentParser] = LightningArgumentParser,
        subclass_mode_model: bool = False,
        subclass_mode_data: bool = False,
        args: ArgsType = None,
        run: bool = True,
        auto_configure_optimizers: bool = True,
        load_from_checkpoint_support: bool = True,
    ) -> None:
        _require_jsonargparse()
        self.save_config_callback = save_config_callback
        self.save_config_kwargs = save_config_kwargs or {}
        self.trainer_class = trainer_class
        self.trainer_defaults = trainer_defaults or {}
        self.seed_everything_default = seed_everything_default
        self.parser_kwargs = parser_kwargs or {}
        self.parser_class = parser_class
        self.auto_configure_optimizers = auto_configure_optimizers
        self.load_from_checkpoint_support = load_from_checkpoint_support
        self.model_class = model_class
        self._model_class = model_class or LightningModule
        self.subclass_mode_model = model_class is None or subclass_mode_model
        self.datamodule_class = datamodule_class
        self._datamodule_class = datamodule_class or LightningDataModule
        self.subclass_mode_data = datamodule_class is None or subclass_mode_data

        main_kwargs = {k: v for k, v in self.parser_kwargs.items() if k not in SUBCOMMANDS}
        subcommand_kwargs = {k: v for k, v in self.parser_kwargs.items() if k in SUBCOMMANDS}
        self.setup_parser(run, main_kwargs, subcommand_kwargs)
        self.parse_arguments(self.parser, args)
        self.subcommand: Optional[str] = self.config["subcommand"] if run else None
        self._set_seed()
        self.before_instantiate_classes()
        self.instantiate_classes()
        self.after_instantiate_classes()
        if self.subcommand is not None:
            self._run_subcommand(self.subcommand)

    # --- parsers --------------------------------------------------------------------------------
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("dump_header", [f"volt=={__version__}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument("-c", "--config", action=ActionConfigFile,
                            help="Path to a configuration file in json or yaml format.")
        return parser

    def setup_parser(self, add_subcommands: bool, main_kwargs: Dict[str, Any],
                     subcommand_kwargs: Dict[str, Any]) -> None:
        self.parser = self.init_parser(**main_kwargs)
        self._subcommand_parsers: Dict[str, LightningArgumentParser] = {}
        if add_subcommands:
            subcommands = self.parser.add_subcommands()
            for name in self.subcommands():
                kwargs = dict(subcommand_kwargs.get(name, {}))
                kwargs.setdefault("description", _first_line(getattr(Trainer, name).__doc__))
                parser = self.init_parser(**kwargs)
                self._add_arguments(parser)
                for arg, (kind, default) in SUBCOMMAND_ARGUMENTS.get(name, {}).items():
                    parser.add_argument(f"--{arg}", type=kind, default=default)
                self._subcommand_parsers[name] = parser
                subcommands.add_subcommand(name, parser, help=kwargs["description"])
        else:
            self._add_arguments(self.parser)

    @staticmethod
    def subcommands() -> Dict[str, Set[str]]:
        """Subcommand name -> the Trainer method arguments the CLI fills in itself."""
        return {name: set(skip) for name, skip in SUBCOMMANDS.items()}

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--seed_everything", type=Union[bool, int], default=self.seed_everything_default,
            help="An int seeds everything with it before the classes are built; True draws a random seed.",
        )

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(self._datamodule_class, "data", subclass_mode=self.subclass_mode_data,
                                        required=self.datamodule_class is not None)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Override to add arguments or link them (``parser.link_arguments``)."""

    def _add_arguments(self, parser: LightningArgumentParser) -> None:
        self.add_default_arguments_to_parser(parser)
        self.add_core_arguments_to_parser(parser)
        self.add_arguments_to_parser(parser)
        if self.auto_configure_optimizers:
            if not parser._optimizers:
                parser.add_optimizer_args((Optimizer,))
            if not parser._lr_schedulers:
                parser.add_lr_scheduler_args(LRSchedulerTypeTuple)
        self.link_optimizers_and_lr_schedulers(parser)

    @staticmethod
    def link_optimizers_and_lr_schedulers(parser: LightningArgumentParser) -> None:
        """Optimizer/scheduler groups added with a ``link_to`` key are passed to it (as class_path/init_args)."""
        for key, (class_type, link_to) in {**parser._optimizers, **parser._lr_schedulers}.items():
            if link_to == "AUTOMATIC":
                continue
            if isinstance(class_type, tuple):
                parser.link_arguments(key, link_to)
            else:
                parser.link_arguments(key, link_to, compute_fn=partial(_with_class_path, class_type))

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        if args is not None and len(sys.argv) > 1:
            rank_zero_warn(
                f"LightningCLI got both args={args!r} and command-line arguments {sys.argv[1:]!r}; only args is parsed"
            )
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(args)

    # --- instantiation ------------------------------------------------------------------------------
    def before_instantiate_classes(self) -> None:
        """Runs before the classes are built from the config."""

    def instantiate_classes(self) -> None:
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def after_instantiate_classes(self) -> None:
        """Runs after the classes are built."""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        extra = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        return self._instantiate_trainer(config, extra)

    def _instantiate_trainer(self, config: Dict[str, Any], callbacks: List[Callback]) -> Trainer:
        given = config.get("callbacks")
        config["callbacks"] = [] if given is None else list(given) if isinstance(given, list) else [given]
        config["callbacks"].extend(callbacks)
        default = self.trainer_defaults.get("callbacks")
        if default is not None:
            config["callbacks"] += default if isinstance(default, list) else [default]
        if self.save_config_callback is not None and not config.get("fast_dev_run", False):
            config["callbacks"].append(self.save_config_callback(
                self._parser(self.subcommand), self.config.get(str(self.subcommand), self.config),
                **self.save_config_kwargs))
        return self.trainer_class(**config)

    def _parser(self, subcommand: Optional[str]) -> LightningArgumentParser:
        return self.parser if subcommand is None else self._subcommand_parsers[subcommand]

    @staticmethod
    def configure_optimizers(lightning_module: LightningModule, optimizer: Optimizer,
                             lr_scheduler: Optional[LRSchedulerTypeUnion] = None) -> Any:
        """What the model's ``configure_optimizers`` returns when the config names the optimizer."""
        if lr_scheduler is None:
            return optimizer
        if isinstance(lr_scheduler, ReduceLROnPlateau):
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "monitor": lr_scheduler.monitor}}
        return [optimizer], [lr_scheduler]

    def _add_configure_optimizers_method_to_model(self, subcommand: Optional[str]) -> None:
        """With one AUTOMATIC optimizer group (and at most one scheduler group) configured, the model's
        ``configure_optimizers`` builds them (replacing the model's own, with a warning)."""
        if not self.auto_configure_optimizers:
            return
        parser = self._parser(subcommand)
        optimizers = _automatic(parser._optimizers, (Optimizer,))
        schedulers = _automatic(parser._lr_schedulers, LRSchedulerTypeTuple)
        if not optimizers:
            return
        if len(optimizers) > 1 or len(schedulers) > 1:
            raise MisconfigurationException(
                f"LightningCLI: at most one optimizer and one lr_scheduler group may be AUTOMATIC, found "
                f"{optimizers + schedulers}; link the groups (link_to=...) and write configure_optimizers yourself"
            )
        optimizer_init = self._class_init(parser._optimizers[optimizers[0]][0], optimizers[0])
        if not optimizer_init:
            return
        scheduler_init = self._class_init(parser._lr_schedulers[schedulers[0]][0], schedulers[0]) if schedulers else None
        if is_overridden("configure_optimizers", self.model, LightningModule):
            rank_zero_warn(f"{type(self.model).__name__}.configure_optimizers is replaced by the optimizer in the config")
        optimizer = instantiate_class(self.model.parameters(), optimizer_init)
        scheduler = instantiate_class(optimizer, scheduler_init) if scheduler_init else None
        fn = partial(self.configure_optimizers, optimizer=optimizer, lr_scheduler=scheduler)
        update_wrapper(fn, self.configure_optimizers)
        self.model.configure_optimizers = MethodType(fn, self.model)

    def _class_init(self, class_type: Any, key: str) -> Optional[Dict[str, Any]]:
        init = self._get(self.config_init, key)
        if init is not None and not isinstance(class_type, tuple):
            init = _with_class_path(class_type, init)
        return _to_dict(init) if init else None

    def _get(self, config: Any, key: str, default: Any = None) -> Any:
        return config.get(str(self.subcommand), config).get(key, default)

    # --- running ------------------------------------------------------------------------------
    def _run_subcommand(self, subcommand: str) -> None:
        before = getattr(self, f"before_{subcommand}", None)
        if callable(before):
            before()
        fn = getattr(self, subcommand, getattr(self.trainer, subcommand))
        kwargs = {k: v for k, v in self.config_init[subcommand].items() if k in SUBCOMMAND_ARGUMENTS[subcommand]}
        kwargs["model"] = self.model
        if self.datamodule is not None:
            kwargs["datamodule"] = self.datamodule
        fn(**kwargs)
        after = getattr(self, f"after_{subcommand}", None)
        if callable(after):
            after()

    def _set_seed(self) -> None:
        seed = self._get(self.config, "seed_everything")
        if seed is False:
            return
        seed = seed_everything(workers=True) if seed is True else seed_everything(seed, workers=True)
        (self.config[self.subcommand] if self.subcommand else self.config)["seed_everything"] = seed


def instantiate_class(args: Any, init: Dict[str, Any]) -> Any:
    """``class_path(*args, **init_args)`` for ``init = {"class_path": "pkg.Class", "init_args": {...}}``."""
    init = _to_dict(init)
    module_name, _, class_name = init["class_path"].rpartition(".")
    module = __import__(module_name, fromlist=[class_name])
    cls = getattr(module, class_name)
    positional = args if isinstance(args, tuple) else (args,)
    return cls(*positional, **_to_dict(init.get("init_args", {})))


def instantiate_module(class_type: Type[Any], config: Dict[str, Any]) -> Any:
    """A LightningModule or LightningDataModule subclass of ``class_type`` built from a class_path config."""
    _require_jsonargparse()
    parser = ArgumentParser(exit_on_error=False)
    if "_class_path" in config:
        config = {"class_path": config.pop("_class_path"), "dict_kwargs": config}
    parser.add_subclass_arguments(class_type, "module", fail_untyped=False)
    return parser.instantiate_classes(parser.parse_object({"module": config})).module


def _automatic(register: Dict[str, Tuple[Any, str]], kinds: Tuple[type, ...]) -> List[str]:
    out = []
    for key, (base, link_to) in register.items():
        bases = base if isinstance(base, tuple) else (base,)
        if link_to == "AUTOMATIC" and any(issubclass(b, kinds) for b in bases):
            out.append(key)
    return out


def _with_class_path(class_type: type, init_args: Any) -> Dict[str, Any]:
    init = _to_dict(init_args)
    if "class_path" in init:
        return init
    return {"class_path": f"{class_type.__module__}.{class_type.__name__}", "init_args": init}


def _to_dict(value: Any) -> Dict[str, Any]:
    if value is None:
        return {}
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        return value.as_dict()
    return dict(value)


def _first_line(doc: Optional[str]) -> Optional[str]:
    return doc.strip().splitlines()[0] if doc else None


__all__ = [
    "LightningArgumentParser",
    "LightningCLI",
    "ReduceLROnPlateau",
    "SaveConfigCallback",
    "instantiate_class",
    "instantiate_module",
]
