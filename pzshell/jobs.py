"""Whole jobs as plain functions of a settings dataclass: load -> calibrate -> prune -> evaluate.

The CLI, the benchmarks and (later) the terminal app's worker all call these, so a job started
from any of them behaves the same and reports the same fields.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .data import calibration_windows, eval_windows, load_text
from .engine.events import ProgressFn
from .engine.gradients import compute_gradients, load_gradients, save_gradients
from .engine.prune import PruneConfig, prune_model
from .errors import PzError
from .evaluate.perplexity import perplexity
from .lang import Node, to_infix
from .models import LoadedModel, count_block_params, load_model
from .util import peak_rss_mb

if TYPE_CHECKING:
    from .evaljobs import FinetuneSpec, ZeroShotSpec


@dataclass
class PruneJob:
    model: str = "smollm2"
    method: str = "wanda"
    sparsity_ratio: float = 0.5
    sparsity_type: str = "unstructured"
    metric: Node | None = None
    reconstruct: bool = False
    use_variant: bool = False
    nsamples: int = 128
    seed: int = 0
    calib: str = "builtin"
    seqlen: int | None = None
    eval: str | None = "builtin"
    eval_seqlen: int | None = None
    eval_windows: int | None = None
    gradient_path: str | None = None
    device: str | None = "auto"
    batch_size: int = 8
    # after pruning (pzshell.evaljobs): zero-shot accuracy, recovery fine-tuning
    zero_shot: ZeroShotSpec | None = None
    finetune: FinetuneSpec | None = None


def resolve_seqlen(lm: LoadedModel, seqlen: int | None) -> int:
    if seqlen is None:
        return lm.default_seqlen()
    if seqlen < 2:
        raise PzError(f"window length must be at least 2, got {seqlen}")
    if seqlen > lm.max_positions:
        raise PzError(f"window length {seqlen} exceeds the model's {lm.max_positions} positions")
    return seqlen


def evaluate_ppl(
    lm: LoadedModel,
    source: str,
    seqlen: int,
    max_windows: int | None,
    progress: ProgressFn | None = None,
) -> dict:
    text = load_text(source, role="eval")
    windows = eval_windows(lm.tokenizer, text, seqlen, max_windows)
    r = perplexity(lm.model, windows, progress=progress)
    return {
        "eval_data": text.name,
        "eval_seqlen": seqlen,
        "eval_windows": r.windows,
        "eval_tokens": r.tokens,
        "ppl": r.ppl,
        "eval_nll": r.nll,
    }


def run_prune(
    job: PruneJob, progress: ProgressFn | None = None, lm: LoadedModel | None = None
) -> tuple[LoadedModel, dict]:
    """Run a prune job; returns the pruned model and a ``results.json``-ready dict."""
    cfg = PruneConfig(
        method=job.method,
        sparsity_ratio=job.sparsity_ratio,
        sparsity_type=job.sparsity_type,
        metric=job.metric,
        reconstruct=job.reconstruct,
        use_variant=job.use_variant,
        batch_size=job.batch_size,
    )
    from .evaljobs import finetune_stage, zero_shot_stage
    from .evaluate.zeroshot import prepare_tasks

    prepared = prepare_tasks(job.zero_shot.tasks) if job.zero_shot else None  # fail fast
    t_load = time.perf_counter()
    lm = lm or load_model(job.model, device=job.device)
    load_seconds = time.perf_counter() - t_load
    seqlen = resolve_seqlen(lm, job.seqlen)
    calib_text = None
    calib_ids = None
    have_grads = bool(job.gradient_path) and Path(job.gradient_path).exists()
    if cfg.needs_calibration or (cfg.needs_gradients and not have_grads):
        calib_text = load_text(job.calib, role="calib")
        calib_ids = calibration_windows(lm.tokenizer, calib_text, job.nsamples, seqlen, job.seed)
    grads = None
    grad_seconds = 0.0
    if cfg.needs_gradients:
        if have_grads:
            grads = load_gradients(job.gradient_path, lm.model)
        else:
            t = time.perf_counter()
            grads = compute_gradients(lm.model, calib_ids, progress=progress)
            grad_seconds = time.perf_counter() - t
            if job.gradient_path:
                save_gradients(grads, job.gradient_path)
    pr = prune_model(lm.model, cfg, calib_ids, grads, progress=progress)
    zeros, total = count_block_params(lm.model)
    results = {
        "model": job.model,
        "model_source": lm.source,
        "method": cfg.method
        + ("+reconstruct" if cfg.reconstruct and cfg.method != "sparsegpt" else ""),
        "metric": to_infix(cfg.metric) if cfg.metric is not None else None,
        "sparsity_ratio": job.sparsity_ratio,
        "sparsity_type": job.sparsity_type,
        "use_variant": job.use_variant,
        "actual_sparsity": zeros / total,
        "pruned_fraction": pr.sparsity,
        "nsamples": job.nsamples if calib_ids is not None else 0,
        "seqlen": seqlen,
        "seed": job.seed,
        "calib_data": calib_text.name if calib_text is not None else None,
        "gradient_path": job.gradient_path,
        "grad_seconds": grad_seconds,
        "prune_seconds": pr.seconds,
        "load_seconds": load_seconds,
        "device": str(lm.device),
        "layers": [asdict(r) for r in pr.layers],
    }
    if job.eval and job.eval != "none":
        results.update(
            evaluate_ppl(lm, job.eval, job.eval_seqlen or seqlen, job.eval_windows, progress)
        )
    if prepared is not None:
        results.update(zero_shot_stage(lm, prepared, job.zero_shot, progress))
    if job.finetune is not None:
        results.update(
            finetune_stage(
                lm, job.finetune, default_data=job.calib, default_seqlen=seqlen,
                eval_source=job.eval, eval_seqlen=job.eval_seqlen or seqlen,
                eval_windows=job.eval_windows, progress=progress,
            )
        )  # fmt: skip
        if prepared is not None:
            suffix = "_after_finetune"
            results.update(zero_shot_stage(lm, prepared, job.zero_shot, progress, suffix=suffix))
    results["peak_rss_mb"] = peak_rss_mb()
    results["torch_threads"] = torch.get_num_threads()
    return lm, results
