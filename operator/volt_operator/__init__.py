"""volt_operator: the kopf operator that runs TrainingJobs as gangs of DDP pods.

Run it with `python -m volt_operator`. It never imports the engine (`volt`).
"""

# The distribution's version (pyproject.toml; a test keeps them equal): the operator image
# ships this package without the distribution's metadata.
__version__ = "0.1.0"
