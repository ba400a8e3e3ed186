"""``pzshell prune`` as a function: load -> calibrate -> prune -> evaluate [-> zero-shot ->
recover -> evaluate again]. The CLI, the benchmarks, the search's final re-runs and the terminal
app's worker all run this, so a prune started anywhere reports the same fields."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data import calibration_windows, load_text
from ..engine.layer_ratios import OWL_LAMBDA, OWL_M
from ..engine.prune import PruneConfig, prune_model
from ..engine.refine import DSNOT_CYCLES, DSNOT_THRESHOLD, SWAP_ROUNDS, SWAP_SHORTLIST
from ..engine.stats import (
    compute_gradients,
    gradient_fingerprint,
    load_gradients,
    save_gradients,
)
from ..evaluate.zeroshot import prepare_tasks
from ..lang import Node, to_infix
from ..models import LoadedModel, count_block_params, load_model, token_fingerprint
from ..progress import ProgressFn
from . import results as schema
from .specs import CalibSpec, EvalSpec, FinetuneSpec, ModelSpec, ZeroShotSpec
from .stages import Evaluation, finetune_stage, footer, resolve_seqlen, zero_shot_stage


@dataclass
class PruneJob:
    method: str = "wanda"
    sparsity_ratio: float = 0.5
    sparsity_type: str = "unstructured"
    metric: Node | None = None
    reconstruct: bool = False
    iterative: bool = False
    use_variant: bool = False
    model: ModelSpec = field(default_factory=ModelSpec)
    calib: CalibSpec = field(default_factory=CalibSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    gradient_path: str | None = None
    batch_size: int = 8
    allocation: str = "uniform"
    owl_m: float = OWL_M
    owl_lambda: float = OWL_LAMBDA
    refine: str = "none"
    dsnot_cycles: int = DSNOT_CYCLES
    dsnot_threshold: float = DSNOT_THRESHOLD
    swap_rounds: int = SWAP_ROUNDS
    swap_shortlist: int = SWAP_SHORTLIST
    refit: int = 0
    zero_shot: ZeroShotSpec | None = None
    finetune: FinetuneSpec | None = None

    def config(self) -> PruneConfig:
        """The engine's settings; building it checks method, sparsity and metric."""
        return PruneConfig(
            method=self.method,
            sparsity_ratio=self.sparsity_ratio,
            sparsity_type=self.sparsity_type,
            metric=self.metric,
            reconstruct=self.reconstruct,
            iterative=self.iterative,
            use_variant=self.use_variant,
            batch_size=self.batch_size,
            allocation=self.allocation,
            owl_m=self.owl_m,
            owl_lambda=self.owl_lambda,
            refine=self.refine,
            dsnot_cycles=self.dsnot_cycles,
            dsnot_threshold=self.dsnot_threshold,
            swap_rounds=self.swap_rounds,
            swap_shortlist=self.swap_shortlist,
            refit=self.refit,
        )

    def check(self) -> PruneConfig:
        """Everything that needs no model, before the slow work starts."""
        self.calib.check()
        self.eval.check()
        if self.zero_shot:
            self.zero_shot.check()
        if self.finetune:
            self.finetune.check()
        return self.config()


def _median(values) -> float | None:
    """The median (the upper one of an even count) of the values that are not None; None when
    there are none: the layers' error ratios, summarised."""
    xs = sorted(v for v in values if v is not None)
    return xs[len(xs) // 2] if xs else None


def run_prune(
    job: PruneJob, progress: ProgressFn | None = None, lm: LoadedModel | None = None
) -> tuple[LoadedModel, dict]:
    """Run a prune job; returns the pruned model and its results dict (schema-checked)."""
    cfg = job.check()
    prepared = prepare_tasks(job.zero_shot.tasks) if job.zero_shot else None  # fail fast
    t_load = time.perf_counter()
    lm = lm or load_model(job.model.name, device=job.model.device)
    load_seconds = time.perf_counter() - t_load
    fingerprint = lm.fingerprint()  # of the weights as loaded, before any is pruned
    seqlen = resolve_seqlen(lm, job.calib.seqlen)
    evaluation = Evaluation(lm, job.eval, seqlen) if job.eval.enabled else None  # before pruning
    calib_text = calib_ids = None
    have_grads = bool(job.gradient_path) and Path(job.gradient_path).exists()
    if cfg.needs_calibration or (cfg.needs_gradients and not have_grads):
        calib_text = load_text(job.calib.data, role="calib")
        calib_ids = calibration_windows(
            lm.tokenizer, calib_text, job.calib.nsamples, seqlen, job.calib.seed
        )
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
        "model": job.model.name,
        "model_source": lm.source,
        "model_fingerprint": fingerprint,
        "device": str(lm.device),
        "method": cfg.label,
        "metric": to_infix(cfg.metric) if cfg.metric is not None else None,
        "sparsity_ratio": job.sparsity_ratio,
        "sparsity_type": job.sparsity_type,
        "use_variant": job.use_variant,
        "actual_sparsity": zeros / total,
        "pruned_fraction": pr.sparsity,
        "nsamples": job.calib.nsamples if calib_ids is not None else 0,
        "seqlen": seqlen,
        "seed": job.calib.seed,
        "calib_data": calib_text.name if calib_text is not None else None,
        "calib_fingerprint": token_fingerprint(calib_ids) if calib_ids is not None else None,
        "gradient_path": job.gradient_path,
        "gradient_fingerprint": gradient_fingerprint(grads) if grads is not None else None,
        "grad_seconds": grad_seconds,
        "prune_seconds": pr.seconds,
        "load_seconds": load_seconds,
        "layers": [asdict(r) for r in pr.layers],
        "allocation": cfg.allocation,
        "refine": cfg.refine,
        "refit": cfg.refit,
    }
    if cfg.refit:
        results["refit_error_median"] = _median(r.refit_error for r in pr.layers)
    if cfg.refine == "dsnot":
        results.update(
            refine_swaps=sum(r.swaps for r in pr.layers),
            dsnot_cycles=cfg.dsnot_cycles,
            dsnot_threshold=cfg.dsnot_threshold,
        )
    if cfg.refine == "swaps":
        results.update(
            refine_swaps=sum(r.swaps for r in pr.layers),
            swap_rounds=cfg.swap_rounds,
            swap_shortlist=cfg.swap_shortlist,
            refine_error_median=_median(r.refine_error for r in pr.layers),
        )
    if pr.block_ratios is not None:
        zeros_by_block: dict[int, list[int]] = {}
        for r in pr.layers:
            z = zeros_by_block.setdefault(r.block, [0, 0])
            z[0] += r.pruned
            z[1] += r.shape[0] * r.shape[1]
        results.update(
            block_sparsity=[round(x, 6) for x in pr.block_ratios],
            block_sparsity_achieved=[round(z / n, 6) for z, n in zeros_by_block.values()],
            allocation_seconds=pr.allocation_seconds,
        )
    if pr.block_outliers is not None:
        results.update(
            block_outliers=[round(x, 4) for x in pr.block_outliers],
            owl_m=cfg.owl_m,
            owl_lambda=cfg.owl_lambda,
        )
    if pr.block_angular is not None:
        results.update(block_angular=[round(x, 5) for x in pr.block_angular])
    if evaluation is not None:
        results.update(evaluation.measure(lm, progress))
    if prepared is not None:
        results.update(zero_shot_stage(lm, prepared, job.zero_shot, progress))
    if job.finetune is not None:
        results.update(
            finetune_stage(
                lm,
                job.finetune,
                default_data=job.calib.data,
                default_seqlen=seqlen,
                evaluation=evaluation,
                progress=progress,
            )
        )
        if prepared is not None:
            suffix = "_after_finetune"
            results.update(zero_shot_stage(lm, prepared, job.zero_shot, progress, suffix=suffix))
    results.update(footer())
    return lm, schema.finish(results, "prune")
