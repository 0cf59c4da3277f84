"""ModelPruning: pruned fraction per epoch, masks, global ranking, permanence, the lottery ticket reset,
and the same results as Lightning 2.6 (finetuning_diff_script.py)."""
from __future__ import annotations

import inspect
import logging
import math
from typing import Any, Dict, List

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import volt
from volt.callbacks.model_checkpoint import ModelCheckpoint
from volt.callbacks.pruning import ModelPruning

from tiny_models import loader, quiet_trainer
from test_callbacks_finetuning import assert_same, run_differential, scenario

pytestmark = pytest.mark.timeout(120)


class TwoLayers(volt.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 10), nn.Linear(10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.tanh(self.l1(x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", nn.functional.mse_loss(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class AfterPruning(volt.Callback):
    """Placed after ModelPruning: what each epoch's pruning left (masks, dense values, effective weights)."""

    def __init__(self) -> None:
        self.masks: List[Dict[str, torch.Tensor]] = []
        self.orig: List[Dict[str, torch.Tensor]] = []
        self.start: Dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.start = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.masks.append({k: v.clone() for k, v in pl_module.named_buffers() if k.endswith("_mask")})
        self.orig.append({k: v.detach().clone() for k, v in pl_module.named_parameters() if k.endswith("_orig")})


class BeforePruning(volt.Callback):
    """Placed before ModelPruning: the effective weights the epoch's pruning ranks (and dense values)."""

    def __init__(self) -> None:
        self.orig: List[Dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        dense = {k: v.detach().clone() for k, v in pl_module.named_parameters()}
        effective = {f"{n}.{p}": getattr(m, p).detach().clone() for n, m in pl_module.named_modules()
                     for p in ("weight", "bias") if isinstance(getattr(m, p, None), torch.Tensor)}
        self.orig.append({**dense, **effective})


def fit(tmp_path: Any, pruning: ModelPruning, epochs: int = 3, model: Any = None, **kwargs: Any) -> Any:
    torch.manual_seed(0)
    model = model or TwoLayers()
    after = AfterPruning()
    callbacks = kwargs.pop("callbacks", [])  # BeforePruning first, anything else after
    callbacks = [cb for cb in callbacks if isinstance(cb, BeforePruning)] + [pruning, after] + \
        [cb for cb in callbacks if not isinstance(cb, BeforePruning)]
    val_loaders = kwargs.pop("val_loaders", None)
    trainer = quiet_trainer(tmp_path, max_epochs=epochs, callbacks=callbacks, **kwargs)
    trainer.fit(model, loader(n=32, batch_size=8), val_loaders)
    return model, trainer, after


def zeros(mask: torch.Tensor) -> int:
    return int((mask == 0).sum())


# --------------------------------------------------------------------------------------------
# construction
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, argument", [
    (dict(pruning_fn="l2_unstructured"), "pruning_fn"),
    (dict(pruning_fn=torch_prune.l1_unstructured), "pruning_fn"),  # a function: Lightning takes names or classes
    (dict(pruning_fn=torch_prune.L1Unstructured(0.5)), "pruning_fn"),  # an instance, not the class
    (dict(pruning_fn=torch_prune.L1Unstructured, use_global_unstructured=False), "use_global_unstructured"),
    (dict(pruning_fn="random_structured", use_global_unstructured=False), "pruning_dim"),
    (dict(pruning_fn="ln_structured", pruning_dim=0, use_global_unstructured=False), "pruning_norm"),
    (dict(pruning_fn="ln_structured", pruning_dim=0, pruning_norm=2), "use_global_unstructured"),
    (dict(amount="half"), "amount"),
    (dict(amount=1.5), "amount"),
    (dict(amount=-2), "amount"),
    (dict(amount=True), "amount"),
    (dict(verbose=3), "verbose"),
    (dict(parameter_names=["gamma"]), "parameter_names"),
    (dict(parameters_to_prune=[nn.Linear(1, 1)]), "parameters_to_prune"),
    (dict(parameters_to_prune=[("weight", nn.Linear(1, 1))]), "parameters_to_prune"),
    (dict(apply_pruning="yes"), "apply_pruning"),
    (dict(use_lottery_ticket_hypothesis=None), "use_lottery_ticket_hypothesis"),
    (dict(use_global_unstructured=1), "use_global_unstructured"),
    (dict(make_pruning_permanent="no"), "make_pruning_permanent"),
    (dict(resample_parameters=0), "resample_parameters"),
    (dict(prune_on_train_epoch_end=None), "prune_on_train_epoch_end"),
])
def test_bad_arguments_are_rejected_by_name(kwargs: Dict[str, Any], argument: str) -> None:
    kwargs.setdefault("pruning_fn", "l1_unstructured")
    with pytest.raises((TypeError, ValueError), match=argument):
        ModelPruning(**kwargs)


def test_defaults_and_resolved_pruning_functions_are_lightnings() -> None:
    defaults = {n: p.default for n, p in inspect.signature(ModelPruning.__init__).parameters.items()
                if n not in ("self", "pruning_fn")}
    assert defaults == dict(parameters_to_prune=(), parameter_names=None, use_global_unstructured=True, amount=0.5,
                            apply_pruning=True, make_pruning_permanent=True, use_lottery_ticket_hypothesis=True,
                            resample_parameters=False, pruning_dim=None, pruning_norm=None, verbose=0,
                            prune_on_train_epoch_end=True)
    assert ModelPruning.PARAMETER_NAMES == ("weight", "bias")
    assert ModelPruning("L1_Unstructured").pruning_fn is torch_prune.L1Unstructured  # global: the class
    local = ModelPruning("ln_structured", use_global_unstructured=False, pruning_dim=1, pruning_norm=2)
    assert local.pruning_fn.func is torch_prune.ln_structured and local.pruning_fn.keywords == {"n": 2, "dim": 1}
    assert ModelPruning(torch_prune.RandomUnstructured).pruning_fn is torch_prune.RandomUnstructured


def test_parameters_not_in_the_model_fail_at_setup(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="parameters_to_prune"):
        fit(tmp_path, ModelPruning("l1_unstructured", parameters_to_prune=[(nn.Linear(2, 2), "weight")]), epochs=1)


# --------------------------------------------------------------------------------------------
# pruning
# --------------------------------------------------------------------------------------------
def test_local_pruning_removes_the_fraction_of_what_is_left_each_epoch(tmp_path: Any) -> None:
    pruning = ModelPruning("l1_unstructured", amount=0.5, use_global_unstructured=False,
                           use_lottery_ticket_hypothesis=False, make_pruning_permanent=False)
    ranking = BeforePruning()
    model, _, after = fit(tmp_path, pruning, callbacks=[ranking])
    ranked = ranking.orig  # torch ranks <name> as the last forward left it
    # every weight and bias of both layers (containers skipped), each pruned by half of what is left
    assert sorted(after.masks[0]) == ["l1.bias_mask", "l1.weight_mask", "l2.bias_mask", "l2.weight_mask"]
    assert [zeros(m["l1.weight_mask"]) for m in after.masks] == [20, 30, 35]  # of 40
    assert [zeros(m["l2.weight_mask"]) for m in after.masks] == [5, 7, 9]  # of 10: round(2.5) = 2, round(1.5) = 2
    for epoch in range(1, 3):  # a pruned entry stays pruned; the newly pruned had the smallest magnitudes
        before, now = after.masks[epoch - 1]["l1.weight_mask"], after.masks[epoch]["l1.weight_mask"]
        magnitude = ranked[epoch]["l1.weight"].abs()
        assert bool((now <= before).all())
        newly, kept = (before == 1) & (now == 0), now == 1
        assert magnitude[newly].max() <= magnitude[kept].min()
    # the effective weight is the mask times the dense value, and the pruned entries stay at zero
    assert torch.equal(model.l1.weight, model.l1.weight_orig * model.l1.weight_mask)
    assert zeros(model.l1.weight) >= 35 and isinstance(model.l1.weight_orig, nn.Parameter)


def test_global_unstructured_ranks_all_parameters_together(tmp_path: Any) -> None:
    model = TwoLayers()
    pruning = ModelPruning("l1_unstructured", amount=0.4, use_lottery_ticket_hypothesis=False,
                           parameters_to_prune=[(model.l1, "weight"), (model.l2, "weight")],
                           make_pruning_permanent=False)
    _, _, after = fit(tmp_path, pruning, epochs=1, model=model)
    masks, orig = after.masks[0], after.orig[0]
    assert sorted(masks) == ["l1.weight_mask", "l2.weight_mask"]
    assert zeros(masks["l1.weight_mask"]) + zeros(masks["l2.weight_mask"]) == 20  # 40% of the 50 weights
    pruned = torch.cat([orig[f"l{i}.weight_orig"].abs()[masks[f"l{i}.weight_mask"] == 0] for i in (1, 2)])
    kept = torch.cat([orig[f"l{i}.weight_orig"].abs()[masks[f"l{i}.weight_mask"] == 1] for i in (1, 2)])
    assert pruned.max() <= kept.min()


def test_int_and_callable_amounts_and_apply_pruning_schedule(tmp_path: Any) -> None:
    pruning = ModelPruning("l1_unstructured", amount=3, parameter_names=["weight"],
                           apply_pruning=lambda epoch: epoch != 1, use_lottery_ticket_hypothesis=False,
                           make_pruning_permanent=False)
    _, _, after = fit(tmp_path / "int", pruning)
    assert [zeros(m["l1.weight_mask"]) + zeros(m["l2.weight_mask"]) for m in after.masks] == [3, 3, 6]
    pruning = ModelPruning("random_unstructured", amount=lambda epoch: [0.0, 0.5, 0.5][epoch],
                           use_global_unstructured=False, use_lottery_ticket_hypothesis=False,
                           make_pruning_permanent=False)
    _, _, after = fit(tmp_path / "callable", pruning)
    assert after.masks[0] == {}  # amount 0: nothing pruned, no mask yet
    assert [zeros(m["l1.weight_mask"]) for m in after.masks[1:]] == [20, 30]


def test_structured_pruning_removes_whole_rows(tmp_path: Any) -> None:
    model = TwoLayers()
    pruning = ModelPruning("ln_structured", pruning_dim=0, pruning_norm=2, amount=2, use_global_unstructured=False,
                           parameters_to_prune=[(model.l1, "weight")], use_lottery_ticket_hypothesis=False)
    model, _, after = fit(tmp_path, pruning, epochs=2, model=model)
    rows = (after.masks[1]["l1.weight_mask"] == 0).all(dim=1)
    assert int(rows.sum()) == 4  # 2 of the 10 output rows per epoch
    assert torch.equal((model.l1.weight == 0).all(dim=1), rows)  # permanent: the rows stay zero


def test_lottery_ticket_resets_kept_weights_to_their_initial_values(tmp_path: Any) -> None:
    pruning = ModelPruning("l1_unstructured", amount=0.3, make_pruning_permanent=False)  # lottery ticket: default
    recorder = BeforePruning()
    _, _, after = fit(tmp_path / "reset", pruning, epochs=2, callbacks=[recorder])
    before = recorder.orig
    for name in ("l1.weight", "l2.weight", "l1.bias"):
        assert not torch.equal(before[0][name], after.start[name])  # trained in epoch 0...
        assert torch.equal(after.orig[0][name + "_orig"], after.start[name]), name  # ...reset by the first prune
    # As in Lightning, the reset parameter shares storage with the saved initial copy from then on, so later
    # resets keep the trained values (training goes on rather than rewinding every epoch).
    assert not torch.equal(after.orig[1]["l1.weight_orig"], after.start["l1.weight"])
    assert torch.equal(after.orig[1]["l1.weight_orig"], before[1]["l1.weight_orig"])
    pruning = ModelPruning("l1_unstructured", amount=0.3, make_pruning_permanent=False, resample_parameters=True,
                           use_lottery_ticket_hypothesis=lambda epoch: epoch == 1)
    _, _, after = fit(tmp_path / "resample", pruning, epochs=2)
    # epoch 0: no reset, trained values; epoch 1: fresh values, neither the initial nor the trained ones
    assert not torch.equal(after.orig[0]["l1.weight_orig"], after.start["l1.weight"])
    fresh = after.orig[1]["l1.weight_orig"]
    assert not torch.equal(fresh, after.start["l1.weight"]) and not torch.equal(fresh, after.orig[0]["l1.weight_orig"])
    assert float(fresh.abs().max()) <= 1 / math.sqrt(4)  # nn.Linear's reset_parameters bound


def test_make_pruning_permanent_in_checkpoints_and_at_the_end(tmp_path: Any) -> None:
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_top_k=-1, filename="{epoch}")
    model, _, after = fit(tmp_path, ModelPruning("l1_unstructured", amount=0.5), epochs=2, callbacks=[ckpt],
                          enable_checkpointing=True)
    saved = torch.load(tmp_path / "ck" / "epoch=0.ckpt", weights_only=False)["state_dict"]
    # the checkpoint holds plain masked weights while training went on with the masks
    assert sorted(saved) == ["l1.bias", "l1.weight", "l2.bias", "l2.weight"]
    mask0 = after.masks[0]["l1.weight_mask"]
    assert torch.equal(saved["l1.weight"], after.orig[0]["l1.weight_orig"] * mask0)
    # at the end of training: no re-parametrisation left, zeros in place, still the optimizer's parameters
    assert sorted(n for n, _ in model.named_parameters()) == ["l1.bias", "l1.weight", "l2.bias", "l2.weight"]
    assert not list(model.buffers()) and not model.l1._forward_pre_hooks
    assert sum(zeros(p) for p in model.parameters()) == sum(zeros(m) for m in after.masks[1].values()) == 30 + 16
    fresh = TwoLayers()
    fresh.load_state_dict(saved)  # a plain model loads the pruned checkpoint


def test_kept_masks_without_permanence(tmp_path: Any) -> None:
    model, _, _ = fit(tmp_path, ModelPruning("l1_unstructured", amount=0.5, make_pruning_permanent=False), epochs=1)
    assert "l1.weight_orig" in dict(model.named_parameters()) and "l1.weight_mask" in dict(model.named_buffers())
    assert len(model.l1._forward_pre_hooks) == 2  # weight and bias


def test_prune_at_validation_end_skips_the_sanity_check(tmp_path: Any) -> None:
    pruning = ModelPruning("l1_unstructured", amount=0.5, prune_on_train_epoch_end=False, make_pruning_permanent=False,
                           use_lottery_ticket_hypothesis=False)
    _, trainer, after = fit(tmp_path, pruning, epochs=2, num_sanity_val_steps=2, val_loaders=loader(16))
    # global over the 61 parameters: 30, then 16 of the 31 left (a sanity-check prune would make 46, then 54)
    assert [sum(zeros(mask) for mask in m.values()) for m in after.masks] == [30, 46]
    assert trainer.num_sanity_val_steps == 2


def test_filter_parameters_to_prune_and_verbose_logging(tmp_path: Any) -> None:
    class OnlyFirstLayer(ModelPruning):
        def filter_parameters_to_prune(self, parameters_to_prune: Any = ()) -> Any:
            return [(m, n) for m, n in parameters_to_prune if m.out_features == 10]

    records: List[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("volt.callbacks.pruning")
    logger.addHandler(handler)
    try:
        model, _, after = fit(tmp_path, OnlyFirstLayer("l1_unstructured", amount=0.5, verbose=2,
                                                       make_pruning_permanent=False), epochs=1)
    finally:
        logger.removeHandler(handler)
    assert sorted(after.masks[0]) == ["l1.bias_mask", "l1.weight_mask"]
    assert records[0] == "Applied `L1Unstructured`. Pruned: 0/50 (0.00%) -> 25/50 (50.00%)"
    assert len(records) == 3  # and one line per pruned tensor of the first layer
    assert records[1].endswith("out_features=10, bias=True).weight` with amount=0.5. Pruned: 0 (0.00%) -> 20 (50.00%)")


# --------------------------------------------------------------------------------------------
# the same results as Lightning
# --------------------------------------------------------------------------------------------
def test_pruning_matches_lightning(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Global L1 with the lottery ticket, an int amount with masks kept and a checkpoint, local ln_structured
    with a lottery schedule, callable amount/apply_pruning, random pruning with resampling, a
    BasePruningMethod class pruning at validation end: weights, masks per epoch, saved state dicts."""
    volt_run, lightning_run = scenario(run_differential(tmp_path_factory), "pruning")
    assert_same(volt_run, lightning_run)
    assert volt_run["global_l1_lottery"]["parameters"] == ["l1.bias", "l1.weight", "l2.bias", "l2.weight"]
    assert "l1.weight_orig" in volt_run["global_int_no_lottery_kept"]["parameters"]
    assert "l1.weight_mask" in volt_run["global_int_no_lottery_kept"]["checkpoint"]
    assert sorted(volt_run["local_callable_amount_saved"]["checkpoint"]) == ["l1.bias", "l1.weight", "l2.bias",
                                                                             "l2.weight"]
    assert [z["l1.weight_mask"] for z in volt_run["local_callable_amount_saved"]["zeros"]] == [12, 12, 15]
