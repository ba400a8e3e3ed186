"""Where to prune: one sparsity ratio per decoder block, whatever the metric.

``uniform`` gives every block the requested ratio. ``owl`` is outlier-weighted layer-wise
sparsity (Yin et al., 2023, "Outlier Weighed Layerwise Sparsity"), as its published code
computes it:

1. on the *dense* model, block by block, score every weight of the block's linears with Wanda's
   ``|W| * sqrt(X)`` and take the block's outlier ratio ``D_l``: the percentage of scores above
   ``M`` times their mean over the whole block;
2. spread the ratios linearly onto ``[0, 2*lambda]``: ``D'_l = (D_l - min D) / (max D - min D) *
   2*lambda``;
3. keep ``1 - s + D'_l - mean(D')`` of block ``l``: a block with more outliers keeps more, and the
   mean kept fraction is exactly ``1 - s``.

Blocks of different sizes (never the case in a stock LLaMA) are weighted by their parameter
count so that the model-wide sparsity stays the requested one; a ratio outside ``[0, MAX]`` is
clipped and the difference spread over the other blocks (:func:`fit_to_target`). Pure
functions, plus :func:`owl_block_ratios`, the dense statistics pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import PzError
from ..models.arch import decoder_blocks, find_linears
from ..progress import ProgressFn, emit
from .calib import capture_block_inputs, run_block, run_block_collecting

ALLOCATIONS = ("uniform", "owl")  # or an allocation formula (.alloc_formula)
OWL_M = 5.0  # the paper's outlier threshold M (Table 8: 5 for LLaMA-7B/13B)
OWL_LAMBDA = 0.08  # the paper's spread lambda (0.08 for LLaMA-7B)
MAX_RATIO = 0.99  # no block is pruned further than this


class AllocationError(PzError):
    pass


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """Percentage of all entries of ``scores`` (one block's linears) above ``m`` x their mean."""
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    return float((flat > flat.mean() * m).sum()) / flat.numel() * 100.0


def owl_from_outliers(outliers: Sequence[float], sparsity: float, lam: float) -> list[float]:
    """The published rule: per-block sparsity from per-block outlier ratios (equal block sizes)."""
    d = torch.tensor(list(outliers), dtype=torch.float64)
    if len(d) == 0:
        return []
    spread = d.max() - d.min()
    if spread <= 0:  # every block alike: nothing to weigh
        return [sparsity] * len(d)
    d = (d - d.min()) / spread * (2 * lam)
    keep = d - d.mean() + (1 - sparsity)
    return [float(1 - k) for k in keep]


def fit_to_target(
    ratios: Sequence[float], sizes: Sequence[int], target: float, hi: float = MAX_RATIO
) -> list[float]:
    """``ratios`` moved so that ``sum(r_l * n_l) = target * sum(n_l)`` with every ``r_l`` in
    ``[0, hi]``: the shortfall is spread over the unclipped blocks in proportion to their size,
    and blocks that cross a bound are clipped, until the total is met."""
    if not 0 <= target <= hi:
        raise AllocationError(f"sparsity {target} cannot be met with every block at most {hi}")
    r = [float(x) for x in ratios]
    n = [float(s) for s in sizes]
    total = sum(n)
    fixed: set[int] = set()
    for _ in range(len(r) + 1):
        r = [min(max(x, 0.0), hi) for x in r]
        gap = target * total - sum(x * w for x, w in zip(r, n, strict=True))
        if abs(gap) <= 1e-12 * total:
            return r
        free = [
            i
            for i in range(len(r))
            if i not in fixed and ((gap > 0 and r[i] < hi) or (gap < 0 and r[i] > 0))
        ]
        if not free:
            break
        share = gap / sum(n[i] for i in free)
        for i in free:
            r[i] += share
            if r[i] >= hi or r[i] <= 0:
                fixed.add(i)
    raise AllocationError(f"no per-block ratios in [0, {hi}] reach the sparsity {target}")


@torch.no_grad()
def owl_block_ratios(
    model: nn.Module,
    calib_ids: torch.Tensor,
    sparsity: float,
    *,
    m: float = OWL_M,
    lam: float = OWL_LAMBDA,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
) -> tuple[list[float], list[float]]:
    """``(ratios, outliers)``: OWL's per-block sparsity, from one pass over the dense model."""
    terms, sizes = block_statistics(
        model, calib_ids, m=m, batch_size=batch_size, want_angular=False, progress=progress
    )
    outliers = terms["D"]
    ratios = fit_to_target(owl_from_outliers(outliers, sparsity, lam), sizes, sparsity)
    return ratios, outliers


@torch.no_grad()
def block_statistics(
    model: nn.Module,
    calib_ids: torch.Tensor,
    *,
    m: float = OWL_M,
    batch_size: int = 8,
    want_angular: bool = True,
    progress: ProgressFn | None = None,
) -> tuple[dict[str, list[float]], list[int]]:
    """``({"D": ..., "A": ..., "L": ...}, sizes)``: the per-block terms of an allocation formula
    (:mod:`.alloc_formula`) and each block's linear parameter count, from one pass over the dense
    model (``A`` only with ``want_angular``)."""
    blocks = decoder_blocks(model)
    chunks = capture_block_inputs(model, calib_ids, batch_size)
    outliers, angular, sizes = [], [], []
    for i, block in enumerate(blocks):
        linears = find_linears(block)
        stats = run_block_collecting(block, linears, chunks, want_h=False)
        scores = [lin.weight.abs() * stats[name].X.sqrt() for name, lin in linears.items()]
        outliers.append(outlier_ratio(scores, m))
        sizes.append(sum(lin.weight.numel() for lin in linears.values()))
        del stats, scores
        if want_angular or i + 1 < len(blocks):
            out = run_block(block, chunks)
            if want_angular:
                angular.append(_angular(chunks, out))
            chunks = out
        emit(progress, "allocate", i + 1, len(blocks), f"block {i}: {outliers[-1]:.2f}% outliers")
    n = len(blocks)
    terms = {"D": outliers, "L": [i / max(n - 1, 1) for i in range(n)]}
    if want_angular:
        terms["A"] = angular
    return terms, sizes


def _angular(inputs, outputs) -> float:
    """Mean over tokens of ``arccos(cos(h_in, h_out)) / pi``."""
    total, count = 0.0, 0
    for a, b in zip(inputs, outputs, strict=True):
        x, y = a.hidden.float().flatten(0, -2), b.hidden.float().flatten(0, -2).to(a.hidden.device)
        cos = torch.nn.functional.cosine_similarity(x, y, dim=-1).clamp(-1, 1)
        total += float(torch.arccos(cos).sum() / math.pi)
        count += cos.numel()
    return total / max(count, 1)


def formula_block_ratios(
    formula: str,
    model: nn.Module,
    calib_ids: torch.Tensor,
    sparsity: float,
    *,
    m: float = OWL_M,
    lam: float = OWL_LAMBDA,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
) -> tuple[list[float], dict[str, list[float]]]:
    """``(ratios, terms)`` of an allocation formula: its value per block, spread as OWL spreads
    its outlier ratios (:func:`.alloc_formula.spread`), fitted to the model-wide target."""
    from .alloc_formula import parse_allocation, spread

    f = parse_allocation(formula)
    terms, sizes = block_statistics(
        model,
        calib_ids,
        m=m,
        batch_size=batch_size,
        want_angular="A" in f.terms,
        progress=progress,
    )
    values = f.values(terms)
    return fit_to_target(spread(values, sparsity, lam), sizes, sparsity), terms
