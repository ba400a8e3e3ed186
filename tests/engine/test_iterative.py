"""The published `_iter` variants: the metric's mask chosen inside SparseGPT's loop from the
updated weights; N:M kept, sparsity exact, the refusals."""

from __future__ import annotations

import pytest
import torch

from pzshell.data import calibration_windows, load_text
from pzshell.engine.prune import METHOD_ALIASES, PruneConfig, PruneError, prune_model
from pzshell.engine.sparsegpt import sparsegpt_prune
from pzshell.models import count_block_params

from ..conftest import zero_pattern


def _problem(rows=32, cols=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    x = torch.randn(512, cols, generator=g) * torch.rand(cols, generator=g)
    return W, 2 * x.T @ x / x.shape[0]


def _hinv_diag(H: torch.Tensor, percdamp=0.01) -> torch.Tensor:
    H = H.clone()
    H += torch.eye(H.shape[0]) * percdamp * torch.mean(torch.diag(H))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    return torch.diag(Hinv)


@pytest.mark.parametrize("n,m", [(0, 0), (2, 4)])
def test_a_score_fn_of_sparsegpts_own_criterion_reproduces_sparsegpt(n, m):
    W, H = _problem()
    d = _hinv_diag(H)
    own_w, own_mask = sparsegpt_prune(W, H, 0.5, n, m)
    fn_w, fn_mask = sparsegpt_prune(
        W, H, 0.5, n, m, score_fn=lambda w, a, b: w**2 / d[a:b].reshape(1, -1) ** 2
    )
    assert torch.equal(own_mask, fn_mask)
    torch.testing.assert_close(own_w, fn_w)


def test_scores_are_taken_from_the_updated_weights():
    W, H = _problem(cols=256)
    seen = []

    def fn(w, a, b):
        seen.append((a, b, w.clone()))
        return w.abs()

    sparsegpt_prune(W, H, 0.5, score_fn=fn)
    assert [(a, b) for a, b, _ in seen] == [(0, 128), (128, 256)]
    assert torch.equal(seen[0][2], W[:, :128])  # the first block: nothing updated yet
    assert not torch.allclose(seen[1][2], W[:, 128:])  # the second: the OBS update moved it


@pytest.mark.parametrize("alias", ["ablate_wanda_iter", "ablate_mag_iter"])
@pytest.mark.parametrize("sparsity_type", ["unstructured", "2:4"])
def test_iter_variants_keep_the_pattern(tiny, alias, sparsity_type):
    ids = calibration_windows(tiny.tokenizer, load_text("builtin", role="calib"), 4, 64, 0)
    cfg = PruneConfig(alias, 0.5, sparsity_type)
    assert cfg.iterative and cfg.reconstruct and METHOD_ALIASES[alias].endswith("+iterative")
    prune_model(tiny.model, cfg, ids)
    zeros, total = count_block_params(tiny.model)
    assert zeros / total == pytest.approx(0.5, abs=1e-3)
    if sparsity_type == "2:4":
        for z in zero_pattern(tiny.model):
            assert (z.reshape(z.shape[0], -1, 4).sum(dim=2) == 2).all()


def test_iter_differs_from_seq(tiny_lm):
    import copy

    ids = calibration_windows(tiny_lm.tokenizer, load_text("builtin", role="calib"), 4, 64, 0)
    out = {}
    for alias in ("ablate_wanda_seq", "ablate_wanda_iter"):
        model = copy.deepcopy(tiny_lm.model)
        prune_model(model, PruneConfig(alias, 0.5, "2:4"), ids)
        out[alias] = [
            m.weight.detach() == 0
            for m in model.model.layers.modules()
            if hasattr(m, "weight") and m.weight.dim() == 2
        ]
    assert any(
        not torch.equal(a, b)
        for a, b in zip(out["ablate_wanda_seq"], out["ablate_wanda_iter"], strict=True)
    )


def test_iterative_refusals():
    with pytest.raises(PruneError, match="needs a metric"):
        PruneConfig("sparsegpt", 0.5, iterative=True)
    with pytest.raises(PruneError, match="no iterative form"):
        PruneConfig("ablate_wanda_iter", 0.5, use_variant=True)


# ---- the terminal S: SparseGPT's column curvature ----------------------------------------------
def test_s_is_the_obs_curvature_of_each_column_with_the_later_ones_free():
    """``S_j = 1 / [H_F^-1]_jj`` with ``F = j..in-1`` of the damped Hessian (an oracle from a
    direct float64 inverse of each trailing block); a dead input gets the damping's curvature."""
    from pzshell.engine.sparsegpt import column_curvature, hinv_factor

    W, H = _problem(cols=64)
    H[5, :] = H[:, 5] = 0  # a dead input
    S = column_curvature(hinv_factor(H))
    assert S.shape == (1, 64)
    Hd = H.double().clone()
    Hd[5, 5] = 1
    Hd += torch.eye(64, dtype=torch.float64) * 0.01 * torch.mean(torch.diag(Hd))
    want = torch.stack([1 / torch.linalg.inv(Hd[j:, j:])[0, 0] for j in range(64)])
    torch.testing.assert_close(S[0].double(), want, rtol=1e-4, atol=0)


@pytest.mark.parametrize("sparsity_type,n,m", [("unstructured", 0, 0), ("2:4", 2, 4)])
def test_w_sqrt_s_inside_the_loop_is_sparsegpt(sparsity_type, n, m):
    """``W * sqrt(S)`` chosen inside SparseGPT's loop is SparseGPT itself (its ``w^2/U_jj^2``),
    weights and mask alike; as a plain mask it is the OBS mask of the unupdated weights."""
    from pzshell.engine.prune import prune_linear
    from pzshell.engine.sparsegpt import column_curvature, hinv_factor
    from pzshell.lang import load_metric

    W, H = _problem()
    own_w, own_mask = sparsegpt_prune(W, H, 0.5, n, m)
    cfg = PruneConfig("metric+iterative", 0.5, sparsity_type, metric=load_metric("W * sqrt(S)"))
    new, mask, _ = prune_linear(cfg, W, H=H)
    assert torch.equal(mask, own_mask)
    assert torch.equal(new, own_w)
    plain = PruneConfig("metric", 0.5, sparsity_type, metric=load_metric("W^2 * S"))
    new, mask, _ = prune_linear(plain, W, H=H)
    score = W**2 * column_curvature(hinv_factor(H))
    if n:  # the 2 smallest of every 4 columns of a row
        ranks = score.reshape(W.shape[0], -1, 4).argsort(-1).argsort(-1)
        assert torch.equal(mask, (ranks < 2).reshape(W.shape))
    else:  # the smallest half of every row
        assert torch.equal(mask, score.argsort(1).argsort(1) < W.shape[1] // 2)
    assert torch.equal(new, W.masked_fill(mask, 0))
    with pytest.raises(PruneError, match="S needs the Hessian of here"):
        prune_linear(plain, W, where="here")


def test_a_metric_with_s_prunes_a_model_and_structured_pruning_refuses_it(tiny):
    """``S`` makes a plain metric prune collect each layer's Hessian; the structured importance
    (which collects none) refuses a formula with ``S`` by name."""
    from pzshell.engine.structured.importance import StructuredError, parse_importance
    from pzshell.lang import load_metric

    ids = calibration_windows(tiny.tokenizer, load_text("builtin", role="calib"), 4, 64, 0)
    cfg = PruneConfig("metric", 0.5, "2:4", metric=load_metric("W * sqrt(S)"))
    assert cfg.needs_calibration and cfg.needs_hessian and not cfg.uses_sparsegpt
    res = prune_model(tiny.model, cfg, ids)
    assert res.sparsity == pytest.approx(0.5)
    assert all(r.sparsity == 0.5 for r in res.layers)
    with pytest.raises(StructuredError, match="reads S"):
        parse_importance("W * sqrt(S)")
