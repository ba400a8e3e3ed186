"""``pzshell structured`` as a function: load -> statistics -> importance -> plan -> surgery ->
evaluate -> recover (LoRA / full) -> evaluate; and the run directory it writes.

The domain math lives in :mod:`pzshell.engine.structured`; the model-directory format in
:mod:`pzshell.models.structure`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import atomic
from ..data import calibration_windows, load_text
from ..engine.structured import (
    LAYER_IMPORTANCE,
    STRATEGIES,
    CalibStats,
    Importance,
    Plan,
    SurgeryReport,
    apply_plan,
    check_feasible,
    check_ratio,
    collect_stats,
    kind_summary,
    make_plan,
    model_parts,
    parse_distribution,
    parse_importance,
    plot_kept,
    save_structured,
    structure_of,
    unit_importance,
    write_units_csv,
)
from ..errors import PzError
from ..models import LoadedModel, load_model
from ..progress import ProgressFn, emit
from . import results as schema
from .provenance import PROVENANCE_FILE, provenance_of
from .specs import CalibSpec, EvalSpec, FinetuneSpec, ModelSpec
from .stages import Evaluation, finetune_stage, footer, resolve_seqlen

log = logging.getLogger("pzshell.structured")

DEFAULT_SEQLEN = 512


@dataclass
class StructuredJob:
    pruning_ratio: float = 0.25
    importance_method: str = "taylor"
    pruning_strategy: str = "global"  # global | inverse | uniform
    pruning_distribution: str | None = None  # A:M, layer-wise only (default 2:8)
    freeze_top_n_layers: int = 0
    layer_importance: str = "cosine"
    inverse_alpha: float = 1.0
    remove_empty_layers: bool = False
    model: ModelSpec = field(default_factory=ModelSpec)
    # seqlen None: min(512, the model's positions)
    calib: CalibSpec = field(default_factory=lambda: CalibSpec(nsamples=32))
    test_after_prune: bool = False
    eval: EvalSpec = field(default_factory=EvalSpec)
    speed_windows: int = 2
    finetune: FinetuneSpec | None = None
    batch_size: int = 8

    def check(self) -> Importance:
        """Every setting that needs no model; returns the parsed importance."""
        check_ratio(self.pruning_ratio)
        if self.pruning_strategy not in STRATEGIES:
            raise PzError(
                f"unknown --pruning_strategy '{self.pruning_strategy}'; choose from "
                f"{', '.join(STRATEGIES)} (global: importance/cost knapsack over the whole "
                f"model; inverse, uniform: layer-wise budgets)"
            )
        if self.pruning_distribution is not None:
            if self.pruning_strategy == "global":
                raise PzError(
                    "--pruning_distribution applies to layer-wise allocation (--pruning_strategy "
                    "inverse or uniform); global allocation balances attention and MLP itself"
                )
            parse_distribution(self.pruning_distribution)
        if self.layer_importance not in LAYER_IMPORTANCE:
            raise PzError(
                f"unknown --layer_importance '{self.layer_importance}'; choose from "
                f"{', '.join(LAYER_IMPORTANCE)}"
            )
        if self.freeze_top_n_layers < 0:
            raise PzError(f"--freeze_top_n_layers must be >= 0, got {self.freeze_top_n_layers}")
        self.calib.check(samples_flag="--num_samples")
        self.eval.check()
        if self.finetune is not None:
            self.finetune.check()
        if self.speed_windows < 0:
            raise PzError(f"--speed_windows must be >= 0, got {self.speed_windows}")
        if self.batch_size < 1:
            raise PzError(f"--batch_size must be at least 1, got {self.batch_size}")
        return parse_importance(self.importance_method)

    @property
    def evaluates(self) -> bool:
        return self.test_after_prune and self.eval.enabled


@dataclass
class StructuredOutcome:
    """What a run produced, beyond the results dict."""

    lm: LoadedModel
    results: dict
    plan: Plan
    blocks: list[dict]  # per original block: plan + removed flag
    surgery: SurgeryReport


def run_structured(
    job: StructuredJob,
    progress: ProgressFn | None = None,
    *,
    lm: LoadedModel | None = None,
    stats: CalibStats | None = None,
    evaluation: Evaluation | None = None,
    dense: dict | None = None,
) -> StructuredOutcome:
    """Run the whole job. ``lm``, ``stats``, ``evaluation`` and ``dense`` (the dense model's
    ``Evaluation.measure(..., suffix="_dense")``) may be given to reuse them: the benchmark
    shares them between configurations."""
    imp = job.check()
    t0 = time.perf_counter()
    lm = lm or load_model(job.model.name, device=job.model.device)
    fingerprint = lm.fingerprint()  # of the weights as loaded, before the surgery
    load_seconds = time.perf_counter() - t0
    parts = model_parts(lm.model)  # fails early, clearly, on non-GQA models
    check_feasible(
        parts,
        job.pruning_ratio,
        job.pruning_strategy,
        job.pruning_distribution,
        job.freeze_top_n_layers,
    )
    seqlen = resolve_seqlen(lm, job.calib.seqlen or min(DEFAULT_SEQLEN, lm.max_positions))
    calib_text = load_text(job.calib.data, role="calib")
    if job.evaluates and evaluation is None:
        evaluation = Evaluation(lm, job.eval, seqlen)
    if not job.evaluates:
        evaluation = None
    log.info("model %s (%s), %d blocks", lm.name, lm.source, len(parts))

    def measure(tag: str, suffix: str) -> dict:
        if evaluation is None:
            return {}
        emit(progress, "eval", 0, evaluation.fields["eval_windows"], tag)
        out = evaluation.measure(lm, progress, suffix=suffix, speed_windows=job.speed_windows)
        log.info("%s: perplexity %.3f", tag, out[f"ppl{suffix}"])
        return out

    if dense is None:
        dense = measure("dense", "_dense")
    stats_seconds = 0.0
    if stats is None:
        calib_ids = calibration_windows(
            lm.tokenizer, calib_text, job.calib.nsamples, seqlen, job.calib.seed
        )
        t = time.perf_counter()
        stats = collect_stats(
            lm.model,
            calib_ids,
            gradients=imp.needs_gradients,
            activations=imp.needs_activations,
            batch_size=job.batch_size,
            progress=progress,
        )
        stats_seconds = time.perf_counter() - t
        log.info(
            "statistics over %d x %d tokens in %.1f s", job.calib.nsamples, seqlen, stats_seconds
        )
    elif imp.needs_gradients and not stats.grad_mean:
        raise PzError(f"importance {imp.label} needs gradient statistics")
    t = time.perf_counter()
    importance = unit_importance(parts, imp, stats)
    plan = make_plan(
        parts,
        importance,
        job.pruning_ratio,
        strategy=job.pruning_strategy,
        distribution=job.pruning_distribution,
        block_importance=stats.block_importance(job.layer_importance),
        freeze_top_n=job.freeze_top_n_layers,
        alpha=job.inverse_alpha,
    )
    blocks = plan.blocks(parts)
    surgery = apply_plan(lm.model, plan, remove_empty_layers=job.remove_empty_layers)
    prune_seconds = time.perf_counter() - t
    for b in blocks:
        b["removed"] = b["block"] in surgery.removed_blocks
    emit(progress, "prune", 1, 1, f"{plan.achieved_ratio:.1%} of block parameters removed")
    log.info(
        "removed %d of %d block parameters (%.2f%%), %d blocks removed; model %d -> %d params",
        plan.params_removed,
        plan.params_before,
        100 * plan.achieved_ratio,
        len(surgery.removed_blocks),
        surgery.model_params_before,
        surgery.model_params_after,
    )
    results = {
        "model": job.model.name,
        "model_source": lm.source,
        "model_fingerprint": fingerprint,
        "device": str(lm.device),
        "method": "structured",
        "sparsity_ratio": job.pruning_ratio,
        "sparsity_type": "structured",
        "importance": imp.label,
        "pruning_strategy": job.pruning_strategy,
        "pruning_ratio": job.pruning_ratio,
        "pruning_distribution": list(plan.distribution) if plan.distribution else None,
        "layer_importance": job.layer_importance,
        "frozen_blocks": plan.frozen,
        "calib_data": calib_text.name,
        "nsamples": stats.nsamples,
        "seqlen": seqlen,
        "seed": job.calib.seed,
        "params_before": plan.params_before,
        "params_after": plan.params_after,
        "achieved_ratio": plan.achieved_ratio,
        "model_params_before": surgery.model_params_before,
        "model_params_after": surgery.model_params_after,
        "by_kind": kind_summary(plan),
        "removed_blocks": surgery.removed_blocks,
        "num_blocks_after": len(surgery.source_blocks),
        "load_seconds": load_seconds,
        "stats_seconds": stats_seconds,
        "prune_seconds": prune_seconds,
        **dense,
        **measure("pruned", ""),
    }
    if job.finetune is not None:
        ft = finetune_stage(
            lm,
            job.finetune,
            default_data=job.calib.data,
            default_seqlen=seqlen,
            evaluation=evaluation,
            progress=progress,
            speed_windows=job.speed_windows,
        )
        rep = ft["finetune"]
        log.info(
            "%s fine-tuning: %d steps, loss %.3f -> %.3f in %.0f s",
            rep["method"],
            rep["steps"],
            rep["loss_first"],
            rep["loss_last"],
            rep["seconds"],
        )
        results.update(ft)
    results.update(footer())
    return StructuredOutcome(lm, schema.finish(results, "structured"), plan, blocks, surgery)


def save_pruned_model(out: StructuredOutcome, directory: str | Path) -> Path:
    """The pruned model with its per-block shapes (reload: ``load_model(directory)``) and a
    note of how it was made."""
    path = save_structured(
        out.lm.model,
        out.lm.tokenizer,
        directory,
        removed_blocks=out.surgery.removed_blocks,
        source_blocks=out.surgery.source_blocks,
        notes={PROVENANCE_FILE: provenance_of(out.results)},
    )
    return Path(path)


def write_run_dir(
    out: StructuredOutcome, job: StructuredJob, directory: str | Path, *, model_dir=None
) -> dict[str, Path]:
    """settings.json, units.csv, blocks.json, kept.png, results.json [, the model]."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "settings": d / "settings.json",
        "units": d / "units.csv",
        "blocks": d / "blocks.json",
        "plot": d / "kept.png",
        "results": d / "results.json",
    }
    atomic.write_json(files["settings"], asdict(job))
    write_units_csv(out.plan, files["units"])
    blocks_doc = {
        "blocks": out.blocks,
        "removed_blocks": out.surgery.removed_blocks,
        "source_blocks": out.surgery.source_blocks,
        "structure": structure_of(out.lm.model),
    }
    atomic.write_json(files["blocks"], blocks_doc)
    title = (
        f"{job.model.name}: {job.pruning_strategy} {out.results['importance']}, "
        f"{out.plan.achieved_ratio:.1%} of block parameters removed"
    )
    plot_kept(out.blocks, files["plot"], title)
    if model_dir is not None:
        files["model"] = save_pruned_model(out, model_dir)
        out.results["model_dir"] = str(model_dir)
    schema.write_results(files["results"], out.results)
    return files
