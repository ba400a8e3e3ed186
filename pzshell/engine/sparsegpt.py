"""SparseGPT (Frantar & Alistarh, 2023) as a pure function of a weight and its Hessian.

OBS-style pruning with weight reconstruction: columns are processed left to right in blocks of
128; each pruned weight's error is spread over the not-yet-processed columns through the
Cholesky factor of the damped inverse Hessian (damping 1% of the mean diagonal). Unstructured
masks are chosen adaptively per block by ``w^2 / [H^-1]_jj^2``; N:M masks per group of M; or a
given mask (any metric's) is used and only the reconstruction is applied; or a metric chooses
the mask as the loop goes, from the updated weights (``score_fn``, the ``_iter`` variants).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .masks import smallest_k


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(new_weight, mask)`` in fp32; ``H = 2/n sum x x^T`` of the layer's inputs.

    ``score_fn(w, a, b)``: instead of SparseGPT's own ``w^2 / [H^-1]_jj^2``, the importance of
    columns ``a:b`` whose current (already updated) weights are ``w``; the mask is chosen from it
    block by block (group by group for N:M) as the loop reaches them."""
    W = W.detach().clone().float()
    H = H.detach().clone().float()
    rows, columns = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns, device=W.device)
    H[diag, diag] += damp
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    Hinv = torch.linalg.cholesky(Hinv, upper=True)

    full_mask = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        hdiag = torch.diag(Hinv1)

        if mask is not None:
            mask1 = mask[:, i1:i2].to(torch.bool)
        elif prune_n == 0:
            tmp = score_fn(W1, i1, i2) if score_fn else W1**2 / hdiag.reshape(1, -1) ** 2
            mask1 = smallest_k(tmp.reshape(1, -1), int(tmp.numel() * sparsity)).view_as(tmp)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)

        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if mask is None and prune_n != 0 and i % prune_m == 0:
                if score_fn is not None:
                    tmp = score_fn(W1[:, i : i + prune_m], i1 + i, i1 + i + prune_m)
                else:
                    tmp = W1[:, i : i + prune_m] ** 2 / hdiag[i : i + prune_m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1

        W[:, i1:i2] = Q1
        full_mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    W[full_mask] = 0
    return W, full_mask
