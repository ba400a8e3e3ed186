"""Jobs around evaluation and recovery, beside :mod:`pzshell.jobs` (pruning):

* :func:`run_eval`: perplexity (+ zero-shot accuracy) of a dense or saved model;
* :func:`run_finetune`: LoRA recovery of a saved pruned model, perplexity after;
* :func:`finetune_stage` / :func:`zero_shot_stage`: the steps that ``run_prune`` also runs
  after pruning when asked (``--finetune``, ``--eval_zero_shot``).

Every function returns (part of) a ``results.json``-ready dict, so a figure can always be traced
to its model, data, window length and token count.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import BUILTIN, HUB_SOURCES, calibration_windows, load_text
from .engine.events import ProgressFn
from .engine.finetune import FinetuneError, block_sparsity, full_finetune, lora_finetune
from .errors import PzError
from .evaluate.zeroshot import DEFAULT_TASKS, PreparedTasks, evaluate_zero_shot, prepare_tasks
from .jobs import evaluate_ppl, resolve_seqlen
from .models import LoadedModel, count_block_params, load_model, sparsity_report
from .util import peak_rss_mb

# Written beside a model saved by `pzshell prune --save_model` / `pzshell finetune --save_model`:
# how it was made, so a later `pzshell finetune` / `pzshell eval` of the directory can say so.
PROVENANCE_FILE = "pzshell_prune.json"
# Fields of a prune run that describe the model itself (carried over by later jobs on it).
_PROVENANCE_KEYS = (
    "model", "model_source", "method", "metric", "sparsity_ratio", "sparsity_type",
    "use_variant", "nsamples", "seqlen", "calib_data", "seed", "structured", "base_model",
    "base_model_source", "finetuned",
)  # fmt: skip


@dataclass
class ZeroShotSpec:
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    limit: int | None = None  # items per task (quick checks); None: all
    batch_size: int = 4  # the choices of one question batch well, on a CPU too


@dataclass
class FinetuneSpec:
    """Recovery fine-tuning settings. ``data=None``: the job's calibration text (the
    calibration domain), windows drawn with ``seed + 1`` so they differ from the calibration
    windows."""

    method: str = "lora"  # "lora" or "full"
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    samples: int = 64
    seqlen: int | None = None  # None: min(512, the calibration window length)
    lr: float = 1e-4
    epochs: int = 1
    batch_size: int = 1
    data: str | None = None
    seed: int = 0
    preserve_sparsity: bool = True
    mask_aware: bool = False  # LoRA: train the masked update (see engine.finetune)

    def __post_init__(self):
        if self.method not in ("lora", "full"):
            raise FinetuneError(f"fine-tuning method must be lora or full, got '{self.method}'")
        if self.samples < 1:
            raise FinetuneError(f"--finetune_samples must be at least 1, got {self.samples}")
        if self.epochs < 1:
            raise FinetuneError(f"--finetune_epochs must be at least 1, got {self.epochs}")
        if not self.lr > 0:
            raise FinetuneError(f"--finetune_lr must be positive, got {self.lr}")
        if self.r < 1:
            raise FinetuneError(f"--lora_r must be at least 1, got {self.r}")


def zero_shot_stage(
    lm: LoadedModel,
    prepared: PreparedTasks,
    spec: ZeroShotSpec,
    progress: ProgressFn | None = None,
    *,
    suffix: str = "",
) -> dict:
    """``{"zero_shot<suffix>": {...}, "zero_shot_mean<suffix>": mean acc}``."""
    zs = evaluate_zero_shot(
        lm.model, lm.tokenizer, prepared, limit=spec.limit, batch_size=spec.batch_size,
        progress=progress,
    )  # fmt: skip
    return {f"zero_shot{suffix}": zs, f"zero_shot_mean{suffix}": zs["mean_acc"]}


def finetune_stage(
    lm: LoadedModel,
    spec: FinetuneSpec,
    *,
    default_data: str,
    default_seqlen: int,
    eval_source: str | None,
    eval_seqlen: int,
    eval_windows: int | None,
    progress: ProgressFn | None = None,
) -> dict:
    """Fine-tune ``lm`` in place (sparsity preserved), then measure perplexity again."""
    source = spec.data or default_data
    seqlen = resolve_seqlen(lm, spec.seqlen or min(512, default_seqlen))
    text = load_text(source, role="calib")
    ids = calibration_windows(lm.tokenizer, text, spec.samples, seqlen, spec.seed + 1)
    zeros_before = _zero_masks(lm.model) if spec.preserve_sparsity else None
    common = dict(
        lr=spec.lr, epochs=spec.epochs, batch_size=spec.batch_size,
        preserve_sparsity=spec.preserve_sparsity, progress=progress, seed=spec.seed,
    )  # fmt: skip
    if spec.method == "lora":
        rep = lora_finetune(lm.model, lm.tokenizer, ids, r=spec.r, alpha=spec.alpha,
                            dropout=spec.dropout, mask_aware=spec.mask_aware, **common)  # fmt: skip
    else:
        rep = full_finetune(lm.model, lm.tokenizer, ids, **common)
    if zeros_before is not None:
        after = _zero_masks(lm.model)
        lost = sum(int((b & ~a).sum()) for b, a in zip(zeros_before, after, strict=True))
        if lost:
            raise FinetuneError(
                f"internal error: {lost} pruned weights are nonzero after fine-tuning"
            )
    rep["data"] = text.name
    out = {
        "finetune": rep,
        "sparsity_before_finetune": rep["sparsity_before"],
        "sparsity_after_finetune": rep["sparsity_after"],
    }
    if eval_source and eval_source != "none":
        r = evaluate_ppl(lm, eval_source, eval_seqlen, eval_windows, progress)
        out.update({k: v for k, v in r.items() if k not in ("ppl", "eval_nll")})
        out["ppl_after_finetune"] = r["ppl"]
        out["eval_nll_after_finetune"] = r["eval_nll"]
    return out


def _zero_masks(model) -> list[torch.Tensor]:
    from .models import block_linears

    return [lin.weight.detach() == 0 for blk in block_linears(model) for lin in blk.values()]


# ------------------------------------------------------------------------------------------------
# pzshell eval
# ------------------------------------------------------------------------------------------------


@dataclass
class EvalJob:
    model: str = "smollm2"
    eval: str | None = "builtin"
    eval_seqlen: int | None = None
    eval_windows: int | None = None
    device: str | None = "auto"
    zero_shot: ZeroShotSpec | None = None


def read_provenance(model: str) -> dict:
    """How a saved model directory was made (``pzshell_prune.json``), or ``{}``."""
    path = Path(model).expanduser() / PROVENANCE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_provenance(directory: str | Path, results: dict) -> None:
    """Save the model-describing fields of ``results`` beside a saved model."""
    keep = {k: results[k] for k in _PROVENANCE_KEYS if k in results}
    keep["layers"] = results.get("layers")
    for k in ("actual_sparsity", "ppl", "ppl_after_finetune"):
        if k in results:
            keep[k] = results[k]
    if "finetune" in results:
        keep["finetuned"] = results["finetune"]["method"]
    path = Path(directory) / PROVENANCE_FILE
    path.write_text(json.dumps(keep, indent=2) + "\n", encoding="utf-8")


def _source_of(name) -> str | None:
    """The data source string that produced a recorded text name, if it can be had again."""
    if not isinstance(name, str) or not name:
        return None
    head = name.split(":", 1)[0]
    if head == BUILTIN or head in HUB_SOURCES:
        return head
    return name if Path(name).is_file() else None


def _model_fields(lm: LoadedModel, spec: str) -> dict:
    """Provenance of a saved pruned model, or ``dense`` for anything else, plus the measured
    sparsity of its block linears."""
    prov = read_provenance(spec)
    zeros, total = count_block_params(lm.model)
    out = {
        "model": spec,
        "model_source": lm.source,
        "method": "dense",
        "sparsity_ratio": 0.0,
        "sparsity_type": "unstructured",
    }
    if prov:
        out.update({k: prov[k] for k in _PROVENANCE_KEYS if k in prov})
        # the model the chain of saved directories started from
        out["base_model"] = prov.get("base_model") or prov.get("model")
        out["base_model_source"] = prov.get("base_model_source") or prov.get("model_source")
        out["model"] = spec
        out["model_source"] = lm.source
    out["actual_sparsity"] = zeros / max(total, 1)
    out["layers"] = sparsity_report(lm.model)
    return out


def run_eval(job: EvalJob, progress: ProgressFn | None = None) -> tuple[LoadedModel, dict]:
    """Perplexity and (optionally) zero-shot accuracy of a dense or saved model."""
    if (not job.eval or job.eval == "none") and job.zero_shot is None:
        raise PzError("nothing to evaluate: give --eval data and/or --tasks")
    prepared = prepare_tasks(job.zero_shot.tasks) if job.zero_shot else None  # before the load
    t = time.perf_counter()
    lm = load_model(job.model, device=job.device)
    results = _model_fields(lm, job.model)
    results["load_seconds"] = time.perf_counter() - t
    results["device"] = str(lm.device)
    if job.eval and job.eval != "none":
        seqlen = resolve_seqlen(lm, job.eval_seqlen)
        results.update(evaluate_ppl(lm, job.eval, seqlen, job.eval_windows, progress))
    if prepared is not None:
        results.update(zero_shot_stage(lm, prepared, job.zero_shot, progress))
    results["peak_rss_mb"] = peak_rss_mb()
    results["torch_threads"] = torch.get_num_threads()
    return lm, results


# ------------------------------------------------------------------------------------------------
# pzshell finetune
# ------------------------------------------------------------------------------------------------


@dataclass
class FinetuneJob:
    model: str  # a saved pruned model directory (or anything load_model takes)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    data: str = "builtin"  # fine-tuning text when the model's calibration text is unknown
    eval: str | None = "builtin"
    eval_seqlen: int | None = None
    eval_windows: int | None = None
    eval_before: bool = True  # also measure perplexity before fine-tuning
    device: str | None = "auto"
    zero_shot: ZeroShotSpec | None = None


def run_finetune(job: FinetuneJob, progress: ProgressFn | None = None) -> tuple[LoadedModel, dict]:
    """Recover a saved pruned model: perplexity before, fine-tune, perplexity after."""
    prepared = prepare_tasks(job.zero_shot.tasks) if job.zero_shot else None
    t = time.perf_counter()
    lm = load_model(job.model, device=job.device)
    results = _model_fields(lm, job.model)
    results["load_seconds"] = time.perf_counter() - t
    results["device"] = str(lm.device)
    if block_sparsity(lm.model) == 0:
        results["warning"] = "the model has no zero weights: nothing pruned to preserve"
    # the calibration domain: the text the model was pruned with, if known and still there
    data = job.finetune.data or job.data
    calib = _source_of(read_provenance(job.model).get("calib_data"))
    if job.finetune.data is None and calib is not None:
        data = calib
    eval_seqlen = resolve_seqlen(lm, job.eval_seqlen)
    calib_seqlen = read_provenance(job.model).get("seqlen")
    if not isinstance(calib_seqlen, int):
        calib_seqlen = lm.default_seqlen()
    do_eval = bool(job.eval and job.eval != "none")
    if do_eval and job.eval_before:
        results.update(evaluate_ppl(lm, job.eval, eval_seqlen, job.eval_windows, progress))
    if prepared is not None:
        results.update(zero_shot_stage(lm, prepared, job.zero_shot, progress))
    results.update(
        finetune_stage(
            lm, job.finetune, default_data=data, default_seqlen=calib_seqlen,
            eval_source=job.eval if do_eval else None, eval_seqlen=eval_seqlen,
            eval_windows=job.eval_windows, progress=progress,
        )
    )  # fmt: skip
    if prepared is not None:
        results.update(
            zero_shot_stage(lm, prepared, job.zero_shot, progress, suffix="_after_finetune")
        )
    results["peak_rss_mb"] = peak_rss_mb()
    results["torch_threads"] = torch.get_num_threads()
    return lm, results


__all__ = [
    "EvalJob",
    "FinetuneJob",
    "FinetuneSpec",
    "PROVENANCE_FILE",
    "ZeroShotSpec",
    "finetune_stage",
    "read_provenance",
    "run_eval",
    "run_finetune",
    "write_provenance",
    "zero_shot_stage",
]
