"""Pure mask rules: scores in, boolean mask out (True = prune). No hooks, no models.

Comparison groups (see docs/protocol.md): each output row for unstructured pruning (Wanda's rule),
the whole layer for magnitude, each run of M consecutive inputs of a row for N:M.
"""

from __future__ import annotations

import torch

from ..errors import PzError


class SparsityError(PzError):
    pass


def parse_sparsity_type(text: str) -> tuple[int, int]:
    """``unstructured`` -> (0, 0); ``"2:4"`` -> (2, 4). Validates N < M."""
    if text == "unstructured":
        return 0, 0
    try:
        n_s, m_s = text.split(":")
        n, m = int(n_s), int(m_s)
    except ValueError:
        raise SparsityError(
            f"sparsity type '{text}' is neither 'unstructured' nor N:M such as 2:4"
        ) from None
    if not 0 < n < m:
        raise SparsityError(f"sparsity type {text}: need 0 < N < M, got N={n}, M={m}")
    return n, m


def smallest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` smallest entries of every row of a 2-D tensor.

    Equal to taking the first ``k`` indices of a *stable* sort (ties go to the lower index, as
    in the reference code), but found by selection (``kthvalue``), which is several times
    faster than sorting on a CPU.
    """
    rows, cols = scores.shape
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= cols:
        return torch.ones_like(scores, dtype=torch.bool)
    thr = torch.kthvalue(scores, k, dim=1, keepdim=True).values
    at_most = scores <= thr
    if bool((at_most.sum(dim=1) == k).all()):  # no row with surplus ties at its threshold
        return at_most
    less = scores < thr
    need = k - less.sum(dim=1, keepdim=True)  # how many ties at the threshold to take
    ties = scores == thr
    return less | (ties & (ties.cumsum(dim=1) <= need))


def row_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Prune the ``int(ratio * in)`` smallest scores of every row (stable order on ties)."""
    return smallest_k(scores, int(scores.shape[1] * ratio))


def layer_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Prune the ``int(ratio * numel)`` smallest scores of the whole matrix (magnitude's group)."""
    return smallest_k(scores.reshape(1, -1), int(scores.numel() * ratio)).view_as(scores)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every run of ``m`` consecutive inputs of a row, prune the ``n`` smallest."""
    rows, cols = scores.shape
    if cols % m:
        raise SparsityError(
            f"N:M sparsity {n}:{m} needs the input width to be a multiple of {m}, "
            f"but a layer has {cols} inputs"
        )
    groups = scores.reshape(rows, cols // m, m)
    idx = torch.topk(groups, n, dim=-1, largest=False)[1]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, idx, True)
    return mask.reshape(rows, cols)


def variant_mask(scores: torch.Tensor, ratio: float, tol: float = 0.001) -> torch.Tensor:
    """Wanda's per-row cumulative "variant": prune, per row, the smallest scores whose sum stays
    under ``alpha`` times the row sum, with ``alpha`` bisected until the layer's sparsity is
    within ``tol`` of ``ratio`` (reference: ``return_given_alpha``)."""
    sorted_scores, _ = torch.sort(scores, dim=-1, stable=True)
    cum = torch.cumsum(sorted_scores, dim=1)
    total = scores.sum(dim=1)

    def given(alpha: float):
        keep_first = cum <= (total * alpha).reshape(-1, 1)
        count = keep_first.sum(dim=1, keepdim=True)
        thres = torch.gather(sorted_scores, 1, (count - 1).clamp(min=0))
        mask = (scores <= thres) & (count > 0)
        return mask, float(mask.float().mean())

    alpha, lo, hi = 0.4, 0.0, 0.8
    mask, cur = given(alpha)
    while abs(cur - ratio) > tol and hi - lo >= tol:
        if cur > ratio:
            alpha, hi = (alpha + lo) / 2.0, alpha
        else:
            alpha, lo = (alpha + hi) / 2.0, alpha
        mask, cur = given(alpha)
    return mask


def make_mask(
    scores: torch.Tensor,
    ratio: float,
    n: int = 0,
    m: int = 0,
    *,
    group: str = "row",
    variant: bool = False,
) -> torch.Tensor:
    """Dispatch: N:M when ``n``, else the unstructured rule for ``group`` (``row``/``layer``)."""
    if n:
        return nm_mask(scores, n, m)
    if variant:
        return variant_mask(scores, ratio)
    return layer_mask(scores, ratio) if group == "layer" else row_mask(scores, ratio)
