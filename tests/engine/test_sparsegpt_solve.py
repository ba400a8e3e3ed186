"""SparseGPT's loop over runs of columns (one triangular solve per row and run) is the published
loop over single columns, up to rounding: same masks, same weights, for every way of choosing
the mask (own criterion, a given mask, a metric inside the loop, N:M) and with a shared factor."""

from __future__ import annotations

import pytest
import torch

from pzshell.engine import sparsegpt
from pzshell.engine.masks import smallest_k
from pzshell.engine.sparsegpt import hinv_factor, sparsegpt_prune


def published(W, H, sparsity, prune_n=0, prune_m=0, mask=None, score_fn=None, blocksize=128):
    """The published loop (Frantar & Alistarh's `fasterprune`), one column at a time."""
    W = W.clone().float()
    rows, columns = W.shape
    Hinv, dead = hinv_factor(H)
    W[:, dead] = 0
    full_mask = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1 = W[:, i1:i2].clone()
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        hdiag = torch.diag(Hinv1)
        if mask is not None:
            mask1 = mask[:, i1:i2].clone()
        elif prune_n == 0:
            tmp = score_fn(W1, i1, i2) if score_fn else W1**2 / hdiag.reshape(1, -1) ** 2
            mask1 = smallest_k(tmp.reshape(1, -1), int(tmp.numel() * sparsity)).view_as(tmp)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if mask is None and prune_n and i % prune_m == 0:
                g = W1[:, i : i + prune_m]
                tmp = score_fn(g, i1 + i, i1 + i + prune_m) if score_fn else (
                    g**2 / hdiag[i : i + prune_m].reshape(1, -1) ** 2
                )  # fmt: skip
                mask1.scatter_(1, i + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        full_mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    W[full_mask] = 0
    return W, full_mask


def _problem(rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    x = torch.randn(4 * cols, cols, generator=g) * torch.rand(cols, generator=g)
    H = 2 * x.T @ x / x.shape[0]
    H[3, :] = H[:, 3] = 0  # a dead input
    return W, H


def _metric(w, a, b):  # a metric that reads the updated weights and the columns' positions
    return w.abs() * torch.linspace(1, 2, b - a)


@pytest.mark.parametrize("rows,cols", [(8, 96), (48, 300), (700, 160)])
@pytest.mark.parametrize("nm", [(0, 0), (2, 4)])
@pytest.mark.parametrize("how", ["own", "metric", "mask"])
def test_runs_of_columns_are_the_published_loop(rows, cols, nm, how):
    W, H = _problem(rows, cols)
    kw = {}
    if how == "metric":
        kw["score_fn"] = _metric
    if how == "mask":
        kw["mask"] = torch.rand(rows, cols, generator=torch.Generator().manual_seed(1)) < 0.4
    want_w, want_m = published(W, H, 0.5, *nm, **kw)
    got_w, got_m = sparsegpt_prune(W, H, 0.5, *nm, **kw)
    assert torch.equal(got_m, want_m)
    assert (got_w[got_m] == 0).all() and (got_w[:, 3] == 0).all()
    torch.testing.assert_close(got_w, want_w, rtol=1e-4, atol=1e-4)
    # a factor computed once (linears that share an input share it) gives the same result
    again_w, again_m = sparsegpt_prune(W, H, 0.5, *nm, factor=hinv_factor(H), **kw)
    assert torch.equal(again_m, got_m) and torch.equal(again_w, got_w)


def test_the_run_length_keeps_the_solves_temporary_bounded():
    assert sparsegpt._run_length(32, 128) == 128  # a few rows: a block in one solve
    assert sparsegpt._run_length(64, 128) == 64
    assert sparsegpt._run_length(576, 128) == 32
    assert sparsegpt._run_length(100_000, 128) == 32  # rows go in chunks of ROW_CHUNK
    assert sparsegpt._run_length(64, 16) == 16
    for rows in (1, 64, 576, 5000):
        k = sparsegpt._run_length(rows, 128)
        assert k == 16 or min(rows, sparsegpt.ROW_CHUNK) * k * k <= sparsegpt.SOLVE_BUDGET
