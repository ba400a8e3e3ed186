"""``pzshell_prune.json``: written beside a model saved by ``prune/finetune/structured
--save_model``, saying how it was made, so a later ``pzshell eval`` or ``finetune`` of the
directory reports its method, sparsity and calibration instead of "dense"."""

from __future__ import annotations

import json
from pathlib import Path

from ..data import BUILTIN, HUB_SOURCES

PROVENANCE_FILE = "pzshell_prune.json"
# Fields of a run that describe the model itself (carried over by later jobs on it).
MODEL_FIELDS = (
    "model",
    "model_source",
    "method",
    "metric",
    "sparsity_ratio",
    "sparsity_type",
    "use_variant",
    "nsamples",
    "seqlen",
    "calib_data",
    "seed",
    "structured",
    "base_model",
    "base_model_source",
    "finetuned",
    "importance",
    "pruning_strategy",
    "pruning_ratio",
    "params_before",
    "params_after",
    "model_params_before",
    "model_params_after",
)


def read_provenance(model: str | Path) -> dict:
    """How a saved model directory was made, or ``{}``."""
    path = Path(model).expanduser() / PROVENANCE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def provenance_of(results: dict) -> dict:
    keep = {k: results[k] for k in MODEL_FIELDS if k in results}
    keep["layers"] = results.get("layers")
    for k in ("actual_sparsity", "ppl", "ppl_after_finetune"):
        if k in results:
            keep[k] = results[k]
    if "finetune" in results:
        keep["finetuned"] = results["finetune"]["method"]
    if results.get("job") == "structured":
        keep["structured"] = True
    return keep


def source_of(name) -> str | None:
    """The data source string that produced a recorded text name, if it can be had again."""
    if not isinstance(name, str) or not name:
        return None
    head = name.split(":", 1)[0]
    if head == BUILTIN or head in HUB_SOURCES:
        return head
    return name if Path(name).is_file() else None
