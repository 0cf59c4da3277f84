"""Small runnable training scripts (``python -m volt.examples.<name>``) on synthetic data.

They need no downloads, so the same command works in the trainer image, on a
laptop and in the end-to-end tests.
"""
