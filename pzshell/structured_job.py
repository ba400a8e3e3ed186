"""The structured-pruning job: load -> statistics -> importance -> plan -> surgery -> evaluate ->
recover (LoRA / full fine-tuning) -> write the run directory.

Called by ``pzshell structured`` and the benchmark; the domain math lives in
:mod:`pzshell.engine.structured`, saving and reloading in :mod:`pzshell.engine.structured_io`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .data import calibration_windows, eval_windows, load_text
from .engine import structured as S
from .engine.events import ProgressFn, emit
from .engine.structured_io import kind_summary, plot_kept, save_structured, write_units_csv
from .errors import PzError
from .evaluate.perplexity import perplexity
from .evaluate.throughput import forward_tokens_per_second
from .jobs import resolve_seqlen
from .models import LoadedModel, load_model
from .util import peak_rss_mb

log = logging.getLogger("pzshell.structured")

DEFAULT_SEQLEN = 512
FINETUNE_METHODS = ("lora", "full")


@dataclass
class StructuredJob:
    model: str = "smollm2"
    pruning_ratio: float = 0.25
    importance_method: str = "taylor"
    num_samples: int = 32
    calib: str = "builtin"
    seqlen: int | None = None  # calibration window (default min(512, max positions))
    seed: int = 0
    pruning_strategy: str = "global"  # global | inverse | uniform
    pruning_distribution: str | None = None  # A:M, layer-wise only (default 2:8)
    freeze_top_n_layers: int = 0
    layer_importance: str = "cosine"
    inverse_alpha: float = 1.0
    remove_empty_layers: bool = False
    finetune: bool = False
    finetune_method: str = "lora"
    lora_r: int = 8
    lora_alpha: float = 16.0
    finetune_samples: int = 64
    finetune_lr: float | None = None  # default: 1e-4 (LoRA), 1e-5 (full)
    finetune_epochs: int = 1
    finetune_seqlen: int | None = None  # default: the calibration window
    finetune_batch_size: int = 1
    test_after_prune: bool = False
    eval: str | None = "builtin"
    eval_seqlen: int | None = None
    eval_windows: int | None = None
    speed_windows: int = 2
    device: str | None = "auto"
    batch_size: int = 8
    extra: dict = field(default_factory=dict)

    def validate(self) -> S.Importance:
        """Check every setting that needs no model; returns the parsed importance."""
        S.check_ratio(self.pruning_ratio)
        if self.pruning_strategy not in S.STRATEGIES:
            raise PzError(
                f"unknown --pruning_strategy '{self.pruning_strategy}'; choose from "
                f"{', '.join(S.STRATEGIES)} (global: importance/cost knapsack over the whole "
                f"model; inverse, uniform: layer-wise budgets)"
            )
        if self.pruning_distribution is not None:
            if self.pruning_strategy == "global":
                raise PzError(
                    "--pruning_distribution applies to layer-wise allocation (--pruning_strategy "
                    "inverse or uniform); global allocation balances attention and MLP itself"
                )
            S.parse_distribution(self.pruning_distribution)
        if self.layer_importance not in S.LAYER_IMPORTANCE:
            raise PzError(
                f"unknown --layer_importance '{self.layer_importance}'; choose from "
                f"{', '.join(S.LAYER_IMPORTANCE)}"
            )
        if self.freeze_top_n_layers < 0:
            raise PzError(f"--freeze_top_n_layers must be >= 0, got {self.freeze_top_n_layers}")
        if self.num_samples < 1:
            raise PzError(f"--num_samples must be at least 1, got {self.num_samples}")
        if self.finetune:
            if self.finetune_method not in FINETUNE_METHODS:
                raise PzError(
                    f"unknown --finetune_method '{self.finetune_method}'; choose from "
                    f"{', '.join(FINETUNE_METHODS)}"
                )
            if self.finetune_samples < 1:
                raise PzError(f"--finetune_samples must be at least 1, got {self.finetune_samples}")
            if self.finetune_lr is not None and not self.finetune_lr > 0:
                raise PzError(f"--finetune_lr must be positive, got {self.finetune_lr}")
            if self.lora_r < 1:
                raise PzError(f"--lora_r must be at least 1, got {self.lora_r}")
        if self.speed_windows < 0:
            raise PzError(f"speed windows must be >= 0, got {self.speed_windows}")
        return S.parse_importance(self.importance_method)

    @property
    def evaluates(self) -> bool:
        return self.test_after_prune and bool(self.eval) and self.eval != "none"


@dataclass
class StructuredOutcome:
    """What a run produced, beyond the JSON-ready results."""

    lm: LoadedModel
    results: dict
    plan: S.Plan
    blocks: list[dict]  # per original block: plan + removed flag
    surgery: S.SurgeryReport


def measure(
    lm: LoadedModel, windows: torch.Tensor | None, speed_windows: int, progress, tag: str
) -> dict:
    """Perplexity over the eval windows and forward tokens/s over the first few of them."""
    if windows is None:
        return {}
    emit(progress, "eval", 0, windows.shape[0], tag)
    t = time.perf_counter()
    r = perplexity(lm.model, windows, progress=progress)
    out = {"ppl": r.ppl, "nll": r.nll, "eval_seconds": time.perf_counter() - t}
    if speed_windows:
        out["tokens_per_s"] = forward_tokens_per_second(lm.model, windows[:speed_windows])
    log.info("%s: perplexity %.3f%s", tag, r.ppl,
             f", {out['tokens_per_s']:.0f} tokens/s" if "tokens_per_s" in out else "")  # fmt: skip
    return out


def finetune_model(
    lm: LoadedModel, job: StructuredJob, train_ids: torch.Tensor, progress: ProgressFn | None
) -> dict:
    """LoRA (merged into the weights) or full fine-tuning, through pzshell.engine.finetune."""
    from .engine.finetune import full_finetune, lora_finetune

    if job.finetune_method == "lora":
        rep = lora_finetune(
            lm.model, lm.tokenizer, train_ids, r=job.lora_r, alpha=job.lora_alpha,
            lr=job.finetune_lr or 1e-4, epochs=job.finetune_epochs,
            batch_size=job.finetune_batch_size, progress=progress, seed=job.seed,
        )  # fmt: skip
    else:
        rep = full_finetune(
            lm.model, lm.tokenizer, train_ids, lr=job.finetune_lr or 1e-5,
            epochs=job.finetune_epochs, batch_size=job.finetune_batch_size, progress=progress,
            seed=job.seed,
        )  # fmt: skip
    lm.model.eval()
    return rep


def run_structured(
    job: StructuredJob,
    progress: ProgressFn | None = None,
    *,
    lm: LoadedModel | None = None,
    stats: S.CalibStats | None = None,
    dense: dict | None = None,
) -> StructuredOutcome:
    """Run the whole job; ``lm`` / ``stats`` / ``dense`` (perplexity and tokens/s of the dense
    model) may be given to reuse them: the benchmark shares them between configurations."""
    imp = job.validate()
    t0 = time.perf_counter()
    lm = lm or load_model(job.model, device=job.device)
    load_seconds = time.perf_counter() - t0
    parts = S.model_parts(lm.model)  # fails early, clearly, on non-GQA models
    S.check_feasible(
        parts, job.pruning_ratio, job.pruning_strategy, job.pruning_distribution,
        job.freeze_top_n_layers,
    )  # fmt: skip
    seqlen = resolve_seqlen(lm, job.seqlen or min(DEFAULT_SEQLEN, lm.max_positions))
    calib_text = load_text(job.calib, role="calib")
    windows = None
    eval_info: dict = {}
    if job.evaluates:
        eval_text = load_text(job.eval, role="eval")
        eseq = resolve_seqlen(lm, job.eval_seqlen or seqlen)
        windows = eval_windows(lm.tokenizer, eval_text, eseq, job.eval_windows)
        eval_info = {
            "eval_data": eval_text.name, "eval_seqlen": eseq,
            "eval_windows": int(windows.shape[0]), "eval_tokens": int(windows.numel()),
        }  # fmt: skip
    log.info("model %s (%s), %d blocks", lm.name, lm.source, len(parts))
    if dense is None:
        dense = measure(lm, windows, job.speed_windows, progress, "dense")
    stats_seconds = 0.0
    if stats is None:
        calib_ids = calibration_windows(lm.tokenizer, calib_text, job.num_samples, seqlen, job.seed)
        t = time.perf_counter()
        stats = S.collect_stats(
            lm.model, calib_ids, gradients=imp.needs_gradients,
            activations=imp.needs_activations, batch_size=job.batch_size, progress=progress,
        )  # fmt: skip
        stats_seconds = time.perf_counter() - t
        log.info("statistics over %d x %d tokens in %.1f s", job.num_samples, seqlen, stats_seconds)
    elif imp.needs_gradients and not stats.grad_mean:
        raise PzError(f"importance {imp.label} needs gradient statistics")
    t = time.perf_counter()
    importance = S.unit_importance(parts, imp, stats)
    block_imp = stats.block_importance(job.layer_importance)
    plan = S.make_plan(
        parts, importance, job.pruning_ratio, strategy=job.pruning_strategy,
        distribution=job.pruning_distribution, block_importance=block_imp,
        freeze_top_n=job.freeze_top_n_layers, alpha=job.inverse_alpha,
    )  # fmt: skip
    blocks = plan.blocks(parts)
    surgery = S.apply_plan(lm.model, plan, remove_empty_layers=job.remove_empty_layers)
    prune_seconds = time.perf_counter() - t
    for b in blocks:
        b["removed"] = b["block"] in surgery.removed_blocks
    emit(progress, "prune", 1, 1, f"{plan.achieved_ratio:.1%} of block parameters removed")
    log.info(
        "removed %d of %d block parameters (%.2f%%), %d blocks removed; model %d -> %d params",
        plan.params_removed, plan.params_before, 100 * plan.achieved_ratio,
        len(surgery.removed_blocks), surgery.model_params_before, surgery.model_params_after,
    )  # fmt: skip
    pruned = measure(lm, windows, job.speed_windows, progress, "pruned")
    ft_report = None
    recovered: dict = {}
    if job.finetune:
        fseq = resolve_seqlen(lm, job.finetune_seqlen or seqlen)
        train_ids = calibration_windows(
            lm.tokenizer, calib_text, job.finetune_samples, fseq, job.seed + 1
        )
        ft_report = finetune_model(lm, job, train_ids, progress)
        ft_report["data"] = calib_text.name
        log.info(
            "%s fine-tuning: %d steps, loss %.3f -> %.3f in %.0f s", job.finetune_method,
            ft_report["steps"], ft_report["loss_first"], ft_report["loss_last"],
            ft_report["seconds"],
        )  # fmt: skip
        recovered = measure(lm, windows, job.speed_windows, progress, "fine-tuned")
    results = {
        "model": job.model,
        "model_source": lm.source,
        "importance": imp.label,
        "pruning_strategy": job.pruning_strategy,
        "pruning_ratio": job.pruning_ratio,
        "pruning_distribution": list(plan.distribution) if plan.distribution else None,
        "layer_importance": job.layer_importance,
        "frozen_blocks": plan.frozen,
        "calib_data": calib_text.name,
        "nsamples": stats.nsamples,
        "seqlen": seqlen,
        "seed": job.seed,
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
        "device": str(lm.device),
        **eval_info,
    }
    for tag, d in (("before", dense), ("after", pruned), ("after_finetune", recovered)):
        if "ppl" in d:
            results[f"ppl_{tag}"] = d["ppl"]
        if "tokens_per_s" in d:
            results[f"tokens_per_s_{tag}"] = d["tokens_per_s"]
    if ft_report is not None:
        results["finetune"] = ft_report
    results["peak_rss_mb"] = peak_rss_mb()
    results["torch_threads"] = torch.get_num_threads()
    return StructuredOutcome(lm, results, plan, blocks, surgery)


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
    settings = asdict(job)
    files["settings"].write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    write_units_csv(out.plan, files["units"])
    blocks_doc = {
        "blocks": out.blocks,
        "removed_blocks": out.surgery.removed_blocks,
        "source_blocks": out.surgery.source_blocks,
        "structure": S.structure_of(out.lm.model),
    }
    files["blocks"].write_text(json.dumps(blocks_doc, indent=2) + "\n", encoding="utf-8")
    title = (
        f"{job.model}: {job.pruning_strategy} {out.results['importance']}, "
        f"{out.plan.achieved_ratio:.1%} of block parameters removed"
    )
    plot_kept(out.blocks, files["plot"], title)
    if model_dir is not None:
        files["model"] = save_structured(
            out.lm.model, out.lm.tokenizer, model_dir,
            removed_blocks=out.surgery.removed_blocks, source_blocks=out.surgery.source_blocks,
        )  # fmt: skip
        out.results["model_dir"] = str(model_dir)
    files["results"].write_text(json.dumps(out.results, indent=2) + "\n", encoding="utf-8")
    return files
