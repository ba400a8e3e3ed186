"""Pure tensor rules: masks and the SparseGPT step."""

from __future__ import annotations

import pytest
import torch

from pzshell.engine.masks import (
    SparsityError,
    layer_mask,
    make_mask,
    nm_mask,
    parse_sparsity_type,
    row_mask,
    variant_mask,
)
from pzshell.engine.sparsegpt import sparsegpt_prune


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.73])
def test_row_mask_exact_per_row(ratio):
    g = torch.Generator().manual_seed(0)
    s = torch.rand(16, 100, generator=g)
    m = row_mask(s, ratio)
    k = int(100 * ratio)
    assert (m.sum(dim=1) == k).all()
    # the pruned ones are the k smallest of each row
    kth = torch.sort(s, dim=1)[0][:, k - 1 : k]
    assert (s[m].reshape(16, k) <= kth).all()


def test_layer_mask_is_global():
    s = torch.arange(40, dtype=torch.float32).reshape(4, 10)
    m = layer_mask(s, 0.25)
    assert int(m.sum()) == 10
    assert m[0].all() and not m[1:].any()  # the first row holds the 10 smallest values


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 8)])
def test_nm_mask_every_group(n, m):
    g = torch.Generator().manual_seed(1)
    s = torch.rand(8, 64, generator=g)
    mask = nm_mask(s, n, m)
    groups = mask.reshape(8, 64 // m, m)
    assert (groups.sum(-1) == n).all()
    vals = s.reshape(8, 64 // m, m)
    pruned_max = torch.where(groups, vals, torch.tensor(-1.0)).amax(-1)
    kept_min = torch.where(~groups, vals, torch.tensor(2.0)).amin(-1)
    assert (pruned_max <= kept_min).all()


def test_nm_mask_width_must_divide():
    with pytest.raises(SparsityError, match="multiple of 5"):
        nm_mask(torch.rand(4, 64), 2, 5)


@pytest.mark.parametrize(
    "text,expected", [("unstructured", (0, 0)), ("2:4", (2, 4)), ("4:8", (4, 8))]
)
def test_parse_sparsity_type(text, expected):
    assert parse_sparsity_type(text) == expected


@pytest.mark.parametrize("bad", ["4:4", "5:4", "0:4", "2-4", "structured", "a:b"])
def test_parse_sparsity_type_rejects(bad):
    with pytest.raises(SparsityError):
        parse_sparsity_type(bad)


def test_variant_mask_reaches_ratio():
    g = torch.Generator().manual_seed(2)
    s = torch.rand(64, 256, generator=g) ** 3
    m = variant_mask(s, 0.5)
    assert abs(float(m.float().mean()) - 0.5) < 0.01
    # per row it prunes a prefix of the sorted scores
    for r in range(4):
        assert s[r][m[r]].max() <= s[r][~m[r]].min()


def test_make_mask_dispatch():
    s = torch.rand(4, 16)
    assert torch.equal(make_mask(s, 0.5, 2, 4), nm_mask(s, 2, 4))
    assert torch.equal(make_mask(s, 0.5, group="layer"), layer_mask(s, 0.5))
    assert torch.equal(make_mask(s, 0.5), row_mask(s, 0.5))


def _layer_problem(seed=0, rows=32, cols=64, n=512):
    g = torch.Generator().manual_seed(seed)
    # correlated inputs, as real activations are
    base = torch.randn(n, cols // 4, generator=g)
    x = base @ torch.randn(cols // 4, cols, generator=g) + 0.3 * torch.randn(n, cols, generator=g)
    W = torch.randn(rows, cols, generator=g)
    H = 2.0 / n * x.T @ x
    return x, W, H


@pytest.mark.parametrize("nm", [(0, 0), (2, 4)])
def test_sparsegpt_update_lowers_reconstruction_error(nm):
    x, W, H = _layer_problem()
    mask = (
        row_mask(W.abs() * x.pow(2).mean(0).sqrt(), 0.5)
        if nm == (0, 0)
        else nm_mask(W.abs() * x.pow(2).mean(0).sqrt(), *nm)
    )
    W_mask_only = W.clone()
    W_mask_only[mask] = 0
    W_obs, used = sparsegpt_prune(W, H, 0.5, *nm, mask=mask)
    assert torch.equal(used, mask)
    assert (W_obs[mask] == 0).all()
    err_mask = (x @ (W - W_mask_only).T).pow(2).sum()
    err_obs = (x @ (W - W_obs).T).pow(2).sum()
    assert err_obs < 0.8 * err_mask


def test_sparsegpt_own_masks():
    x, W, H = _layer_problem(1)
    W1, m1 = sparsegpt_prune(W, H, 0.5)
    assert abs(float(m1.float().mean()) - 0.5) < 1e-6  # exact per 128-column block
    W2, m2 = sparsegpt_prune(W, H, 0.5, 2, 4)
    assert (m2.reshape(32, 16, 4).sum(-1) == 2).all()
    assert (W2[m2] == 0).all()


@pytest.mark.parametrize("ties_in_one_row", [False, True])
def test_selection_equals_stable_sort_without_ties_or_in_one_row(ties_in_one_row):
    # no ties: the threshold alone gives the mask; ties in one row: that row needs the
    # lower-index rule while the others keep theirs
    s = torch.rand(16, 48, generator=torch.Generator().manual_seed(7))
    if ties_in_one_row:
        s[5] = torch.tensor([0.5, 0.25] * 24)
    for ratio in (0.25, 0.5, 0.75):
        k = int(48 * ratio)
        ref = torch.zeros_like(s, dtype=torch.bool)
        ref.scatter_(1, torch.sort(s, dim=1, stable=True)[1][:, :k], True)
        got = row_mask(s, ratio)
        assert torch.equal(got, ref) and (got.sum(1) == k).all()


@pytest.mark.parametrize("seed", range(5))
def test_selection_equals_stable_sort_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 6, (12, 40), generator=g).float()  # many ties
    for ratio in (0.1, 0.5, 0.9):
        k = int(40 * ratio)
        ref = torch.zeros_like(s, dtype=torch.bool)
        ref.scatter_(1, torch.sort(s, dim=1, stable=True)[1][:, :k], True)
        assert torch.equal(row_mask(s, ratio), ref)
        kk = int(s.numel() * ratio)
        ref_l = torch.zeros(s.numel(), dtype=torch.bool)
        ref_l[torch.sort(s.flatten(), stable=True)[1][:kk]] = True
        assert torch.equal(layer_mask(s, ratio), ref_l.view_as(s))
