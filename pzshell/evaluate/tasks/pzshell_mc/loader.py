"""Data of the ``pzshell_mc`` lm-eval task, read from the JSONL file beside this module.

lm-eval's ``dataset_kwargs: data_files`` would resolve a relative path against the current
directory, so the task uses ``custom_dataset`` instead and locates its file itself.
"""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parent / "pzshell_mc.jsonl"


def read_items(path: Path = DATA) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load(**kwargs) -> dict:
    """``{"test": Dataset}``; lm-eval passes its task metadata as keyword arguments (unused)."""
    import datasets

    return {"test": datasets.Dataset.from_list(read_items())}
