"""The least-squares refit: against a direct solve, never worse than what it was given, the mask
and the N:M pattern kept, dead inputs left alone; in the prune, the CLI and on SmolLM2."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pzshell.cli import main
from pzshell.data import calibration_windows, load_text
from pzshell.engine.masks import make_mask
from pzshell.engine.prune import PruneConfig, PruneError, prune_model
from pzshell.engine.refit import least_squares_refit, output_error
from pzshell.engine.sparsegpt import damped_hessian, sparsegpt_prune
from pzshell.models import count_block_params

from ..conftest import shared_texts, zero_pattern


def _problem(rows=12, cols=48, seed=0, dead=()):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    # correlated inputs, as a language model's are: kept weights can stand in for pruned ones
    mix = torch.randn(cols // 4, cols, generator=g)
    x = torch.randn(400, cols // 4, generator=g) @ mix + 0.3 * torch.randn(400, cols, generator=g)
    x = x * (0.2 + torch.rand(cols, generator=g))
    x[:, list(dead)] = 0
    return W, 2 * x.T @ x / x.shape[0]


def _direct(W0, mask, H):
    """Row by row, the exact minimiser over the kept weights (float64)."""
    Hd, dead = damped_hessian(H)
    Hd = Hd.double()
    out = torch.zeros_like(W0, dtype=torch.float64)
    for r in range(W0.shape[0]):
        keep = ~mask[r] & ~dead
        pruned = mask[r]
        dp = -W0[r, pruned].double()
        dk = -torch.linalg.solve(Hd[keep][:, keep], Hd[keep][:, pruned] @ dp)
        out[r, keep] = W0[r, keep].double() + dk
        out[r, dead & ~mask[r]] = W0[r, dead & ~mask[r]].double()
    return out


def test_converged_refit_is_the_least_squares_solution():
    W0, H = _problem()
    mask = make_mask(W0.abs(), 0.5)
    new, rep = least_squares_refit(W0, W0.masked_fill(mask, 0), mask, H, iters=200)
    exact = _direct(W0, mask, H)
    assert torch.allclose(new.double(), exact, atol=2e-4, rtol=1e-3)
    assert (new[mask] == 0).all()
    assert rep.after < rep.before and 0 < rep.ratio < 1


def test_error_never_grows_with_iterations_and_the_mask_is_kept():
    W0, H = _problem(seed=1)
    mask = make_mask(W0.abs(), 0.5, 2, 4)
    Hd, _ = damped_hessian(H)
    errors = []
    for k in (1, 2, 4, 8, 16):
        new, rep = least_squares_refit(W0, W0.masked_fill(mask, 0), mask, H, iters=k)
        assert torch.equal(new == 0, mask | (W0 == 0))
        assert rep.after == pytest.approx(output_error(new - W0, Hd), rel=1e-4)
        errors.append(rep.after)
    assert all(b <= a * (1 + 1e-5) for a, b in zip(errors, errors[1:], strict=False))
    assert errors[-1] < 0.9 * errors[0]


@pytest.mark.parametrize("n,m", [(0, 0), (2, 4)])
def test_refit_improves_sparsegpts_own_update(n, m):
    W0, H = _problem(rows=16, cols=256, seed=2)
    W1, mask = sparsegpt_prune(W0, H, 0.5, n, m)
    Hd, _ = damped_hessian(H)
    new, rep = least_squares_refit(W0, W1, mask, H)
    assert rep.before == pytest.approx(output_error(W1 - W0, Hd), rel=1e-4)
    assert rep.after < 0.99 * rep.before  # SparseGPT's greedy update is not the optimum
    assert torch.equal(new == 0, mask)
    if n:
        assert (mask.reshape(16, -1, 4).sum(dim=2) == 2).all()


def test_dead_inputs_are_left_as_given():
    W0, H = _problem(seed=3, dead=(5, 17))
    mask = make_mask(W0.abs(), 0.5)
    new, _ = least_squares_refit(W0, W0.masked_fill(mask, 0), mask, H, iters=200)
    for j in (5, 17):
        kept = ~mask[:, j]
        assert torch.equal(new[kept, j], W0[kept, j])
    assert torch.allclose(new.double(), _direct(W0, mask, H), atol=2e-4, rtol=1e-3)


def test_refit_settings_and_refusals():
    cfg = PruneConfig("sparsegpt+refit", 0.5)
    assert cfg.refit == 30 and cfg.label == "sparsegpt+refit" and cfg.needs_hessian
    cfg = PruneConfig("ablate_wanda_iter+refit", 0.5, "2:4")
    assert cfg.iterative and cfg.refit and cfg.label == "wanda+iterative+refit"
    cfg = PruneConfig("wanda", 0.5, refit=5)
    assert cfg.label == "wanda+refit" and cfg.needs_calibration and cfg.needs_hessian
    assert PruneConfig("wanda", 0.5).label == "wanda"
    with pytest.raises(PruneError, match="--refit takes a number of iterations"):
        PruneConfig("wanda", 0.5, refit=-1)
    with pytest.raises(ValueError, match="at least 1 iteration"):
        W0, H = _problem()
        least_squares_refit(W0, W0, torch.zeros_like(W0, dtype=torch.bool), H, iters=0)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "ablate_wanda_iter"])
def test_a_refitted_prune_keeps_the_first_blocks_masks_and_the_sparsity(tiny_lm, method):
    import copy

    ids = calibration_windows(tiny_lm.tokenizer, load_text("builtin", role="calib"), 4, 64, 0)
    plain, fitted = copy.deepcopy(tiny_lm.model), copy.deepcopy(tiny_lm.model)
    prune_model(plain, PruneConfig(method, 0.5, "2:4"), ids)
    res = prune_model(fitted, PruneConfig(method, 0.5, "2:4", refit=10), ids)
    z_plain, z_fit = zero_pattern(plain), zero_pattern(fitted)
    per_block = len(z_plain) // len(plain.model.layers)
    for a, b in zip(z_plain[:per_block], z_fit[:per_block], strict=True):
        assert torch.equal(a, b)  # block 0 sees the same inputs: the same masks
    zeros, total = count_block_params(fitted)
    assert zeros / total == pytest.approx(0.5, abs=1e-3)
    for z in z_fit:
        assert (z.reshape(z.shape[0], -1, 4).sum(dim=2) >= 2).all()
    assert all(r.refit_error is not None and 0 < r.refit_error <= 1 for r in res.layers)
    assert sum(r.refit_error < 0.999 for r in res.layers) > len(res.layers) // 2
    changed = [
        not torch.equal(a.weight, b.weight)
        for a, b in zip(
            plain.model.layers[0].modules(), fitted.model.layers[0].modules(), strict=True
        )
        if isinstance(a, torch.nn.Linear)
    ]
    assert all(changed)


def test_cli_refit_writes_its_fields(tmp_path):
    flags = "--model tiny --prune_method wanda --nsamples 4 --seqlen 64 --refit 5"
    evals = ["--eval", "builtin", "--eval-seqlen", "64", "--eval-windows", "2"]
    rc = main(["prune", *flags.split(), "--calib", "builtin", *evals, "--save", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["method"] == "wanda+refit" and res["refit"] == 5
    assert 0 < res["refit_error_median"] < 1
    assert all(layer["refit_error"] is not None for layer in res["layers"])


def test_cli_refit_refuses_a_negative_count(tmp_path, capsys):
    rc = main(["prune", "--model", "tiny", "--refit", "-2", "--save", str(tmp_path)])
    assert rc != 0
    assert "--refit takes a number of iterations" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


@pytest.mark.smollm2
def test_smollm2_sparsegpt_refit(tmp_path):
    calib_src, eval_src = shared_texts()
    flags = "--model smollm2 --sparsity_type 2:4 --nsamples 8 --seqlen 256"
    evals = ["--eval", eval_src, "--eval-seqlen", "256", "--eval-windows", "2"]
    res = {}
    for extra in ([], ["--refit", "10"]):
        out = tmp_path / ("refit" if extra else "plain")
        args = [*flags.split(), "--prune_method", "sparsegpt", *extra, "--calib", calib_src]
        assert main(["prune", *args, *evals, "--save", str(out)]) == 0
        r = json.loads((out / "results.json").read_text())
        assert r["actual_sparsity"] == pytest.approx(0.5, abs=1e-4)
        res[r["method"]] = r
    assert set(res) == {"sparsegpt", "sparsegpt+refit"}
    fitted = res["sparsegpt+refit"]
    assert fitted["refit"] == 10 and fitted["refit_error_median"] < 0.95
    assert math.isfinite(fitted["ppl"]) and fitted["ppl"] < 1.2 * res["sparsegpt"]["ppl"]
