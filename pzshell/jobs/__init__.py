"""Whole jobs as functions of a settings dataclass, and the one ``results.json`` schema.

* :mod:`.specs`: the shared settings (model, calibration, evaluation, fine-tuning, zero-shot);
* :mod:`.stages`: the shared steps (window lengths, perplexity, zero-shot, recovery);
* :mod:`.prune_job`, :mod:`.eval_job` (eval, finetune), :mod:`.structured_job`: the jobs;
* :mod:`.results`: the schema every ``results.json`` is written and read through;
* :mod:`.provenance`: the note saved beside a pruned model.

The CLI, the benchmarks, the search and the terminal app's worker all run these, so a job
started anywhere behaves the same and reports the same fields.
"""

from __future__ import annotations

from .eval_job import EvalJob, FinetuneJob, model_fields, run_eval, run_finetune
from .provenance import PROVENANCE_FILE, provenance_of, read_provenance
from .prune_job import PruneJob, run_prune
from .results import ResultsError, read_results, write_results
from .specs import (
    DEFAULT_LR,
    CalibSpec,
    EvalSpec,
    FinetuneSpec,
    ModelSpec,
    ZeroShotSpec,
)
from .stages import Evaluation, evaluate_ppl, resolve_seqlen
from .structured_job import StructuredJob, StructuredOutcome, run_structured, write_run_dir

__all__ = [
    "DEFAULT_LR",
    "PROVENANCE_FILE",
    "CalibSpec",
    "EvalJob",
    "EvalSpec",
    "Evaluation",
    "FinetuneJob",
    "FinetuneSpec",
    "ModelSpec",
    "PruneJob",
    "ResultsError",
    "StructuredJob",
    "StructuredOutcome",
    "ZeroShotSpec",
    "evaluate_ppl",
    "model_fields",
    "provenance_of",
    "read_provenance",
    "read_results",
    "resolve_seqlen",
    "run_eval",
    "run_finetune",
    "run_prune",
    "run_structured",
    "write_results",
    "write_run_dir",
]
