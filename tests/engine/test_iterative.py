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
