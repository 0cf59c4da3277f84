"""Lightning's ``core.mixins`` path; the mixin lives in ``volt.hparams``."""
from volt.hparams import HyperparametersMixin

__all__ = ["HyperparametersMixin"]
