"""Training-free mask refinements: DSnoT (Zhang et al., 2023, "Dynamic Sparse No Training") and
least-squares swaps (after SparseSwaps, Zimmer et al., 2025). Both change which weights are pruned
and leave every kept weight as it was: the pruned model is still the dense weights under a mask.

DSnoT
-----
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
sparsity is exactly unchanged, and ``|e_i|`` never grows.

Least-squares swaps
-------------------
``swaps`` minimises the layer's exact output error on the calibration tokens, row by row,

    E_i = u_i H u_iᵀ,   u_i = the pruned part of row i (w_ij where j is pruned, else 0),

with ``H`` the inputs' second moment (the Hessian SparseGPT uses). Wanda's score ``|w_ij|
sqrt(H_jj)`` is the diagonal of this; the swaps take the off-diagonal ``H_jk`` (inputs that move
together) into account. The residual ``r_i = u_i H`` makes every move's change exact and cheap:

* **N:M**: each group of ``M`` takes, in turn, the best of its ``C(M, N)`` patterns given every
  other group of its row (``Δ = 2 d·r + d H_gg dᵀ`` for the change ``d`` of the group's pruned
  part); a pass visits every group; passes repeat until one changes nothing or ``rounds`` ran.
* **unstructured**: each step makes, in every row at once, the best 1-swap (prune a kept weight
  ``k``, restore a pruned ``p``: ``Δ = a_k + b_p - 2 w_k w_p H_kp``) among the ``shortlist``
  cheapest ``a_k = 2 w_k r_k + w_k² H_kk`` and ``b_p = w_p² H_pp - 2 w_p r_p``; a row stops when
  its best swap would not lower ``E_i``, and after at most ``in`` swaps.

Only improving moves are made, so ``E_i`` never grows; every row keeps its count of pruned weights
and every group its N:M pattern size, so the sparsity is exactly unchanged. The published
SparseSwaps evaluates every 1-swap on a GPU; the shortlist is what makes it fit a CPU. Pure
functions on tensors.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from .refit import output_error

REFINEMENTS = ("none", "dsnot", "swaps")
DSNOT_CYCLES = 50  # the published defaults (--max_cycle_time, --update_threshold,
DSNOT_THRESHOLD = 0.1  # --pow_of_var_regrowing)
DSNOT_POW_VAR = 1.0
SWAP_ROUNDS = 3  # N:M passes over the groups (3 reach within ~1.3% of 10 on SmolLM2, 2:4)
SWAP_SHORTLIST = 16  # unstructured: candidates on each side of a 1-swap
SWAP_MAX_PATTERNS = 256  # N:M: C(M, N) patterns are tried per group; more is refused


class RefineError(ValueError):
    pass


@dataclass
class RefineReport:
    swaps: int  # DSnoT: weights regrown (= newly pruned); swaps: weights newly pruned by a move
    cycles: int  # DSnoT: cycles; swaps: passes (N:M) or steps (unstructured)
    error_before: float  # DSnoT: sum over rows of |e_i|; swaps: the output error sum_i E_i
    error_after: float

    @property
    def ratio(self) -> float:
        """The error after the refinement over the error before (1.0 for an error of 0)."""
        return self.error_after / self.error_before if self.error_before > 0 else 1.0


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


def nm_patterns(n: int, m: int) -> torch.Tensor:
    """Every way to prune ``n`` of ``m`` weights, as rows of a ``(C(m, n), m)`` 0/1 tensor."""
    combos = list(itertools.combinations(range(m), n))
    out = torch.zeros(len(combos), m)
    for i, c in enumerate(combos):
        out[i, list(c)] = 1.0
    return out


def check_swaps(n: int, m: int) -> None:
    """Refuse an N:M pattern with too many ways to fill a group for the exhaustive pass."""
    if n and math.comb(m, n) > SWAP_MAX_PATTERNS:
        raise RefineError(
            f"least-squares swaps try every pattern of a group, and {n}:{m} has "
            f"{math.comb(m, n):,} (at most {SWAP_MAX_PATTERNS}); use M <= 8, or DSnoT"
        )


@torch.no_grad()
def swaps(
    weight: torch.Tensor,
    mask: torch.Tensor,
    H: torch.Tensor,
    *,
    n: int = 0,
    m: int = 0,
    rounds: int = SWAP_ROUNDS,
    shortlist: int = SWAP_SHORTLIST,
) -> tuple[torch.Tensor, RefineReport]:
    """The refined mask (True = pruned) of one linear layer and what was done: the least-squares
    swaps of the module's docstring. ``H``: the layer's input second moment, ``(in, in)``."""
    check_swaps(n, m)
    if rounds < 1:
        raise RefineError(f"least-squares swaps need at least 1 round, got {rounds}")
    W = weight.double()
    Hd = H.double().to(W.device)
    mask = mask.clone()
    U = W * mask
    R = U @ Hd
    e_row = (U * R).sum(dim=1)
    before = float(e_row.sum())
    # a move must win by more than rounding: relative to the row's error (and the matrix's scale)
    tol = 1e-9 * (e_row.abs() + float(e_row.abs().mean()) * 1e-3 + 1e-30)
    if n:
        changed, done = _swap_groups(W, Hd, mask, U, R, tol, n, m, rounds)
    else:
        changed, done = _swap_pairs(W, Hd, mask, R, tol, shortlist)
    after = output_error(W * mask, Hd)
    return mask, RefineReport(changed, done, before, after)


def _swap_groups(W, H, mask, U, R, tol, n, m, rounds, block: int = 32) -> tuple[int, int]:
    """N:M passes. Two things keep them cheap: a row that no group of a pass changed is at its
    optimum for good (rows are independent), so each pass takes only the rows the last one moved;
    and the residual is brought up to date lazily, as SparseGPT's loop does with its weights:
    inside a block of ``block`` groups only the block's own columns, the rest of ``R`` once per
    block with one matrix product."""
    rows, cols = W.shape
    P = nm_patterns(n, m).to(W)  # (p, m)
    # f(v) = v H v + 2 v·s over the patterns v = w∘P, as two products: the quadratic part from
    # the pairs of each pattern (PP), the linear part from P itself
    PP = (P[:, :, None] * P[:, None, :]).reshape(len(P), m * m).T.contiguous()
    Pt = P.T.contiguous()
    lut = torch.full((2**m,), -1, dtype=torch.long, device=W.device)  # a mask's pattern index
    bits = 2 ** torch.arange(m, device=W.device)
    lut[(P.long() * bits).sum(dim=1)] = torch.arange(len(P), device=W.device)
    width = cols - cols % m
    live = torch.arange(rows, device=W.device)
    newly = 0
    done = 0
    for done in range(1, rounds + 1):  # noqa: B007 (the count is reported)
        Wl, Ul, Rl, Ml, tl = W[live], U[live], R[live], mask[live], tol[live]
        moved = torch.zeros(len(live), dtype=torch.bool, device=W.device)
        for b0 in range(0, width, block * m):
            b1 = min(b0 + block * m, width)
            Rb = Rl[:, b0:b1].clone()  # the block's residual, kept current move by move
            Db = torch.zeros_like(Rb)  # the block's changes of the pruned part
            for g0 in range(b0, b1, m):
                sl, lo = slice(g0, g0 + m), slice(g0 - b0, g0 - b0 + m)
                wg, ug, Hg = Wl[:, sl], Ul[:, sl], H[sl, sl]
                # a pattern's change of E is f(its v) - f(u) with s = r - u H_gg
                sg = Rb[:, lo] - ug @ Hg
                quad = ((wg[:, :, None] * wg[:, None, :]) * Hg).reshape(-1, m * m)
                f = torch.addmm(quad @ PP, wg * sg, Pt, alpha=2)
                cur = lut[(Ml[:, sl].long() * bits).sum(dim=1)]
                f_best, best = f.min(dim=1)
                ok = f_best - f.gather(1, cur[:, None]).squeeze(1) < -tl
                if not bool(ok.any()):
                    continue
                Pb = P.index_select(0, best)
                dd = torch.where(ok[:, None], wg * Pb - ug, 0.0)
                Rb.addmm_(dd, H[sl, b0:b1])
                Db[:, lo] = dd
                Ul[:, sl] += dd
                new_mask = torch.where(ok[:, None], Pb > 0, Ml[:, sl])
                newly += int((new_mask & ~Ml[:, sl]).sum())
                Ml[:, sl] = new_mask
                moved |= ok
            Rl.addmm_(Db, H[b0:b1, :])
        U[live], R[live], mask[live] = Ul, Rl, Ml
        live = live[moved]
        if not len(live):
            break
    return newly, done


def _swap_pairs(W, H, mask, R, tol, shortlist) -> tuple[int, int]:
    """Unstructured steps. A row whose best swap is refused is done for good (nothing else in
    its row changes), so the steps go on with the rows still moving, gathered anew whenever
    fewer than half of those in hand moved."""
    rows, cols = W.shape
    hd = H.diagonal()
    t = max(1, min(shortlist, cols))
    live = (mask.any(dim=1) & ~mask.all(dim=1)).nonzero().squeeze(1)
    Wl, Rl, Ml, tl = W[live], R[live], mask[live], tol[live]
    W2 = Wl * Wl * hd
    swapped = 0
    done = 0
    for done in range(1, cols + 1):  # noqa: B007 (the count is reported)
        if not len(live):
            break
        a = torch.where(Ml, torch.inf, 2 * Wl * Rl + W2)  # pruning a kept weight
        b = torch.where(Ml, W2 - 2 * Wl * Rl, torch.inf)  # restoring a pruned weight
        A, ka = a.topk(t, dim=1, largest=False)
        B, pb = b.topk(t, dim=1, largest=False)
        cross = (
            Wl.gather(1, ka)[:, :, None]
            * Wl.gather(1, pb)[:, None, :]
            * H[ka[:, :, None], pb[:, None, :]]
        )
        delta = (A[:, :, None] + B[:, None, :] - 2 * cross).reshape(len(live), -1)
        best_delta, best = delta.min(dim=1)
        ok = best_delta < -tl  # nan/inf (nothing to swap) compare False
        if not bool(ok.any()):
            break
        idx = ok.nonzero().squeeze(1)
        k = ka.gather(1, (best // t)[:, None]).squeeze(1)[idx]
        p = pb.gather(1, (best % t)[:, None]).squeeze(1)[idx]
        Rl[idx] += Wl[idx, k].unsqueeze(1) * H[k] - Wl[idx, p].unsqueeze(1) * H[p]
        Ml[idx, k] = True
        Ml[idx, p] = False
        swapped += len(idx)
        if 2 * len(idx) < len(live):  # the refused rows are done: go on without them
            mask[live] = Ml
            live, Wl, Rl, Ml, tl, W2 = live[idx], Wl[idx], Rl[idx], Ml[idx], tl[idx], W2[idx]
    mask[live] = Ml
    return swapped, done
