"""A plain script (no volt, no Trainer) whose rank FAIL_RANK raises at module level.

It stands for a training script that fails while it loads its data, before any
Trainer exists: ``KeyError: 'label'`` from a record without that field.
"""
import os

RECORDS = [{"text": "a", "label": 0}, {"text": "b"}]

if os.environ.get("RANK") == os.environ.get("FAIL_RANK", "1"):
    LABELS = [record["label"] for record in RECORDS[:1]] + [RECORDS[1]["label"]]
