"""DSnoT refinement: the mask's sparsity (and N:M pattern) exactly kept, each row's mean output
error on the calibration data never larger, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch

from pzshell.cli import main
from pzshell.data import calibration_windows, load_text
from pzshell.engine.masks import nm_mask, row_mask
from pzshell.engine.prune import PruneConfig, PruneError, prune_model
from pzshell.engine.refine import dsnot, expected_error
from pzshell.engine.stats import InputStats
from pzshell.models import count_block_params


def _layer(seed: int = 0, rows: int = 48, cols: int = 64, windows: int = 6, seq: int = 32):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    # inputs with a non-zero mean per column, so pruning shifts the outputs' mean
    x = torch.randn(windows, seq, cols, generator=g) + torch.randn(cols, generator=g)
    st = InputStats(cols, want_h=False, device=torch.device("cpu"))
    st.add(x)
    return W, x, st


def _mean_output_error(W, mask, x):
    """Per row: (dense - pruned) outputs summed over a window's tokens, averaged over windows."""
    diff = W * mask  # the part of W that pruning removes
    return torch.einsum("wti,oi->o", x, diff) / x.shape[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dsnot_keeps_row_counts_and_never_grows_the_error(seed):
    W, x, st = _layer(seed)
    scores = W.abs() * st.X.sqrt()
    mask = row_mask(scores, 0.5)
    new, rep = dsnot(W, mask, scores, st.window_sums, st.variance, threshold=0.0)
    assert torch.equal(new.sum(dim=1), mask.sum(dim=1))  # sparsity exact, row by row
    assert rep.swaps > 0 and not torch.equal(new, mask)
    before = _mean_output_error(W, mask, x)
    after = _mean_output_error(W, new, x)
    # DSnoT's expected error is the mean output error on the calibration data
    torch.testing.assert_close(expected_error(W, new, st.window_sums), after, rtol=1e-4, atol=1e-3)
    assert (after.abs() <= before.abs() + 1e-4).all()
    assert after.abs().sum() < before.abs().sum()
    assert rep.error_after == pytest.approx(float(after.abs().sum()), rel=1e-3)


def test_dsnot_keeps_the_nm_pattern():
    W, x, st = _layer(3)
    scores = W.abs() * st.X.sqrt()
    mask = nm_mask(scores, 2, 4)
    new, rep = dsnot(W, mask, scores, st.window_sums, st.variance, n=2, m=4, threshold=0.0)
    assert rep.swaps > 0
    assert (new.reshape(W.shape[0], -1, 4).sum(dim=2) == 2).all()
    before, after = _mean_output_error(W, mask, x), _mean_output_error(W, new, x)
    assert (after.abs() <= before.abs() + 1e-4).all()


def test_dsnot_threshold_and_cycles_bound_the_work():
    W, x, st = _layer(4)
    scores = W.abs() * st.X.sqrt()
    mask = row_mask(scores, 0.5)
    _, one = dsnot(W, mask, scores, st.window_sums, st.variance, cycles=1, threshold=0.0)
    assert one.swaps <= W.shape[0] and one.cycles == 1
    _, none = dsnot(W, mask, scores, st.window_sums, st.variance, threshold=1e9)
    assert none.swaps == 0


@pytest.mark.parametrize("sparsity_type", ["unstructured", "2:4"])
@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_prune_with_dsnot_keeps_the_sparsity(tiny, method, sparsity_type):
    ids = calibration_windows(tiny.tokenizer, load_text("builtin", role="calib"), 4, 64, 0)
    cfg = PruneConfig(method, 0.5, sparsity_type, refine="dsnot")
    res = prune_model(tiny.model, cfg, ids)
    zeros, total = count_block_params(tiny.model)
    if method == "wanda" or sparsity_type == "2:4":
        assert zeros / total == pytest.approx(0.5, abs=1e-9)
    assert sum(r.swaps for r in res.layers) > 0


def test_refusals():
    with pytest.raises(PruneError, match="use one or the other"):
        PruneConfig("sparsegpt", 0.5, refine="dsnot")
    with pytest.raises(PruneError, match="use one or the other"):
        PruneConfig("wanda", 0.5, refine="dsnot", reconstruct=True)
    with pytest.raises(PruneError, match="unknown refinement 'dsnt'"):
        PruneConfig("wanda", 0.5, refine="dsnt")
    with pytest.raises(PruneError, match="at least 1 cycle"):
        PruneConfig("wanda", 0.5, refine="dsnot", dsnot_cycles=0)


def test_cli_records_the_refinement(tmp_path, capsys):
    argv = "prune --model tiny --prune_method wanda --refine dsnot --nsamples 4 --seqlen 64"
    assert main([*argv.split(), "--eval-windows", "1", "--save", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["refine"] == "dsnot" and res["refine_swaps"] > 0
    assert res["refine_swaps"] == sum(r["swaps"] for r in res["layers"])
    assert res["actual_sparsity"] == pytest.approx(0.5)
    assert "refinement dsnot" in capsys.readouterr().err
