"""MLflow, W&B and Comet loggers, one script body for two engines:
``python loggers_external_script.py volt|lightning OUT.json [SCENARIO...]`` (all scenarios by default).

Only the import block depends on the engine. Each scenario trains a small model (or calls the logger
API directly), then reads back what the client library wrote offline -- MLflow's file store through
``MlflowClient``, the W&B run's ``.wandb`` record file through wandb's protobuf messages, Comet's
offline archive -- and returns it as plain JSON next to what was logged (a CSVLogger beside the
logger under test, the model's hparams, the checkpoint files). ``test_loggers_external.py`` compares
the two engines and checks volt's records against what was logged.

Needs the test venv (``make lightning-env``) with wandb, mlflow-skinny and comet_ml installed, and
the environment ``test_loggers_external.py`` sets (offline modes, no telemetry).
"""
from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import os
import pickle
import struct
import sys
import tempfile
import traceback
import warnings
import zipfile
from typing import Any, Callable, Dict, List, Optional

ENGINE = sys.argv[1] if len(sys.argv) > 1 else "volt"
if ENGINE == "volt":
    import volt as pl
    from volt.callbacks import ModelCheckpoint
    from volt.loggers import CSVLogger
    from volt.loggers.base import rank_zero_only
    from volt.loggers.comet import CometLogger
    from volt.loggers.mlflow import MLFlowLogger
    from volt.loggers.wandb import WandbLogger
elif ENGINE == "lightning":
    import logging

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.comet import CometLogger
    from lightning.pytorch.loggers.mlflow import MLFlowLogger
    from lightning.pytorch.loggers.wandb import WandbLogger
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
else:
    raise SystemExit(f"usage: {sys.argv[0]} volt|lightning OUT.json [SCENARIO...]")

# Which client libraries the engine's logger modules imported by themselves (volt: none, lazily).
IMPORTED_AT_START = {name: name in sys.modules for name in ("mlflow", "wandb", "comet_ml")}

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

warnings.filterwarnings("ignore")  # library deprecation notes, batch-size inference: noise, not behaviour
torch.set_num_threads(1)
# Comet prints its offline summary through logging at exit; keep the subprocess output short.
import logging as _logging  # noqa: E402

_logging.getLogger("comet_ml").setLevel(_logging.ERROR)


# --------------------------------------------------------------------------------------------
# the model and the run
# --------------------------------------------------------------------------------------------
class Model(pl.LightningModule):
    def __init__(self, lr: float = 0.05, layers: Optional[Dict[str, Any]] = None, name: str = "tiny") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(4, 1)
        self.example_input_array = torch.zeros(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


HPARAMS = {"lr": 0.05, "layers": {"hidden": 8, "act": "relu"}, "name": "tiny"}


def loader(n: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)), batch_size=8)


def fit(logger: Any, root: str, save_top_k: int = 2, before_fit: Optional[Callable[[Any], None]] = None) -> Dict[str, Any]:
    """Two epochs of 4 steps, logging every 2 steps, next to a CSVLogger; returns what was logged."""
    torch.manual_seed(0)
    model = Model(**HPARAMS)
    if before_fit is not None:
        before_fit(model)
    checkpoint = ModelCheckpoint(monitor="val_loss", save_top_k=save_top_k, save_last=True)
    csv_logger = CSVLogger(os.path.join(root, "csv"), name="", version=0)
    trainer = pl.Trainer(
        default_root_dir=root, logger=[logger, csv_logger], callbacks=[checkpoint], max_epochs=2,
        log_every_n_steps=2, accelerator="cpu", devices=1, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, loader(32, 0), loader(16, 1))
    with open(os.path.join(csv_logger.log_dir, "metrics.csv"), newline="") as f:
        rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    files = {os.path.basename(p): _sha(p) for p in glob.glob(os.path.join(checkpoint.dirpath, "*.ckpt"))}
    return {
        "csv": [{**row, "step": int(row["step"])} for row in rows],
        "checkpoint_dir": checkpoint.dirpath,
        "checkpoints": files,
        "best": os.path.basename(checkpoint.best_model_path),
        "trainer_log_dir": trainer.log_dir,
        "hparams": dict(model.hparams),
    }


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _relative(path: Optional[str], root: str, **ids: Optional[str]) -> Optional[str]:
    """``path`` under ``root`` with the run's generated ids replaced by ``{name}`` placeholders."""
    if path is None:
        return None
    path = os.path.relpath(os.path.realpath(path), os.path.realpath(root))
    for placeholder, value in ids.items():
        if value:
            path = path.replace(value, "{" + placeholder + "}")
    return path


# --------------------------------------------------------------------------------------------
# reading back what each library wrote
# --------------------------------------------------------------------------------------------
def read_mlflow(tracking_uri: str, run_id: str) -> Dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    metrics = {key: [[m.step, m.value] for m in sorted(client.get_metric_history(run_id, key),
                                                       key=lambda m: (m.step, m.timestamp))]
               for key in run.data.metrics}
    artifacts: Dict[str, Any] = {}
    for folder in client.list_artifacts(run_id):
        for item in client.list_artifacts(run_id, folder.path):
            local = client.download_artifacts(run_id, item.path, tempfile.mkdtemp())
            with open(local, "rb") as f:
                data = f.read()
            name = os.path.basename(item.path)
            artifacts[item.path] = (hashlib.sha256(data).hexdigest() if name.endswith(".ckpt")
                                    else data.decode())
    return {
        "metrics": metrics, "params": dict(run.data.params), "status": run.info.status,
        "tags": {k: v for k, v in run.data.tags.items() if k in ("mlflow.runName", "team", "mlflow.source.type")},
        "artifacts": artifacts,
    }


def finish_wandb() -> None:
    """Finish the run and stop wandb's service: only then is the whole ``.wandb`` file on disk."""
    import wandb

    wandb.finish()
    wandb.teardown()


def read_wandb_records(save_dir: str, run_id: str) -> List[Any]:
    """The records of the run's ``.wandb`` file (wandb's LevelDB-style log of protobuf ``Record``s)."""
    from wandb.proto import wandb_internal_pb2

    [path] = glob.glob(os.path.join(save_dir, "wandb", f"*-{run_id}", f"run-{run_id}.wandb"))
    with open(path, "rb") as f:
        data = f.read()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a .wandb file"
    block, records, pos, pending = 32768, [], 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero fill up to the next block
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    assert records and records[-1].WhichOneof("record_type") == "exit", f"{path} ends before the run's exit record"
    return records


def _wandb_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _collapse_media(row: Dict[str, Any]) -> Dict[str, Any]:
    """``{"img/_type": t, "img/path": ...}`` -> ``{"img": {"_type": t}}``: media files carry random names."""
    for media in [k[:-len("/_type")] for k in row if k.endswith("/_type")]:
        media_type = row[media + "/_type"]
        row = {k: v for k, v in row.items() if not k.startswith(media + "/")}
        row[media] = {"_type": media_type}
    return row


def read_wandb(save_dir: str, run_id: str) -> Dict[str, Any]:
    history, config, defined, artifacts, run = [], {}, [], [], {}
    for record in read_wandb_records(save_dir, run_id):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {_wandb_key(i): json.loads(i.value_json) for i in record.history.item}
            history.append(_collapse_media({k: v for k, v in row.items() if k not in ("_timestamp", "_runtime")}))
        elif kind == "config":
            for item in record.config.update:
                if _wandb_key(item) != "_wandb":
                    config[_wandb_key(item)] = json.loads(item.value_json)
        elif kind == "metric":
            m = record.metric
            defined.append([m.name or m.glob_name, m.step_metric, m.options.step_sync])
        elif kind == "artifact":
            a = record.artifact
            files = {}
            for entry in a.manifest.contents:
                files[entry.path] = _sha(entry.local_path) if os.path.exists(entry.local_path) else None
            artifacts.append({"name": a.name, "type": a.type, "aliases": sorted(a.aliases),
                              "metadata": json.loads(a.metadata) if a.metadata else {}, "files": files})
        elif kind == "run":
            run = {"id": record.run.run_id, "project": record.run.project, "display_name": record.run.display_name}
    return {"history": history, "config": config, "defined": defined, "artifacts": artifacts, "run": run}


def read_comet_archive(directory: str) -> Dict[str, Any]:
    [path] = glob.glob(os.path.join(directory, "*.zip"))
    with zipfile.ZipFile(path) as archive:
        meta = json.loads(archive.read("experiment.json"))
        messages = [json.loads(line) for line in archive.read("messages.json").decode().splitlines() if line]
    metrics: Dict[str, List[Any]] = {}
    params, others, graph = {}, {}, None
    for message in messages:
        payload = message["payload"]
        if message["type"] == "metric_msg":
            m = payload["metric"]
            metrics.setdefault(m["metricName"], []).append([m["step"], m["epoch"], m["metricValue"]])
        elif message["type"] == "parameter_msg" and payload["param"]["source"] == "manual":
            params[payload["param"]["paramName"]] = payload["param"]["paramValue"]
        elif message["type"] == "log_other":
            others[payload["key"]] = payload["value"]
        elif message["type"] == "graph":
            graph = payload["graph"]
    return {"archive": os.path.basename(path), "key": meta["offline_id"], "project": meta["project_name"],
            "metrics": metrics, "params": params, "others": others, "graph": graph}


# --------------------------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------------------------
def scenario_imports(root: str) -> Dict[str, Any]:
    return {"imported_at_start": IMPORTED_AT_START}


def scenario_mlflow(root: str) -> Dict[str, Any]:
    """log_model=True: the checkpoints are uploaded once, at the end (save_top_k=2)."""
    uri = f"file:{root}/mlruns"
    logger = MLFlowLogger(experiment_name="volt-test", run_name="run-a", tracking_uri=uri, tags={"team": "ml"},
                          log_model=True)
    logged = fit(logger, root)
    ids = {"name": logger.experiment_id, "version": logger.run_id}
    return {
        "logged": {**logged, "checkpoint_dir": _relative(logged["checkpoint_dir"], root, **ids),
                   "trainer_log_dir": _relative(logged["trainer_log_dir"], root, **ids)},
        "properties": {"name_is_experiment_id": logger.name == logger.experiment_id,
                       "version_is_run_id": logger.version == logger.run_id,
                       "save_dir": _relative(logger.save_dir, root), "log_dir": logger.log_dir,
                       "unpickled_version_kept": pickle.loads(pickle.dumps(logger)).version == logger.version},
        "store": read_mlflow(uri, logger.run_id),
    }


def scenario_mlflow_all(root: str) -> Dict[str, Any]:
    """log_model="all": every checkpoint once saved, last.ckpt again each time it is rewritten."""
    logger = MLFlowLogger(tracking_uri=f"file:{root}/mlruns", log_model="all", prefix="fold0")
    logged = fit(logger, root, save_top_k=1)
    return {"logged": {"csv": logged["csv"], "checkpoints": logged["checkpoints"]},
            "store": read_mlflow(f"file:{root}/mlruns", logger.run_id)}


def scenario_mlflow_direct(root: str) -> Dict[str, Any]:
    """The logger API without a Trainer: step None, prefix, names MLflow refuses, nested params, failure."""
    uri = f"file:{root}/mlruns"
    logger = MLFlowLogger(tracking_uri=uri, prefix="p")
    logger.log_hyperparams(argparse.Namespace(opt={"name": "sgd", "betas": [0.9, 0.99]}, blocks=[{"w": 1}, {"w": 2}],
                                              long="x" * 300))
    logger.log_metrics({"a": 1.0, "b(weird)": 2.0, "text": "skip"})
    logger.log_metrics({"a": torch.tensor(3.0)}, step=5)
    logger.finalize("failed")
    resumed = MLFlowLogger(tracking_uri=uri, run_id=logger.run_id, synchronous=True)
    resumed.log_metrics({"resumed": 1.0}, step=9)
    same_run = (resumed.experiment_id, resumed.run_id) == (logger.experiment_id, logger.run_id)
    default = MLFlowLogger(save_dir=os.path.join(root, "default_store"))
    return {"store": read_mlflow(uri, logger.run_id), "default_save_dir": _relative(default.save_dir, root),
            "resumed_same_run": same_run,
            "default_uri_is_file_store": default._tracking_uri.startswith("file:")}


def scenario_wandb(root: str) -> Dict[str, Any]:
    """log_model=True with WANDB_MODE=offline (offline=True refuses log_model), watch() before fit."""
    logger = WandbLogger(project="volt-test", name="run-a", save_dir=root, log_model=True)
    version_before = logger.version
    logged = fit(logger, root, before_fit=lambda model: logger.watch(model, log="all", log_freq=2))
    run_id = logger.version
    logger.log_table("table", columns=["a", "b"], data=[[1, "x"], [2, "y"]], step=7)
    logger.log_text("text", columns=["t"], data=[["hello"]])
    logger.log_image("image", images=[torch.zeros(3, 4, 4).numpy()], caption=["zeros"])
    errors = {}
    for name, call in (("not_a_list", lambda: logger.log_image("x", images=torch.zeros(2))),
                       ("length", lambda: logger.log_image("x", images=[1, 2], caption=["one"]))):
        try:
            call()
        except Exception as err:  # the type is compared between engines
            errors[name] = type(err).__name__
    properties = {"name": logger.name, "version_before_run": version_before, "save_dir": _relative(logger.save_dir, root),
                  "log_dir": logger.log_dir, "display_name": logger.experiment.name}
    finish_wandb()
    ids = {"version": run_id}
    return {
        "logged": {**logged, "checkpoint_dir": _relative(logged["checkpoint_dir"], root, **ids),
                   "trainer_log_dir": _relative(logged["trainer_log_dir"], root, **ids)},
        "properties": properties, "errors": errors, "run": read_wandb(root, run_id),
    }


def scenario_wandb_offline(root: str) -> Dict[str, Any]:
    """offline=True, a given id, a prefix and direct calls with and without a step."""
    try:
        WandbLogger(offline=True, log_model=True)
        refused = None
    except Exception as err:
        refused = type(err).__name__
    logger = WandbLogger(offline=True, save_dir=root, version="fixedid1", prefix="pre", project="volt-test")
    logger.log_hyperparams({"fn": len, "factory": lambda: 3, "cls": nn.Linear, "obj": object(), "nested": {"k": 1}})
    logger.log_metrics({"x": 1.0})
    logger.log_metrics({"x": 2.0}, step=3)
    run_dirs = [os.path.basename(p) for p in glob.glob(os.path.join(root, "wandb", "*-fixedid1"))]
    version = logger.version
    copy = pickle.loads(pickle.dumps(logger))  # keeps the run's id, drops the run object
    unpickled = [copy.version, copy._experiment is None]
    finish_wandb()
    return {"refused_offline_log_model": refused is not None, "version": version, "unpickled": unpickled,
            "run_dirs": [d.split("-")[0] for d in run_dirs], "run": read_wandb(root, "fixedid1")}


COMET_QUIET = dict(log_code=False, log_git_metadata=False, log_git_patch=False, log_env_details=False,
                   auto_output_logging=False, display_summary_level=0)


def scenario_comet(root: str) -> Dict[str, Any]:
    """Offline through the environment (COMET_START_ONLINE=false), identical for both engines."""
    directory = os.path.join(root, "comet")
    logger = CometLogger(project="volt-test", name="run-a", offline_directory=directory, prefix="pre",
                         **COMET_QUIET)
    logged = fit(logger, root)
    key = logger.version
    copy = pickle.loads(pickle.dumps(logger))  # holds the key, no experiment until first use
    properties = {"name": logger.name, "save_dir": _relative(logger.save_dir, root), "log_dir": logger.log_dir,
                  "key_is_experiment_key": key == logger.experiment.get_key(),
                  "unpickled": [copy.version, copy._experiment_key == key]}
    logger.experiment.end()  # writes the offline archive (else at process exit)
    ids = {"version": key}
    return {
        "logged": {**logged, "checkpoint_dir": _relative(logged["checkpoint_dir"], root, **ids),
                   "trainer_log_dir": _relative(logged["trainer_log_dir"], root, **ids)},
        "properties": properties, "archive": read_comet_archive(directory),
    }


def scenario_comet_online_false(root: str) -> Dict[str, Any]:
    """online=False: volt writes the offline archive; Lightning 2.6.6 disables the experiment (#21617)."""
    directory = os.path.join(root, "comet")
    logger = CometLogger(online=False, project="volt-test", offline_directory=directory, **COMET_QUIET)
    logger.log_hyperparams({"a": 1, "nested": {"b": 2}})
    logger.log_metrics({"loss": torch.tensor(0.5), "epoch": 1.0}, step=4)
    logger.finalize("success")
    logger.experiment.end()
    archives = glob.glob(os.path.join(directory, "*.zip"))
    content = read_comet_archive(directory) if archives and zipfile.is_zipfile(archives[0]) else None
    if content is not None and not content["metrics"]:
        content = None
    return {"archive": content}


def scenario_volt_only(root: str) -> Dict[str, Any]:
    """Where volt differs from Lightning 2.6.6 on purpose (Lightning: the old names' fallbacks are broken)."""
    if ENGINE != "volt":
        return {}
    out: Dict[str, Any] = {}
    # WandbLogger(dir=...): Lightning's save_dir default "." wins over it.
    logger = WandbLogger(offline=True, dir=os.path.join(root, "w"), project="volt-test")
    logger.log_metrics({"x": 1.0}, step=0)
    out["wandb_dir"] = {"save_dir": _relative(logger.save_dir, root),
                        "run_written": bool(glob.glob(os.path.join(root, "w", "wandb", "offline-run-*")))}
    finish_wandb()
    # The pre-2.5 CometLogger names: offline=True is offline (Lightning turns it into online=True).
    directory = os.path.join(root, "comet")
    logger = CometLogger(offline=True, save_dir=directory, project_name="volt-test", experiment_name="old-names",
                         **COMET_QUIET)
    logger.log_metrics({"loss": 0.25}, step=1)
    logger.experiment.end()
    archive = read_comet_archive(directory)
    out["comet_old_names"] = {"save_dir": _relative(logger.save_dir, root), "project": archive["project"],
                              "name": archive["others"].get("Name"), "loss": archive["metrics"].get("loss")}
    return out


def scenario_rank_one(root: str) -> Dict[str, Any]:
    """Off global rank 0: a dummy experiment, nothing written, no run created."""
    previous = rank_zero_only.rank
    rank_zero_only.rank = 1
    os.environ["RANK"] = "1"  # Lightning's CometLogger reads the rank from the environment
    out: Dict[str, Any] = {}
    try:
        loggers = {
            "mlflow": MLFlowLogger(tracking_uri=f"file:{root}/mlruns", log_model="all"),
            "wandb": WandbLogger(save_dir=os.path.join(root, "wandb_root"), log_model="all"),
            "comet": CometLogger(online=None, offline_directory=os.path.join(root, "comet"), **COMET_QUIET),
        }
        # volt's ModelCheckpoint tells every rank's loggers about a save (Lightning: rank 0's only).
        checkpoint = ModelCheckpoint(dirpath=root)
        checkpoint.last_model_path = os.path.join(root, "saved.ckpt")
        torch.save({}, checkpoint.last_model_path)
        for name, logger in loggers.items():
            experiment = logger.experiment
            logger.log_hyperparams({"a": 1})
            logger.log_metrics({"loss": 1.0}, step=1)
            if ENGINE == "volt" and name != "comet":
                logger.after_save_checkpoint(checkpoint)
            logger.finalize("success")
            out[name] = {"dummy": type(experiment).__name__.endswith("DummyExperiment"),
                         "noop_call": experiment.anything(1, key=2) is None, "version": logger.version}
        files = []
        for dirpath, _dirs, names in os.walk(root):
            files += [os.path.relpath(os.path.join(dirpath, n), root) for n in names]
        out["files"] = sorted(f for f in files if not f.startswith(os.path.join("mlruns", "0")))
    finally:
        rank_zero_only.rank = previous
        del os.environ["RANK"]
    return out


SCENARIOS = {name[len("scenario_"):]: fn for name, fn in globals().items() if name.startswith("scenario_")}


def main() -> None:
    out_path = sys.argv[2]
    names = sys.argv[3:] or list(SCENARIOS)
    results: Dict[str, Any] = {}
    for name in names:
        root = tempfile.mkdtemp(prefix=f"{ENGINE}-{name}-", dir=os.path.dirname(os.path.abspath(out_path)))
        try:
            results[name] = SCENARIOS[name](root)
        except Exception as err:  # reported per scenario, so one failure does not hide the others
            results[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
            finish_wandb()  # a failed scenario's run must not become the next one's
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True, default=str)


if __name__ == "__main__":
    main()
