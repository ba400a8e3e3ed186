"""Calibration statistics of the dense model for structured pruning, through the statistics
core (:mod:`pzshell.engine.stats`): per-window gradient moments (Taylor importance), input
activations (``X``) and block distances (layer importance), all in one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...progress import ProgressFn
from ..stats import G_SCALE, StatsCollector, forward_windows, gradient_stats, stat_key
from .anatomy import StructuredError, model_parts

LAYER_IMPORTANCE = ("cosine", "angular")


@dataclass
class CalibStats:
    """Statistics of the dense model over calibration windows, keyed ``"{linear}_layer_{block}"``
    (:func:`~pzshell.engine.stats.stat_key`), fp32.

    ``grad_mean``: mean over windows of dL/dw; ``grad_sq_mean``: mean of (dL/dw)^2 (the diagonal
    Fisher, the usual stand-in for the Hessian diagonal); ``x_sq``: mean over tokens of x_j^2 of
    each linear's input (``(1, in)``, the ``X`` of the metric language); ``block_cosine`` /
    ``block_angular``: per block the mean over tokens of ``1 - cos(h_in, h_out)`` and of
    ``arccos(cos(h_in, h_out)) / pi``.
    """

    nsamples: int
    tokens: int
    grad_mean: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_sq_mean: dict[str, torch.Tensor] = field(default_factory=dict)
    x_sq: dict[str, torch.Tensor] = field(default_factory=dict)
    block_cosine: list[float] = field(default_factory=list)
    block_angular: list[float] = field(default_factory=list)

    def block_importance(self, kind: str = "cosine") -> list[float]:
        if kind not in LAYER_IMPORTANCE:
            raise StructuredError(
                f"unknown layer importance '{kind}'; choose from {', '.join(LAYER_IMPORTANCE)}"
            )
        return list(self.block_cosine if kind == "cosine" else self.block_angular)

    def G(self, key: str, scale: float = G_SCALE) -> torch.Tensor:
        """The metric language's gradient statistic ``sqrt(sum_s (scale * g_s)^2)``, fp32 (from
        the second moment, as it always was: not the fp16 form of the gradient file)."""
        return scale * torch.sqrt(self.grad_sq_mean[key] * self.nsamples)


class BlockDistances:
    """Hooks on every decoder block: per block, the sums over tokens of ``1 - cos`` and of
    ``arccos(cos) / pi`` between the block's input and output hidden states."""

    def __init__(self, blocks: list[nn.Module]):
        self.blocks = blocks
        self.sums = torch.zeros(len(blocks), 2, dtype=torch.float64)
        self.count = [0] * len(blocks)
        self._inputs: dict[int, torch.Tensor] = {}
        self._handles = []

    def _pre(self, i: int):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            self._inputs[i] = h.detach()

        return hook

    def _post(self, i: int):
        def hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            h_in = self._inputs.pop(i).float()
            cos = F.cosine_similarity(h_in, out.detach().float(), dim=-1).clamp(-1.0, 1.0)
            self.sums[i, 0] += float((1.0 - cos).sum())
            self.sums[i, 1] += float((torch.arccos(cos) / math.pi).sum())
            self.count[i] += cos.numel()

        return hook

    def __enter__(self):
        for i, b in enumerate(self.blocks):
            self._handles.append(b.register_forward_pre_hook(self._pre(i), with_kwargs=True))
            self._handles.append(b.register_forward_hook(self._post(i), with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._inputs.clear()
        return False

    def means(self) -> tuple[list[float], list[float]]:
        """(cosine, angular) per block."""
        cnt = torch.tensor([max(c, 1) for c in self.count], dtype=torch.float64)
        return (self.sums[:, 0] / cnt).tolist(), (self.sums[:, 1] / cnt).tolist()


def collect_stats(
    model: nn.Module,
    calib_ids: torch.Tensor,
    *,
    gradients: bool = True,
    activations: bool = True,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
) -> CalibStats:
    """One pass over the calibration windows of the (dense) model, with hooks.

    With ``gradients``, every window gets its own forward and backward pass (per-window
    gradients: the second moment needs them) and the activations come from those passes;
    otherwise windows go through in batches without autograd. Only block linear weights ever
    require grad.
    """
    parts = model_parts(model)
    lins = {stat_key(n, p.index): lin for p in parts for n, lin in p.linears().items()}
    n = calib_ids.shape[0]
    if n < 1:
        raise StructuredError("structured pruning needs at least one calibration window")
    stats = CalibStats(nsamples=n, tokens=int(calib_ids.numel()))
    collector = StatsCollector(lins if activations else {}, want_h=False)
    with BlockDistances([p.block for p in parts]) as dist, collector:
        if gradients:
            gs = gradient_stats(
                model,
                calib_ids,
                lins,
                scale=1.0,  # the Taylor moments of g itself (see the core's precision policy)
                first_moment=True,
                collector=collector,
                progress=progress,
                stage="stats",
                describe=lambda s: f"window {s} (forward+backward)",
            )
            stats.grad_mean = {k: v.div_(n) for k, v in gs.sum.items()}
            stats.grad_sq_mean = {k: v.div_(n) for k, v in gs.sq_sum.items()}
        else:
            forward_windows(model, calib_ids, collector, batch_size=batch_size, progress=progress)
    if activations:
        stats.x_sq = {k: collector.stats[k].X for k in lins if k in collector.stats}
    stats.block_cosine, stats.block_angular = dist.means()
    return stats
