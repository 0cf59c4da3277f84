"""volt_operator: the kopf operator that runs TrainingJobs as gangs of DDP pods.

Run it with `python -m volt_operator`. It never imports the engine (`volt`).
"""
