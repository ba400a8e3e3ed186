"""``pzshell eval`` and ``pzshell finetune`` as functions, on a dense or a saved pruned model.

Both start from :func:`model_fields`: the model's provenance (how a saved directory was made,
from ``pzshell_prune.json``) or ``dense``, plus the measured sparsity of its block linears.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..engine.finetune import block_sparsity
from ..errors import PzError
from ..evaluate.zeroshot import prepare_tasks
from ..models import LoadedModel, count_block_params, load_model, sparsity_report
from ..models.structure import is_structured_dir
from ..progress import ProgressFn
from . import results as schema
from .provenance import MODEL_FIELDS, read_provenance, source_of
from .specs import EvalSpec, FinetuneSpec, ModelSpec, ZeroShotSpec
from .stages import Evaluation, finetune_stage, footer, resolve_seqlen, zero_shot_stage


def model_fields(lm: LoadedModel, spec: str) -> dict:
    """Provenance of a saved pruned model, or ``dense`` for anything else, plus the measured
    sparsity of its block linears."""
    prov = read_provenance(spec)
    zeros, total = count_block_params(lm.model)
    out = {
        "model": spec,
        "model_source": lm.source,
        "model_fingerprint": lm.fingerprint(),
        "device": str(lm.device),
        "method": "dense",
        "sparsity_ratio": 0.0,
        "sparsity_type": "unstructured",
    }
    if prov:
        out.update({k: prov[k] for k in MODEL_FIELDS if k in prov})
        # the model the chain of saved directories started from
        out["base_model"] = prov.get("base_model") or prov.get("model")
        out["base_model_source"] = prov.get("base_model_source") or prov.get("model_source")
        out["model"] = spec
        out["model_source"] = lm.source
    if prov.get("structured") or is_structured_dir(spec):
        # a structurally pruned model is described by its structure, with or without a note
        # of how it was made: never "dense"
        out["method"] = "structured"
        out["sparsity_type"] = "structured"
        out["sparsity_ratio"] = prov.get("pruning_ratio", out.get("sparsity_ratio", 0.0))
        out["model_params_after"] = sum(p.numel() for p in lm.model.parameters())
        if "model_params_before" in prov:
            out["model_params_before"] = prov["model_params_before"]
    out["actual_sparsity"] = zeros / max(total, 1)
    out["layers"] = sparsity_report(lm.model)
    return out


@dataclass
class EvalJob:
    model: ModelSpec = field(default_factory=ModelSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    zero_shot: ZeroShotSpec | None = None

    def check(self) -> None:
        if not self.eval.enabled and self.zero_shot is None:
            raise PzError("nothing to evaluate: give --eval data and/or --tasks")
        self.eval.check()
        if self.zero_shot:
            self.zero_shot.check()


def run_eval(
    job: EvalJob, progress: ProgressFn | None = None, lm: LoadedModel | None = None
) -> tuple[LoadedModel, dict]:
    """Perplexity and (optionally) zero-shot accuracy of a dense or saved model (``lm``: an
    already loaded copy of ``job.model``)."""
    job.check()
    prepared = prepare_tasks(job.zero_shot.tasks) if job.zero_shot else None  # before the load
    t = time.perf_counter()
    lm = lm or load_model(job.model.name, device=job.model.device)
    results = model_fields(lm, job.model.name)
    results["load_seconds"] = time.perf_counter() - t
    if job.eval.enabled:
        seqlen = resolve_seqlen(lm, job.eval.seqlen)
        results.update(Evaluation(lm, job.eval, seqlen).measure(lm, progress))
    if prepared is not None:
        results.update(zero_shot_stage(lm, prepared, job.zero_shot, progress))
    results.update(footer())
    return lm, schema.finish(results, "eval")


@dataclass
class FinetuneJob:
    model: ModelSpec  # a saved pruned model directory (or anything load_model takes)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    data: str = "builtin"  # fine-tuning text when the model's calibration text is unknown
    eval: EvalSpec = field(default_factory=EvalSpec)
    eval_before: bool = True  # also measure perplexity before fine-tuning
    zero_shot: ZeroShotSpec | None = None

    def check(self) -> None:
        self.finetune.check()
        self.eval.check()
        if self.zero_shot:
            self.zero_shot.check()


def run_finetune(job: FinetuneJob, progress: ProgressFn | None = None) -> tuple[LoadedModel, dict]:
    """Recover a saved pruned model: perplexity before, fine-tune, perplexity after."""
    job.check()
    prepared = prepare_tasks(job.zero_shot.tasks) if job.zero_shot else None
    t = time.perf_counter()
    lm = load_model(job.model.name, device=job.model.device)
    results = model_fields(lm, job.model.name)
    results["load_seconds"] = time.perf_counter() - t
    if block_sparsity(lm.model) == 0:
        results["warning"] = "the model has no zero weights: nothing pruned to preserve"
    prov = read_provenance(job.model.name)
    # the calibration domain: the text the model was pruned with, if known and still there
    data = job.finetune.data or job.data
    calib = source_of(prov.get("calib_data"))
    if job.finetune.data is None and calib is not None:
        data = calib
    calib_seqlen = prov.get("seqlen")
    if not isinstance(calib_seqlen, int):
        calib_seqlen = lm.default_seqlen()
    evaluation = None
    if job.eval.enabled:
        evaluation = Evaluation(lm, job.eval, resolve_seqlen(lm, job.eval.seqlen))
        if job.eval_before:
            results.update(evaluation.measure(lm, progress))
    if prepared is not None:
        results.update(zero_shot_stage(lm, prepared, job.zero_shot, progress))
    results.update(
        finetune_stage(
            lm,
            job.finetune,
            default_data=data,
            default_seqlen=calib_seqlen,
            evaluation=evaluation,
            progress=progress,
        )
    )
    if prepared is not None:
        results.update(
            zero_shot_stage(lm, prepared, job.zero_shot, progress, suffix="_after_finetune")
        )
    results.update(footer())
    return lm, schema.finish(results, "finetune")
