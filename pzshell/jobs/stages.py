"""The steps jobs share: window lengths, perplexity, zero-shot accuracy, recovery fine-tuning.

Each returns part of a results dict in the schema of :mod:`pzshell.jobs.results`, so a figure
always carries its model, data, window length and token count.
"""

from __future__ import annotations

import time

import torch

from ..data import calibration_windows, eval_windows, load_text
from ..engine.finetune import FinetuneError, full_finetune, lora_finetune
from ..errors import PzError
from ..evaluate.perplexity import perplexity
from ..evaluate.throughput import forward_tokens_per_second
from ..evaluate.zeroshot import PreparedTasks, evaluate_zero_shot
from ..models import LoadedModel, block_linears, token_fingerprint
from ..progress import ProgressFn
from ..util import peak_rss_mb, runtime_versions
from .specs import EvalSpec, FinetuneSpec, ZeroShotSpec


def resolve_seqlen(lm: LoadedModel, seqlen: int | None) -> int:
    """``seqlen``, or the model's default window length; checked against its positions."""
    if seqlen is None:
        return lm.default_seqlen()
    if seqlen < 2:
        raise PzError(f"window length must be at least 2, got {seqlen}")
    if seqlen > lm.max_positions:
        raise PzError(f"window length {seqlen} exceeds the model's {lm.max_positions} positions")
    return seqlen


class Evaluation:
    """The evaluation windows of one job, tokenized once and measured as often as needed
    (dense, pruned, fine-tuned)."""

    def __init__(self, lm: LoadedModel, spec: EvalSpec, default_seqlen: int):
        text = load_text(spec.data, role="eval")
        self.seqlen = resolve_seqlen(lm, spec.seqlen or default_seqlen)
        self.windows = eval_windows(lm.tokenizer, text, self.seqlen, spec.windows)
        self.fields = {
            "eval_data": text.name,
            "eval_seqlen": self.seqlen,
            "eval_windows": int(self.windows.shape[0]),
            "eval_tokens": int(self.windows.numel()),
            "eval_fingerprint": token_fingerprint(self.windows),
        }

    def measure(
        self,
        lm: LoadedModel,
        progress: ProgressFn | None = None,
        *,
        suffix: str = "",
        speed_windows: int = 0,
    ) -> dict:
        """``ppl<suffix>``, ``eval_nll<suffix>`` (+ ``tokens_per_s<suffix>`` over the first
        ``speed_windows`` windows) and the fields naming the data."""
        t = time.perf_counter()
        r = perplexity(lm.model, self.windows, progress=progress)
        out = dict(self.fields)
        out[f"ppl{suffix}"] = r.ppl
        out[f"eval_nll{suffix}"] = r.nll
        if not suffix:
            out["eval_seconds"] = time.perf_counter() - t
            # each window's NLL: two results on the same windows compare window by window
            out["eval_window_nll"] = [round(v, 6) for v in r.window_nll]
        if speed_windows:
            out[f"tokens_per_s{suffix}"] = forward_tokens_per_second(
                lm.model, self.windows[:speed_windows]
            )
        return out


def evaluate_ppl(
    lm: LoadedModel, spec: EvalSpec, default_seqlen: int, progress: ProgressFn | None = None
) -> dict:
    """Perplexity of ``lm`` now (``{}`` when evaluation is off)."""
    if not spec.enabled:
        return {}
    return Evaluation(lm, spec, default_seqlen).measure(lm, progress)


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
        lm.model,
        lm.tokenizer,
        prepared,
        limit=spec.limit,
        batch_size=spec.batch_size,
        progress=progress,
    )
    return {f"zero_shot{suffix}": zs, f"zero_shot_mean{suffix}": zs["mean_acc"]}


def _zero_masks(model) -> list[torch.Tensor]:
    return [lin.weight.detach() == 0 for blk in block_linears(model) for lin in blk.values()]


def finetune_stage(
    lm: LoadedModel,
    spec: FinetuneSpec,
    *,
    default_data: str,
    default_seqlen: int,
    evaluation: Evaluation | None = None,
    progress: ProgressFn | None = None,
    speed_windows: int = 0,
) -> dict:
    """Fine-tune ``lm`` in place (its zero pattern kept), then measure perplexity again."""
    source = spec.data or default_data
    seqlen = resolve_seqlen(lm, spec.seqlen or min(512, default_seqlen))
    text = load_text(source, role="calib")
    ids = calibration_windows(lm.tokenizer, text, spec.samples, seqlen, spec.seed + 1)
    zeros_before = _zero_masks(lm.model) if spec.preserve_sparsity else None
    common = dict(
        lr=spec.learning_rate,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        preserve_sparsity=spec.preserve_sparsity,
        progress=progress,
        seed=spec.seed,
    )
    if spec.method == "lora":
        rep = lora_finetune(
            lm.model,
            lm.tokenizer,
            ids,
            r=spec.r,
            alpha=spec.alpha,
            dropout=spec.dropout,
            mask_aware=spec.mask_aware,
            **common,
        )
    else:
        rep = full_finetune(lm.model, lm.tokenizer, ids, **common)
    lm.model.eval()
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
    if evaluation is not None:
        out.update(
            evaluation.measure(lm, progress, suffix="_after_finetune", speed_windows=speed_windows)
        )
    return out


def footer() -> dict:
    """What every results dict ends with: peak memory and threads of this process, and the
    versions of what computed it."""
    return {
        "peak_rss_mb": peak_rss_mb(),
        "torch_threads": torch.get_num_threads(),
        "versions": runtime_versions(),
    }
