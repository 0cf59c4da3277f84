"""DistributedDataParallel across processes and nodes (gloo on CPU, NCCL on GPU).

All distributed behaviour of the engine lives here: process group setup, the
DDP wrapper the training step runs through, DistributedSampler injection, the
collectives behind ``self.log(sync_dist=True)``/``all_gather``/``barrier``, and
a small gloo "control" group for host-side agreement (SIGTERM, early stopping)
that never waits on the GPU.
"""
from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import sys
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ContextManager, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import (
    BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler, Sampler, SequentialSampler,
)

from volt import exit_codes
from volt.cluster import ClusterConfigError, ClusterEnvironment, cluster_environment
from volt.contract import ENV_UNEVEN_CHECK_EVERY, job_contract
from volt.strategies.strategy import REDUCE_OPS, Strategy
from volt.utilities import loader_kwargs

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)

#: Strategy names that select DDP, with the note logged when the name is a 1.x one.
_ALIASES: Dict[str, Optional[str]] = {
    "ddp": None,
    "ddp_spawn": "strategy='ddp_spawn' runs as 'ddp' (one process per device started by volt-run)",
    "ddp_fork": "strategy='ddp_fork' runs as 'ddp' (one process per device started by volt-run)",
    "ddp_notebook": "strategy='ddp_notebook' runs as 'ddp' (one process per device started by volt-run)",
    "ddp_find_unused_parameters_true": None,
    "ddp_find_unused_parameters_false": None,
    "ddp_cpu": "accelerator='ddp_cpu' (1.x) runs as strategy='ddp' on accelerator='cpu'",
    "dp": "accelerator/strategy='dp' (1.x DataParallel) runs as 'ddp': one process per device, same global batch "
          "semantics per process",
    "ddp2": "accelerator/strategy='ddp2' (1.x) runs as 'ddp'",
}

_DEFAULT_TIMEOUT_S = 1800.0

#: Training batches between the ranks' agreements on a stream of unknown length (``_AgreedLength``).
_DEFAULT_AGREE_EVERY = 8


def _agree_every() -> int:
    return job_contract().uneven_check_every_n_batches or _DEFAULT_AGREE_EVERY


def normalize_strategy_name(name: str) -> Tuple[str, Optional[str]]:
    """Map a (1.x or 2.x) DDP-family name to ``"ddp"`` and the note to log, if any.

    Raises ValueError for names that are not DDP strategies.
    """
    key = name.strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"strategy={name!r} is not a DDP strategy; expected one of {sorted(_ALIASES)}")
    return "ddp", _ALIASES[key]


class _StepDispatch(nn.Module):
    """Makes ``training_step`` the wrapped module's ``forward``, so DDP's hooks fire."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module, name)(*args, **kwargs)


class _ShardedSampler(Sampler):
    """Deal a user sampler's indices to the ranks, as Lightning's ``DistributedSamplerWrapper`` does.

    Each epoch the sampler's indices are listed; ``shuffle`` permutes their positions with
    ``DistributedSampler``'s permutation (seed + epoch); ``pad`` repeats the first ones up to
    a multiple of the world size (every rank runs as many batches); rank r takes positions
    r, r+N, ... Without ``pad`` (prediction) every index is dealt exactly once and ranks may
    differ by one.
    """

    def __init__(self, sampler: Iterable, num_replicas: int, rank: int, shuffle: bool = False, seed: int = 0,
                 pad: bool = True) -> None:
        self.sampler = sampler
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _indices(self) -> List[Any]:
        indices = list(self.sampler)
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            indices = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
        if self.pad and indices:
            missing = -len(indices) % self.num_replicas
            indices += (indices * -(-missing // len(indices)))[:missing]
        return indices[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._indices())

    def __len__(self) -> int:
        total = len(self.sampler)  # type: ignore[arg-type]
        if self.pad:
            return -(-total // self.num_replicas)
        return len(range(self.rank, total, self.num_replicas))


class _FirstNBatches(Sampler):
    """Yield only the first ``n`` batches of ``batch_sampler`` (equalizes uneven ranks)."""

    def __init__(self, batch_sampler: Iterable, n: int) -> None:
        self.batch_sampler = batch_sampler
        self.n = n
        self.sampler = getattr(batch_sampler, "sampler", None)  # where set_epoch is found

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.batch_sampler):
            if i >= self.n:
                return
            yield batch

    def __len__(self) -> int:
        return self.n


class _AgreedLength:
    """A training iterable whose ranks may yield different numbers of batches.

    DDP deadlocks when one rank runs a step that another does not. A map-style
    loader's length is agreed once per fit (``_equalize_batches``); a stream has
    no trustworthy length, so ranks agree as they go, without a per-step
    collective: each rank reads up to ``every`` batches ahead, one MIN/MAX
    all-reduce on the gloo control group says how many every rank holds, and all
    ranks yield that many. A window that some rank could not fill ends the epoch
    for everyone at the shortest rank's last batch; the longer ranks' remaining
    batches of that epoch are not used (rank 0 warns once). The price: one small
    CPU all-reduce per ``every`` batches and ``every`` batches held in memory.

    Everything but iteration (``dataset``, ``batch_size``, ``len()``) is the wrapped loader's.
    """

    def __init__(self, loader: Iterable, group: Optional[Any], every: int) -> None:
        self.loader = loader
        self.group = group
        self.every = every
        self._warned = False

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        window: List[Any] = []
        exhausted = False
        yielded = 0
        while True:
            while not exhausted and len(window) < self.every:
                try:
                    window.append(next(it))
                except StopIteration:
                    exhausted = True
            counts = torch.tensor([len(window), -len(window)], dtype=torch.int64)
            dist.all_reduce(counts, op=dist.ReduceOp.MIN, group=self.group)
            fewest, most = int(counts[0]), -int(counts[1])
            if fewest < most and not self._warned and dist.get_rank() == 0:
                self._warned = True
                log.warning(
                    "the ranks' training streams have different lengths: the shortest ended after %d batches of "
                    "this epoch while another rank had more; every rank ends the epoch there so that DDP does not "
                    "deadlock (the longer ranks' remaining batches are not used). Shard the stream evenly to use "
                    "all data.", yielded + fewest,
                )
            for batch in window[:fewest]:
                yield batch
            yielded += fewest
            if fewest < self.every:
                return
            window = []

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]  # TypeError for a stream: its length is unknown

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)


def _rebuild(loader: DataLoader, **changes: Any) -> DataLoader:
    """A DataLoader like ``loader`` with a different sampler or batch sampler."""
    kwargs = loader_kwargs(loader)
    kwargs.update(changes)
    cls = type(loader)
    try:
        return cls(loader.dataset, **kwargs)
    except TypeError as err:
        raise TypeError(
            f"volt could not re-create your {cls.__name__} to add a DistributedSampler ({err}). Either accept "
            f"DataLoader's own arguments in {cls.__name__}.__init__, or pass Trainer(use_distributed_sampler=False) "
            f"and shard the data yourself"
        ) from err


def _custom_batch_sampler(batch_sampler: Any, sampler: Sampler, stage: str) -> Any:
    """A new instance of the user's batch sampler class around the distributed ``sampler``, as Lightning
    builds it: ``cls(sampler, batch_size=..., drop_last=...)`` (``drop_last=False`` to predict)."""
    cls = type(batch_sampler)
    batch_size, drop_last = getattr(batch_sampler, "batch_size", None), getattr(batch_sampler, "drop_last", None)
    if batch_size is not None and drop_last is not None:
        try:
            return cls(sampler, batch_size=batch_size, drop_last=drop_last and stage != "predict")
        except TypeError as err:
            reason = f"{cls.__name__}(sampler, batch_size=, drop_last=) failed: {err}"
    else:
        reason = f"{cls.__name__} has no batch_size and drop_last attributes"
    raise TypeError(
        f"the {stage} dataloader's batch_sampler must be re-created around a DistributedSampler under DDP, but "
        f"{reason}. Subclass torch's BatchSampler (or accept sampler, batch_size and drop_last in __init__), or "
        "pass Trainer(use_distributed_sampler=False) and shard by rank in your batch sampler"
    )


#: torch's names for the threads that run gloo collectives (``ProcessGroupGloo::runLoop``).
_COLLECTIVE_THREADS = frozenset({"pt_gloo_runloop"})
#: Checks in a row, ``_QUIET_INTERVAL_S`` apart, that find every such thread asleep.
_QUIET_CHECKS = 3
_QUIET_INTERVAL_S = 0.02
_QUIET_TIMEOUT_S = 10.0


def _collective_thread_states(task_dir: str = "/proc/self/task") -> List[str]:
    """The scheduler state (``R``, ``S``, ``D`` ...) of each gloo collective thread of this process."""
    states = []
    try:
        tids = os.listdir(task_dir)
    except OSError:  # not Linux: nothing to look at
        return states
    for tid in tids:
        try:
            with open(os.path.join(task_dir, tid, "comm")) as handle:
                if handle.read().strip() not in _COLLECTIVE_THREADS:
                    continue
            with open(os.path.join(task_dir, tid, "stat")) as handle:
                stat = handle.read()
        except OSError:  # the thread ended meanwhile
            continue
        states.append(stat[stat.rindex(")") + 2])
    return states


def _wait_for_collective_threads_to_settle(timeout_s: float = _QUIET_TIMEOUT_S) -> bool:
    """Sleep (releasing the GIL) until every gloo collective thread is idle; False on timeout.

    A gloo worker thread drops its reference to a finished collective after the
    caller has seen it complete. The last reference frees Python objects that the
    collective captured (autograd's backward stashes a ``contextvars.Context`` in
    the thread state every collective copies), which needs the GIL. If the
    interpreter is already finalizing, taking the GIL ends that thread with
    ``pthread_exit`` inside a C++ destructor, and the process aborts
    ("terminate called without an active exception", exit 134) after a
    successful run. Under CPU load the worker can lag by a long time, so wait
    here, while the interpreter is fully alive: a thread waiting for the GIL
    gets it while we sleep, and an idle worker sleeps on its queue.
    """
    deadline = time.monotonic() + timeout_s
    quiet = 0
    while quiet < _QUIET_CHECKS:
        if time.monotonic() >= deadline:
            return False
        time.sleep(_QUIET_INTERVAL_S)
        quiet = quiet + 1 if all(state == "S" for state in _collective_thread_states()) else 0
    return True


def _shutdown_distributed() -> None:
    """At exit, before the interpreter finalizes: destroy every process group and let collective threads settle.

    Destroying a group joins its worker threads once nothing references it any
    more (``gc.collect`` drops cycles that still do). The group a
    DistributedDataParallel model used stays referenced inside torch (its
    threads live until the process ends), so the settle wait covers it.
    """
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    gc.collect()
    if not _wait_for_collective_threads_to_settle():
        log.warning("collective threads still busy %.0f s after the end of the run; exiting anyway",
                    _QUIET_TIMEOUT_S)


def _is_peer_failure(error: BaseException) -> bool:
    """Errors a rank gets when another rank died, rather than from its own code."""
    if isinstance(error, getattr(dist, "DistNetworkError", ())):
        return True
    text = str(error)
    markers = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "ECONNRESET",
               "NCCL communicator was aborted", "Socket Timeout",
               "ncclRemoteError", "remote process exited")  # NCCL >= 2.14 when a peer died
    return isinstance(error, RuntimeError) and any(marker in text for marker in markers)


def _install_peer_failure_excepthook() -> None:
    """Exit with PEER_LOST (not USER_ERROR) when a rank dies of another rank's failure."""
    previous = sys.excepthook

    def hook(exc_type: type, exc: BaseException, tb: Any) -> None:
        previous(exc_type, exc, tb)
        if _is_peer_failure(exc):
            sys.stderr.write(f"volt: a peer rank failed; exiting with {exit_codes.PEER_LOST}\n")
            sys.stderr.flush()
            os._exit(exit_codes.PEER_LOST)

    sys.excepthook = hook


def _pin_gradient_buckets(model: nn.parallel.DistributedDataParallel) -> None:
    """Fix the gradient buckets now, so every iteration of every run (resumed or not) reduces the same way.

    DDP rebuilds its buckets once, after the first backward of a process, in the
    order the gradients became ready. A resumed run's first iteration therefore
    reduced in the constructor's layout where the uninterrupted run used the
    rebuilt one. With more than two ranks, gloo's ring adds an element's
    contributions in an order that depends on where the element sits in its
    bucket, so the two runs' weights drifted apart in the last bits. Rebuilding
    here (parameter order; a broadcast of the layout from rank 0, once) leaves
    nothing to rebuild later. With two ranks every element is ``a + b`` in any
    layout, so DDP's own order is kept.
    """
    reducer = model.reducer
    reducer._push_all_rebuilt_params()
    reducer._rebuild_buckets()


class DDPStrategy(Strategy):
    """One process per device, gradients all-reduced by ``torch.nn.parallel.DistributedDataParallel``.

    Args:
        accelerator: ``"cpu"`` (gloo) or ``"cuda"``/``"gpu"`` (NCCL). Default: cuda when available.
        devices: processes per node. Default: from the launcher's environment, else 1.
        num_nodes: number of nodes. Default: from the environment, else 1.
        sync_batchnorm: convert BatchNorm layers to SyncBatchNorm.
        process_group_backend: override ``gloo``/``nccl``.
        timeout: collective timeout in seconds (default ``VOLT_RENDEZVOUS_TIMEOUT`` or 1800).
        **ddp_kwargs: passed to DistributedDataParallel (find_unused_parameters,
            static_graph, gradient_as_bucket_view, bucket_cap_mb, ...).
    """

    def __init__(
        self,
        accelerator: Optional[str] = None,
        devices: Optional[int] = None,
        num_nodes: Optional[int] = None,
        sync_batchnorm: bool = False,
        process_group_backend: Optional[str] = None,
        timeout: Optional[Union[float, timedelta]] = None,
        **ddp_kwargs: Any,
    ) -> None:
        super().__init__()
        self._accelerator = "cuda" if accelerator is None and torch.cuda.is_available() else (accelerator or "cpu")
        self._devices = devices
        self._num_nodes = num_nodes
        self._sync_batchnorm = sync_batchnorm
        self._backend = process_group_backend
        self._timeout = timeout
        self._ddp_kwargs = ddp_kwargs
        self._cluster: Optional[ClusterEnvironment] = None
        self._control_group: Optional[Any] = None
        self._warned_iterable = False
        self._configure(accelerator=self._accelerator, devices=devices, num_nodes=num_nodes)

    def _configure(
        self,
        accelerator: Optional[str] = None,
        devices: Optional[int] = None,
        num_nodes: Optional[int] = None,
        sync_batchnorm: Optional[bool] = None,
    ) -> None:
        """Fill in what the Trainer resolved (its arguments win over the constructor's defaults)."""
        if accelerator is not None:
            accel = {"gpu": "cuda"}.get(accelerator, accelerator)
            if accel not in ("cpu", "cuda"):
                raise ValueError(f"DDPStrategy accelerator must be 'cpu' or 'cuda'/'gpu', got {accelerator!r}")
            if accel == "cuda" and not torch.cuda.is_available():
                raise ValueError("DDPStrategy(accelerator='cuda'): no CUDA device is available")
            self._accelerator = accel
        for name, value in (("devices", devices), ("num_nodes", num_nodes)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"DDPStrategy {name} must be an int >= 1, got {value!r}")
        if devices is not None:
            self._devices = devices
        if num_nodes is not None:
            self._num_nodes = num_nodes
        if sync_batchnorm is not None:
            self._sync_batchnorm = sync_batchnorm
        if self._backend is not None and self._backend not in ("gloo", "nccl", "mpi", "ucc"):
            raise ValueError(f"process_group_backend must be gloo, nccl, mpi or ucc, got {self._backend!r}")

    # --- layout -------------------------------------------------------------------
    @property
    def cluster(self) -> ClusterEnvironment:
        if self._cluster is None:
            self._cluster = cluster_environment(os.environ)
        return self._cluster

    @property
    def devices(self) -> int:
        if self._devices is not None:
            return self._devices
        return self.cluster.local_world_size if self.cluster.launched else 1

    @property
    def num_nodes(self) -> int:
        if self._num_nodes is not None:
            return self._num_nodes
        return self.cluster.num_nodes

    @property
    def root_device(self) -> torch.device:
        if self._accelerator == "cuda":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    @property
    def global_rank(self) -> int:
        return self.cluster.global_rank

    @property
    def local_rank(self) -> int:
        return self.cluster.local_rank

    @property
    def node_rank(self) -> int:
        return self.cluster.node_rank

    @property
    def world_size(self) -> int:
        return self.cluster.world_size if self.cluster.launched else self.devices * self.num_nodes

    @property
    def num_processes(self) -> int:
        return self.devices

    @property
    def process_group_backend(self) -> str:
        return self._backend or ("nccl" if self._accelerator == "cuda" else "gloo")

    @property
    def distributed_sampler_kwargs(self) -> Dict[str, Any]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    @property
    def control_group(self) -> Optional[Any]:
        """A gloo group on the same ranks: host-side flags without touching the GPU stream."""
        return self._control_group

    def _timeout_delta(self) -> timedelta:
        if isinstance(self._timeout, timedelta):
            return self._timeout
        if self._timeout is not None:
            return timedelta(seconds=float(self._timeout))
        return timedelta(seconds=job_contract().rendezvous_timeout_s or _DEFAULT_TIMEOUT_S)

    # --- lifecycle ------------------------------------------------------------------
    def setup_environment(self) -> None:
        cluster = self.cluster
        if not cluster.launched:
            if self.devices * self.num_nodes > 1:
                from volt.launch import exec_under_volt_run

                exec_under_volt_run(self.devices, self.num_nodes)  # does not return
            return  # a world of one: nothing to set up
        try:
            cluster.validate(devices=self.devices, num_nodes=self.num_nodes)
        except ClusterConfigError as err:
            # A supervisor must see "configuration error" (not retryable), not a crash.
            log.error("%s", err)
            raise SystemExit(exit_codes.CONFIG_ERROR) from err
        if self._accelerator == "cuda":
            torch.cuda.set_device(self.root_device)
        if not dist.is_initialized():
            atexit.register(_shutdown_distributed)
            os.environ.setdefault("MASTER_ADDR", cluster.master_addr)
            os.environ.setdefault("MASTER_PORT", str(cluster.master_port))
            kwargs: Dict[str, Any] = {}
            if self._accelerator == "cuda":
                kwargs["device_id"] = self.root_device
            dist.init_process_group(
                self.process_group_backend, rank=cluster.global_rank, world_size=cluster.world_size,
                timeout=self._timeout_delta(), **kwargs,
            )
        if self._control_group is None:
            self._control_group = dist.new_group(backend="gloo", timeout=self._timeout_delta())
            _install_peer_failure_excepthook()
        if cluster.global_rank == 0:
            log.info(
                "DDP: %d process(es) on %d node(s), backend %s, source %s", cluster.world_size, cluster.num_nodes,
                self.process_group_backend, cluster.source,
            )

    def setup(self, trainer: "Trainer", module: "LightningModule") -> None:
        self._trainer = trainer
        self._lightning_module = module
        if self._sync_batchnorm:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # type: ignore[assignment]
            self._lightning_module = module
        module.to(self.root_device)
        if not dist.is_initialized():  # a world of one without a launcher
            self._model = module
            return
        if not any(p.requires_grad for p in module.parameters()):
            self._model = module  # nothing to synchronise (e.g. evaluation only)
            return
        device_ids = [self.root_device.index] if self._accelerator == "cuda" else None
        self._model = nn.parallel.DistributedDataParallel(
            _StepDispatch(module), device_ids=device_ids, **self._ddp_kwargs
        )
        if self.process_group_backend == "gloo" and self.world_size > 2:
            _pin_gradient_buckets(self._model)

    def teardown(self) -> None:
        # The process group outlives one fit(): fit() then test() in the same script
        # reuses it. It is destroyed when the process exits.
        if self._lightning_module is not None:
            self._model = self._lightning_module

    # --- steps --------------------------------------------------------------------------
    def _call_step(self, name: str, *args: Any, **kwargs: Any) -> Any:
        assert self._lightning_module is not None
        if name == "training_step" and isinstance(self._model, nn.parallel.DistributedDataParallel):
            return self._model(name, *args, **kwargs)
        # Evaluation needs no gradient sync; calling the module directly keeps DDP's
        # reducer out of forward passes that have no backward.
        return getattr(self._lightning_module, name)(*args, **kwargs)

    def no_backward_sync(self, should_sync: bool) -> ContextManager:
        if not should_sync and isinstance(self._model, nn.parallel.DistributedDataParallel):
            return self._model.no_sync()
        return contextlib.nullcontext()

    # --- data -----------------------------------------------------------------------------
    def _use_distributed_sampler(self) -> bool:
        trainer = self._trainer
        for attr in ("use_distributed_sampler", "_use_distributed_sampler", "replace_sampler_ddp"):
            value = getattr(trainer, attr, None)
            if isinstance(value, bool):
                return value
        return True

    def process_dataloader(self, dataloader: Iterable, stage: str) -> Iterable:
        if self.world_size <= 1:
            return dataloader
        training = stage in ("train", "fit")
        if not isinstance(dataloader, DataLoader) or isinstance(dataloader.dataset, IterableDataset):
            if isinstance(dataloader, DataLoader):
                self._warn_unsharded_iterable(stage)
            # Streams of unknown or unequal length: every rank must still run the same
            # number of training steps. Evaluation has no per-batch collective to hang in.
            return _AgreedLength(dataloader, self._control_group, _agree_every()) if training else dataloader
        loader = dataloader
        if self._use_distributed_sampler():
            loader = self._with_distributed_sampler(loader, stage)
        if training:
            loader = self._equalize_batches(loader)
        return loader

    def _warn_unsharded_iterable(self, stage: str) -> None:
        if self._warned_iterable or not self.is_global_zero:
            return
        self._warned_iterable = True
        log.warning(
            "the %s dataloader wraps an IterableDataset: volt does not shard it (nor does Lightning), so each of "
            "the %d ranks must yield its own part of the stream. Split it in the dataset's __iter__ by "
            "trainer.global_rank / trainer.world_size (torch.distributed.get_rank() / get_world_size()) and, with "
            "DataLoader workers, by torch.utils.data.get_worker_info(). Ranks that yield different numbers of "
            "batches all stop at the shortest (agreed every %d batches, %s).",
            stage, self.world_size, _agree_every(), ENV_UNEVEN_CHECK_EVERY,
        )

    def _with_distributed_sampler(self, loader: DataLoader, stage: str) -> DataLoader:
        """``loader`` with its sampler dealt to the ranks, by Lightning's rule (docs/distributed.md, "Samplers").

        Training always shuffles (seed ``PL_GLOBAL_SEED`` + epoch), whatever ``shuffle`` the loader
        had, except under ``overfit_batches``; evaluation shuffles only a ``RandomSampler``. A
        ``RandomSampler``/``SequentialSampler`` becomes a ``DistributedSampler``; a custom sampler's
        own order is dealt (``_ShardedSampler``). Both pad to a multiple of the world size.
        Prediction deals each sample exactly once, in order. A custom batch sampler gets the new
        sampler through its constructor.
        """
        batch_sampler = loader.batch_sampler
        sampler = loader.sampler
        inner = getattr(batch_sampler, "sampler", None)
        dealt = (DistributedSampler, _ShardedSampler)
        if isinstance(sampler, dealt) or isinstance(inner, dealt):
            return loader  # dealt already (by the user, or by volt: a loader given back)
        kwargs = self.distributed_sampler_kwargs
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        if stage == "predict":
            new: Sampler = self._prediction_sampler(loader, kwargs["num_replicas"], kwargs["rank"])
        else:
            overfit = bool(getattr(self._trainer, "overfit_batches", 0))
            shuffled = isinstance(inner if batch_sampler is not None else sampler, RandomSampler)
            shuffle = not overfit and (stage in ("train", "fit") or shuffled)
            if isinstance(sampler, (RandomSampler, SequentialSampler)):
                new = DistributedSampler(loader.dataset, shuffle=shuffle, seed=seed, drop_last=False, **kwargs)
            else:
                new = _ShardedSampler(sampler, kwargs["num_replicas"], kwargs["rank"], shuffle=shuffle, seed=seed)
        if batch_sampler is not None and (type(batch_sampler) is not BatchSampler or loader.batch_size is None):
            # the user's own batch sampler (a DataLoader built with batch_sampler= has batch_size None)
            return _rebuild(loader, batch_sampler=_custom_batch_sampler(batch_sampler, new, stage))
        batch_size = loader.batch_size if batch_sampler is not None else None
        drop_last = loader.drop_last if batch_sampler is not None and stage != "predict" else False
        return _rebuild(loader, sampler=new, batch_size=batch_size, shuffle=False, drop_last=drop_last)

    def _prediction_sampler(self, loader: DataLoader, num_replicas: int, rank: int) -> Sampler:
        """Every sample predicted once: the loader's order dealt round-robin, no padding (as Lightning).

        A ``RandomSampler`` is dealt in dataset order instead: each rank draws its own permutation,
        so dealing those would predict some samples twice and others never.
        """
        sampler = loader.sampler
        if isinstance(sampler, RandomSampler):
            if self.is_global_zero:
                log.warning("the predict dataloader shuffles: under DDP volt predicts its samples in dataset order, "
                            "each exactly once")
            sampler = SequentialSampler(loader.dataset)  # type: ignore[arg-type]
        return _ShardedSampler(sampler, num_replicas, rank, pad=False)

    def _equalize_batches(self, loader: DataLoader) -> DataLoader:
        """Every rank must run the same number of training batches: all-reduce MIN once."""
        try:
            mine = len(loader)
        except TypeError:
            return loader
        counts = torch.tensor([mine, -mine], dtype=torch.int64)
        dist.all_reduce(counts, op=dist.ReduceOp.MIN, group=self._control_group)
        fewest, most = int(counts[0]), -int(counts[1])
        if fewest == most:
            return loader
        if self.is_global_zero:
            log.warning(
                "ranks have between %d and %d training batches per epoch; every rank runs %d so that DDP does not "
                "deadlock", fewest, most, fewest,
            )
        if loader.batch_sampler is None:
            raise ValueError("uneven training dataloaders without a batch sampler cannot be equalized")
        kwargs = loader_kwargs(loader)
        return type(loader)(loader.dataset, batch_sampler=_FirstNBatches(loader.batch_sampler, fewest), **kwargs)

    # --- collectives ------------------------------------------------------------------------
    def _on_backend_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.process_group_backend == "nccl" and tensor.device.type != "cuda":
            return tensor.to(self.root_device)
        return tensor

    def reduce(self, tensor: torch.Tensor, reduce_op: str = "mean") -> torch.Tensor:
        if reduce_op not in REDUCE_OPS:
            raise ValueError(f"reduce_op must be one of {REDUCE_OPS}, got {reduce_op!r}")
        if not dist.is_initialized() or self.world_size == 1:
            return tensor
        out = self._on_backend_device(tensor.detach().clone())
        if reduce_op == "mean" and not out.is_floating_point():
            out = out.float()
        op = {"mean": dist.ReduceOp.SUM, "sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
              "min": dist.ReduceOp.MIN}[reduce_op]
        dist.all_reduce(out, op=op)
        if reduce_op == "mean":
            out = out / self.world_size
        return out.to(tensor.device)

    def all_gather(self, tensor: torch.Tensor, sync_grads: bool = False) -> torch.Tensor:
        if not dist.is_initialized() or self.world_size == 1:
            return tensor
        local = self._on_backend_device(tensor.contiguous())
        if sync_grads:
            from torch.distributed.nn.functional import all_gather as differentiable_all_gather

            return torch.stack(differentiable_all_gather(local)).to(tensor.device)
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        return torch.stack(gathered).to(tensor.device)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not dist.is_initialized() or self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self._control_group)
        return box[0]

    def barrier(self, name: Optional[str] = None) -> None:
        if dist.is_initialized() and self.world_size > 1:
            dist.barrier(group=self._control_group)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        if not dist.is_initialized() or self.world_size == 1:
            return decision
        votes = torch.tensor([int(bool(decision))], dtype=torch.int32)
        dist.all_reduce(votes, op=dist.ReduceOp.SUM, group=self._control_group)
        return int(votes) == self.world_size if all else int(votes) > 0

    def __repr__(self) -> str:
        return (
            f"DDPStrategy(accelerator={self._accelerator!r}, devices={self.devices}, num_nodes={self.num_nodes}, "
            f"backend={self.process_group_backend!r})"
        )
