"""Lightning's ``core.mixins.hparams_mixin`` path; the mixin lives in ``volt.hparams``."""
from volt.hparams import HyperparametersMixin

__all__ = ["HyperparametersMixin"]
