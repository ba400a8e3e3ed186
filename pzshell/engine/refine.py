"""Training-free mask refinement: DSnoT (Zhang et al., 2023, "Dynamic Sparse No Training").

A metric's mask is final once computed; DSnoT then swaps, row by row, one pruned weight back in
and one kept weight out, to shrink the row's *expected reconstruction error*

    e_i = sum over the pruned j of  w_ij * mu_j,

the mean change of output ``i`` over the calibration tokens that pruning causes (``mu_j``: input
column ``j`` summed over a window's tokens, averaged over windows, the published code's
``sum_metric_row``). Each cycle, for every row still being refined:

* **grow** the pruned weight whose ``w_ij mu_j / var_j^p`` (``var_j``: the variance of input
  ``j``) has the sign of ``e_i`` and is largest in size: restoring it moves ``e_i`` most towards 0
  per unit of the input's noise;
* **prune** a kept weight whose ``w_ij mu_j`` has the opposite sign, the least important first
  by the *metric's own* score (Wanda's score in the published code; here whatever metric chose the
  mask); for N:M, the least important kept weight of the grown weight's group of ``M``, so the
  pattern holds;
* keep the swap only if ``|e_i|`` exceeds the threshold, the swap makes ``|e_i|`` smaller and
  ``e_i`` keeps its sign; a row whose swap is refused stops.

Every swap exchanges one pruned and one kept weight of one row (of one N:M group), so the
sparsity is exactly unchanged, and ``|e_i|`` never grows. Pure functions on tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

REFINEMENTS = ("none", "dsnot")
DSNOT_CYCLES = 50  # the published defaults (--max_cycle_time, --update_threshold,
DSNOT_THRESHOLD = 0.1  # --pow_of_var_regrowing)
DSNOT_POW_VAR = 1.0


@dataclass
class RefineReport:
    swaps: int  # weights regrown (= weights newly pruned)
    cycles: int
    error_before: float  # sum over rows of |e_i|
    error_after: float


def expected_error(weight: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """``e_i = sum_{j pruned} w_ij mu_j`` for every row (``mask`` True = pruned)."""
    return (weight.float() * mu.reshape(1, -1) * mask).sum(dim=1)


@torch.no_grad()
def dsnot(
    weight: torch.Tensor,
    mask: torch.Tensor,
    scores: torch.Tensor,
    mu: torch.Tensor,
    var: torch.Tensor,
    *,
    n: int = 0,
    m: int = 0,
    cycles: int = DSNOT_CYCLES,
    threshold: float = DSNOT_THRESHOLD,
    pow_var: float = DSNOT_POW_VAR,
) -> tuple[torch.Tensor, RefineReport]:
    """The refined mask (True = pruned) of one linear layer, and what was done."""
    W = weight.float()
    rows, cols = W.shape
    mask = mask.clone()
    initial = mask.clone()
    D = W * mu.float().reshape(1, -1)
    e = (D * mask).sum(dim=1)
    before = float(e.abs().sum())
    sign0 = torch.sign(e)
    ar = torch.arange(rows, device=W.device)

    # growing: every weight by w mu / var^p, ascending; kept ones at 0, in the middle, never
    # taken (the check below refuses them); pointers walk in from both ends
    grow_key = torch.where(mask, D / var.float().clamp_min(1e-12).pow(pow_var).reshape(1, -1), 0)
    grow_order = torch.sort(grow_key, dim=1, stable=True)[1]
    g_lo = torch.zeros(rows, dtype=torch.long, device=W.device)
    g_hi = torch.full((rows,), cols - 1, dtype=torch.long, device=W.device)

    if not n:
        # pruning: the initially kept weights, the negative-D ones in ascending importance, then
        # the positive ones in descending importance (the least important of each sign at the
        # two ends), the initially pruned after them
        imp = torch.where(mask, torch.inf, scores.float())
        by_imp = torch.sort(imp, dim=1, stable=True)[1]
        rank = torch.empty_like(by_imp)
        rank.scatter_(1, by_imp, torch.arange(cols, device=W.device).expand(rows, cols))
        key = torch.where(D < 0, rank, 2 * cols - rank).double()
        key = torch.where(mask, torch.inf, key)
        prune_order = torch.sort(key, dim=1, stable=True)[1]
        p_lo = torch.zeros(rows, dtype=torch.long, device=W.device)
        p_hi = (~mask).sum(dim=1) - 1

    active = torch.ones(rows, dtype=torch.bool, device=W.device)
    swaps = done = 0
    for done in range(1, cycles + 1):  # noqa: B007 (the count is reported)
        pos, neg = e > 0, e < 0  # which end each row takes from, this cycle
        g = grow_order[ar, torch.where(pos, g_hi, g_lo)]
        if n:
            start = g - g % m
            block = start.unsqueeze(1) + torch.arange(m, device=W.device)
            candidate = ~mask.gather(1, block) & ~initial.gather(1, block)
            imp = torch.where(candidate, scores.float().gather(1, block), torch.inf)
            p = block[ar, imp.argmin(dim=1)]
            p_ok = candidate.any(dim=1)
        else:
            p = prune_order[ar, torch.where(neg, p_hi, p_lo).clamp_min(0)]
            p_ok = p_hi >= p_lo
        Dg, Dp = D[ar, g], D[ar, p]
        after = e + Dp - Dg
        ok = (
            active
            & p_ok
            & mask[ar, g]
            & ~mask[ar, p]
            & (e.abs() > threshold)
            & (after.abs() < e.abs())
            & (torch.sign(after) == sign0)
        )
        active = ok
        if not ok.any():
            break
        mask[ar[ok], g[ok]] = False
        mask[ar[ok], p[ok]] = True
        e = torch.where(ok, after, e)
        swaps += int(ok.sum())
        g_hi = g_hi - pos.long()
        g_lo = g_lo + (~pos).long()
        if not n:
            p_hi = p_hi - neg.long()
            p_lo = p_lo + (~neg).long()
    return mask, RefineReport(swaps, done, before, float(e.abs().sum()))
