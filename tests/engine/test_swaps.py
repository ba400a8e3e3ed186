"""Least-squares swaps: each row's exact output error ``u H uᵀ`` never grows, the sparsity and the
N:M pattern are kept, the result is a local optimum that brute force confirms, and the refusals,
the prune and the CLI."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from pzshell.cli import main
from pzshell.data import calibration_windows, load_text
from pzshell.engine.masks import make_mask
from pzshell.engine.prune import PruneConfig, PruneError, prune_model
from pzshell.engine.refine import swaps
from pzshell.engine.refit import output_error_rows
from pzshell.models import count_block_params

from ..conftest import shared_texts


def _problem(rows=10, cols=24, seed=0, tokens=400):
    """A weight and the second moment of correlated inputs (where Wanda's diagonal is wrong)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    mix = torch.eye(cols, dtype=torch.float64) + 0.4 * torch.randn(
        cols, cols, generator=g, dtype=torch.float64
    )
    x = torch.randn(tokens, cols, generator=g, dtype=torch.float64) @ mix
    H = 2 * x.T @ x / tokens
    return W.float(), H.float(), x


def _wanda(W, H, n=0, m=0):
    return make_mask(W.abs() * H.diagonal().sqrt(), 0.5, n, m)


def test_the_error_is_the_output_error_on_the_calibration_tokens():
    W, H, x = _problem()
    mask = _wanda(W, H)
    # pruning changes row i's outputs by x · u_i; its mean square (x2, the Hessian's scale) is E_i
    direct = 2 * ((x @ (W.double() * mask).T) ** 2).mean(dim=0)
    torch.testing.assert_close(output_error_rows(W * mask, H), direct, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nm_swaps_reach_a_group_by_group_optimum(seed):
    W, H, _ = _problem(seed=seed)
    mask = _wanda(W, H, 2, 4)
    new, rep = swaps(W, mask, H, n=2, m=4, rounds=50)
    assert (new.reshape(W.shape[0], -1, 4).sum(dim=2) == 2).all()  # the pattern holds
    before, after = output_error_rows(W * mask, H), output_error_rows(W * new, H)
    assert (after <= before + 1e-9).all() and after.sum() < 0.95 * before.sum()
    assert rep.swaps > 0 and rep.cycles < 50  # it stopped because nothing more helped
    assert rep.error_after == pytest.approx(float(after.sum()), rel=1e-9)
    # no single group of any row has a better pattern, given the rest of its row
    for i in range(W.shape[0]):
        for g0 in range(0, W.shape[1], 4):
            for pruned in itertools.combinations(range(4), 2):
                alt = new[i : i + 1].clone()
                alt[0, g0 : g0 + 4] = False
                alt[0, [g0 + j for j in pruned]] = True
                assert output_error_rows(W[i : i + 1] * alt, H) >= after[i] - 1e-6 * after[i]


def _naive_nm_swaps(W, mask, H, n, m, rounds):
    """The N:M passes written plainly: every pattern of every group tried in turn, the whole
    residual updated after each move (no blocks, every row in every pass)."""
    W, H, mask = W.double(), H.double(), mask.clone()
    pats = [torch.tensor(c) for c in itertools.combinations(range(m), n)]
    for _ in range(rounds):
        moved = False
        for i in range(W.shape[0]):
            for g0 in range(0, W.shape[1], m):
                u = W[i] * mask[i]
                r = u @ H
                best, best_d = None, 0.0
                for c in pats:
                    v = u.clone()
                    v[g0 : g0 + m] = 0
                    v[g0 + c] = W[i, g0 + c]
                    d = v - u
                    delta = float(2 * d @ r + d @ H @ d)
                    if delta < best_d - 1e-9 * float(u @ r):
                        best, best_d = c, delta
                if best is not None:
                    mask[i, g0 : g0 + m] = False
                    mask[i, g0 + best] = True
                    moved = True
        if not moved:
            break
    return mask


def test_nm_swaps_equal_the_plain_algorithm_across_blocks():
    # 320 columns: several of the lazy update's blocks of 32 groups, rows that stop early
    W, H, _ = _problem(rows=6, cols=320, seed=4, tokens=800)
    mask = _wanda(W, H, 2, 4)
    new, _ = swaps(W, mask, H, n=2, m=4, rounds=4)
    assert torch.equal(new, _naive_nm_swaps(W, mask, H, 2, 4, rounds=4))


def test_nm_swaps_come_close_to_the_exhaustive_best():
    W, H, _ = _problem(rows=6, cols=12, seed=3)  # 6^3 masks per row: brute force is cheap
    new, _ = swaps(W, _wanda(W, H, 2, 4), H, n=2, m=4, rounds=50)
    pats = list(itertools.combinations(range(4), 2))
    best = []
    for i in range(W.shape[0]):
        errs = []
        for combo in itertools.product(pats, repeat=3):
            alt = torch.zeros(1, 12, dtype=torch.bool)
            for g, pr in enumerate(combo):
                alt[0, [4 * g + j for j in pr]] = True
            errs.append(float(output_error_rows(W[i : i + 1] * alt, H)))
        best.append(min(errs))
    got = output_error_rows(W * new, H)
    wanda = output_error_rows(W * _wanda(W, H, 2, 4), H)
    gap_swaps = float(got.sum()) - sum(best)
    gap_wanda = float(wanda.sum()) - sum(best)
    assert gap_swaps >= -1e-6
    assert gap_swaps <= 0.25 * gap_wanda  # most of Wanda's distance to the optimum is closed


@pytest.mark.parametrize("seed", [0, 1])
def test_unstructured_swaps_keep_every_rows_count_and_end_one_swap_optimal(seed):
    W, H, _ = _problem(seed=seed)
    mask = _wanda(W, H)
    # with the shortlist as long as the row, every 1-swap is tried: none may help at the end
    new, rep = swaps(W, mask, H, shortlist=W.shape[1])
    assert torch.equal(new.sum(dim=1), mask.sum(dim=1))
    before, after = output_error_rows(W * mask, H), output_error_rows(W * new, H)
    assert (after <= before + 1e-9).all() and after.sum() < 0.9 * before.sum()
    # each 1-swap newly prunes one weight; a later swap may restore it
    assert rep.swaps >= int((new & ~mask).sum()) > 0
    for i in range(W.shape[0]):
        for k in (~new[i]).nonzero().flatten().tolist():
            for p in new[i].nonzero().flatten().tolist():
                alt = new[i : i + 1].clone()
                alt[0, k], alt[0, p] = True, False
                assert output_error_rows(W[i : i + 1] * alt, H) >= after[i] - 1e-6 * after[i]


def test_the_default_shortlist_does_nearly_as_well_as_trying_every_swap():
    W, H, _ = _problem(rows=32, cols=96, seed=5)
    mask = _wanda(W, H)
    short, _ = swaps(W, mask, H)
    full, _ = swaps(W, mask, H, shortlist=96)
    e0 = float(output_error_rows(W * mask, H).sum())
    e_short = float(output_error_rows(W * short, H).sum())
    e_full = float(output_error_rows(W * full, H).sum())
    assert e_short < 0.8 * e0
    assert e_short <= 1.05 * e_full


def test_dead_inputs_and_an_empty_mask():
    W, H, _ = _problem()
    H[:, 3] = 0
    H[3, :] = 0  # input 3 never fires: its weights cost nothing, pruned or kept
    mask = _wanda(W, H)
    new, _ = swaps(W, mask, H)
    assert torch.equal(new.sum(dim=1), mask.sum(dim=1))
    none = torch.zeros_like(mask)
    same, rep = swaps(W, none, H)
    assert torch.equal(same, none) and rep.swaps == 0 and rep.ratio == 1.0


def test_refusals():
    with pytest.raises(PruneError, match="use one or the other"):
        PruneConfig("sparsegpt", 0.5, refine="swaps")
    with pytest.raises(PruneError, match="12,870"):
        PruneConfig("wanda", 0.5, "8:16", refine="swaps")
    with pytest.raises(PruneError, match="at least 1 round"):
        PruneConfig("wanda", 0.5, refine="swaps", swap_rounds=0)
    with pytest.raises(PruneError, match="--swap_shortlist takes the number of candidates"):
        PruneConfig("wanda", 0.5, refine="swaps", swap_shortlist=0)
    cfg = PruneConfig("wanda", 0.5, "4:8", refine="swaps")  # C(8, 4) = 70 patterns: fine
    assert cfg.needs_hessian and cfg.needs_calibration


@pytest.mark.parametrize("sparsity_type", ["unstructured", "2:4"])
def test_prune_with_swaps_keeps_the_sparsity_and_lowers_every_layers_error(tiny, sparsity_type):
    ids = calibration_windows(tiny.tokenizer, load_text("builtin", role="calib"), 4, 64, 0)
    res = prune_model(tiny.model, PruneConfig("wanda", 0.5, sparsity_type, refine="swaps"), ids)
    zeros, total = count_block_params(tiny.model)
    assert zeros / total == pytest.approx(0.5, abs=1e-9)
    ratios = [r.refine_error for r in res.layers]
    assert all(r is not None and r <= 1 + 1e-9 for r in ratios)
    assert sorted(ratios)[len(ratios) // 2] < 1
    assert sum(r.swaps for r in res.layers) > 0


def test_cli_records_the_swaps(tmp_path, capsys):
    argv = "prune --model tiny --prune_method wanda --sparsity_type 2:4 --refine swaps"
    flags = ["--nsamples", "4", "--seqlen", "64", "--swap_rounds", "2", "--eval-windows", "1"]
    assert main([*argv.split(), *flags, "--save", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["refine"] == "swaps" and res["swap_rounds"] == 2
    assert res["refine_swaps"] == sum(r["swaps"] for r in res["layers"]) > 0
    assert 0 < res["refine_error_median"] < 1
    assert res["actual_sparsity"] == pytest.approx(0.5)
    err = " ".join(capsys.readouterr().err.split())
    assert f"least-squares swaps: {res['refine_swaps']:,} swaps (a kept weight pruned" in err
    # the summary's method row says how the mask was made, not only the line below it
    assert "metric W * sqrt(X) + least-squares swaps (at most 2" in err


@pytest.mark.smollm2
def test_smollm2_wanda_swaps_at_2_4(tmp_path):
    calib_src, eval_src = shared_texts()
    flags = "--model smollm2 --prune_method wanda --sparsity_type 2:4 --nsamples 8 --seqlen 256"
    evals = ["--eval", eval_src, "--eval-seqlen", "256", "--eval-windows", "2"]
    res = {}
    for extra in ([], ["--refine", "swaps", "--swap_rounds", "1"]):
        out = tmp_path / ("swaps" if extra else "plain")
        assert (
            main(
                ["prune", *flags.split(), *extra, "--calib", calib_src, *evals, "--save", str(out)]
            )
            == 0
        )
        r = json.loads((out / "results.json").read_text())
        assert r["actual_sparsity"] == pytest.approx(0.5, abs=1e-4)
        res[r["refine"]] = r
    swapped = res["swaps"]
    assert swapped["refine_error_median"] < 0.8
    assert math.isfinite(swapped["ppl"]) and swapped["ppl"] < 0.95 * res["none"]["ppl"]


def test_the_shortlist_reaches_the_swaps_from_the_cli(tmp_path, capsys, monkeypatch):
    """``--swap_shortlist`` is what every layer's swaps are given, and what results.json and the
    summary's method row say; the default is SWAP_SHORTLIST."""
    import pzshell.engine.prune as prune_mod
    from pzshell.engine.refine import SWAP_SHORTLIST

    seen = []

    def spy(*a, **kw):
        seen.append(kw["shortlist"])
        return swaps(*a, **kw)

    monkeypatch.setattr(prune_mod, "swaps", spy)
    argv = "prune --model tiny --prune_method wanda --refine swaps --nsamples 4 --seqlen 64"
    for flags, want in (([], SWAP_SHORTLIST), (["--swap_shortlist", "5"], 5)):
        out = tmp_path / str(want)
        seen.clear()
        assert main([*argv.split(), *flags, "--eval-windows", "1", "--save", str(out)]) == 0
        assert seen and set(seen) == {want}
        res = json.loads((out / "results.json").read_text())
        assert res["swap_shortlist"] == want
        err = " ".join(capsys.readouterr().err.split())
        assert "+ least-squares swaps (shortlist" in err  # the row may wrap before the number
