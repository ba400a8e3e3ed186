"""SparseGPT (Frantar & Alistarh, 2023) as a pure function of a weight and its Hessian.

OBS-style pruning with weight reconstruction: columns are processed left to right in blocks of
128; each pruned weight's error is spread over the not-yet-processed columns through the
Cholesky factor of the damped inverse Hessian (damping 1% of the mean diagonal). Unstructured
masks are chosen adaptively per block by ``w^2 / [H^-1]_jj^2``; N:M masks per group of M; or a
given mask (any metric's) is used and only the reconstruction is applied; or a metric chooses
the mask as the loop goes, from the updated weights (``score_fn``, the ``_iter`` variants).

The published loop visits the columns one at a time. Once a run of columns' mask is known (a
whole block's for unstructured sparsity or a given mask, one group's for N:M), the errors of
those columns solve one triangular system per row (:func:`_masked_errors`), so the loop runs
over runs of 16 to 128 columns (M for N:M), not over columns; the result is the published
loop's up to floating-point rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .masks import smallest_k

ROW_CHUNK = 512  # rows per batched solve
SOLVE_BUDGET = 1 << 19  # elements of a batched solve's rows x k x k temporary


def _run_length(rows: int, blocksize: int) -> int:
    """Columns per triangular solve: the longest (a power of two from 16 up to the block) whose
    temporary stays within SOLVE_BUDGET, so a few sampled rows solve a block at once."""
    k = 16
    while k < blocksize and min(rows, ROW_CHUNK) * (2 * k) ** 2 <= SOLVE_BUDGET:
        k *= 2
    return k


def damped_hessian(H: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H', dead)``: ``H`` in fp32 (a copy) with dead inputs' zero diagonal set to 1 and then
    ``percdamp`` of the mean diagonal added, as SparseGPT damps it; ``dead`` marks those
    inputs. SparseGPT's factor and the least-squares refit (:mod:`.refit`) both start here."""
    H = H.detach().clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    diag = torch.arange(H.shape[0], device=H.device)
    H[diag, diag] += percdamp * torch.mean(torch.diag(H))
    return H, dead


def hinv_factor(H: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, dead)``: the upper Cholesky factor of the damped inverse of ``H`` (dead inputs, a
    zero diagonal, given a unit one) and the mask of dead inputs. It depends on ``H`` alone, so
    linears that share one input (q/k/v, gate/up) may share it (``sparsegpt_prune``'s
    ``factor``)."""
    H, dead = damped_hessian(H, percdamp)
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True), dead


def column_curvature(factor: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The metric terminal ``S`` from :func:`hinv_factor`'s ``(U, dead)``: ``1 / U_jj^2``, shape
    ``(1, in)``. ``U_jj^2`` is ``[H_F^-1]_jj`` for ``F = j..in-1``, the columns SparseGPT's loop
    has not fixed when it reaches ``j``, so ``W^2 * S`` is SparseGPT's own score ``w^2 / U_jj^2``
    and ``S`` is the OBS curvature of removing weight ``j`` with the later columns free to
    compensate. Dead inputs (no activation) get the damping's value."""
    U, _ = factor
    return (1.0 / torch.diag(U).square()).reshape(1, -1)


def _masked_errors(W1: torch.Tensor, m: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """The OBS errors of a run of columns whose mask ``m`` is known: column by column, a pruned
    weight's error is its current value over ``U_ii`` and moves every later column by
    ``-err * U[i, j]``; i.e. per row, ``e (diag(U) + triu(U, 1) diag(m)) = w * m``, one upper
    triangular solve per row (batched). ``W1`` is updated in place to the columns' final values
    before masking."""
    strict = torch.triu(U, 1)
    d = torch.diag(U)
    mf = m.to(W1.dtype)
    E = torch.empty_like(W1)
    for r0 in range(0, W1.shape[0], ROW_CHUNK):
        mr = mf[r0 : r0 + ROW_CHUNK]
        A = strict.unsqueeze(0) * mr.unsqueeze(1)  # rows x k x k, upper triangular
        A.diagonal(dim1=1, dim2=2).copy_(d.expand(len(mr), -1))
        b = (W1[r0 : r0 + ROW_CHUNK] * mr).unsqueeze(1)
        E[r0 : r0 + ROW_CHUNK] = torch.linalg.solve_triangular(
            A, b, upper=True, left=False
        ).squeeze(1)
    W1 -= E @ strict
    return E


def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    prune_n: int = 0,
    prune_m: int = 0,
    *,
    mask: torch.Tensor | None = None,
    score_fn: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    factor: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(new_weight, mask)`` in fp32; ``H = 2/n sum x x^T`` of the layer's inputs.

    ``score_fn(w, a, b)``: instead of SparseGPT's own ``w^2 / [H^-1]_jj^2``, the importance of
    columns ``a:b`` whose current (already updated) weights are ``w``; the mask is chosen from it
    block by block (group by group for N:M) as the loop reaches them. ``factor``:
    :func:`hinv_factor` of ``H`` (with ``percdamp``), when the caller has it already."""
    W = W.detach().clone().float()
    rows, columns = W.shape
    Hinv, dead = hinv_factor(H, percdamp) if factor is None else factor
    W[:, dead] = 0

    full_mask = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Err1 = torch.empty_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        hdiag = torch.diag(Hinv1)

        if mask is not None:
            mask1 = mask[:, i1:i2].to(torch.bool)
        elif prune_n == 0:
            tmp = score_fn(W1, i1, i2) if score_fn else W1**2 / hdiag.reshape(1, -1) ** 2
            mask1 = smallest_k(tmp.reshape(1, -1), int(tmp.numel() * sparsity)).view_as(tmp)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)

        # runs of columns whose mask is known when the run starts (a few columns, or one group
        # of M whose mask is chosen from the weights as the earlier groups left them)
        step = prune_m if (mask is None and prune_n != 0) else _run_length(rows, blocksize)
        for a in range(0, count, step):
            b = min(a + step, count)
            if mask is None and prune_n != 0:
                if score_fn is not None:
                    tmp = score_fn(W1[:, a:b], i1 + a, i1 + b)
                else:
                    tmp = W1[:, a:b] ** 2 / hdiag[a:b].reshape(1, -1) ** 2
                mask1.scatter_(1, a + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
            sub = W1[:, a:b]  # a view: updated in place to the run's final values
            e = Err1[:, a:b] = _masked_errors(sub, mask1[:, a:b], Hinv1[a:b, a:b])
            if b < count:
                W1[:, b:] -= e @ Hinv1[a:b, b:]

        W1[mask1] = 0
        W[:, i1:i2] = W1
        full_mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    W[full_mask] = 0
    return W, full_mask
