"""Per-block sparsity (allocation): OWL's published rule, the model-wide total kept, and the
refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pzshell.cli import main
from pzshell.data import calibration_windows, load_text
from pzshell.engine.calib import capture_block_inputs, run_block, run_block_collecting
from pzshell.engine.layer_ratios import (
    AllocationError,
    fit_to_target,
    outlier_ratio,
    owl_block_ratios,
    owl_from_outliers,
)
from pzshell.engine.prune import PruneConfig, PruneError, prune_model
from pzshell.lang import load_metric
from pzshell.models import count_block_params, decoder_blocks, find_linears


def _published(all_layer_ratio: list[float], sparsity_ratio: float, lamda: float) -> np.ndarray:
    """OWL's code (prune_wanda_outlier), transcribed: outlier ratios -> per-layer sparsity."""
    a = np.array(all_layer_ratio)
    a = (a - a.min()) * (1 / (a.max() - a.min()) * lamda * 2)
    a = a - np.mean(a) + (1 - sparsity_ratio)
    return 1 - a


def test_owl_rule_matches_the_published_code():
    outliers = [3.1, 7.4, 5.0, 9.9, 2.2, 6.6]
    ours = owl_from_outliers(outliers, 0.7, 0.08)
    np.testing.assert_allclose(ours, _published(outliers, 0.7, 0.08), rtol=0, atol=1e-12)
    assert np.mean(ours) == pytest.approx(0.7, abs=1e-12)
    assert max(ours) - min(ours) == pytest.approx(0.16)
    assert ours[3] == min(ours) and ours[4] == max(ours)  # most outliers: pruned least
    assert owl_from_outliers([4.0, 4.0], 0.5, 0.08) == [0.5, 0.5]


def test_outlier_ratio_counts_above_m_times_the_block_mean():
    a = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 1.0, 13.0]])  # mean of all 8 = 2.5: 13 > 5 * 2.5
    assert outlier_ratio([a, b], 5.0) == pytest.approx(100 / 8)
    assert outlier_ratio([a, b], 6.0) == 0.0


def test_fit_to_target_clips_and_redistributes():
    r = fit_to_target([0.5, 1.3, 0.9, -0.2], [10, 10, 20, 40], 0.6, hi=0.95)
    assert all(0 <= x <= 0.95 for x in r)
    assert r[1] == 0.95
    assert sum(x * n for x, n in zip(r, [10, 10, 20, 40], strict=True)) == pytest.approx(48)
    same = fit_to_target([0.4, 0.6], [100, 300], 0.55)  # sizes weigh the total
    assert same[0] * 100 + same[1] * 300 == pytest.approx(220)
    with pytest.raises(AllocationError, match="cannot be met"):
        fit_to_target([0.99, 0.99], [1, 1], 0.995, hi=0.99)


def test_owl_ratios_from_a_direct_dense_computation(tiny):
    ids = calibration_windows(tiny.tokenizer, load_text("builtin", role="calib"), 4, 64, 0)
    ratios, outliers = owl_block_ratios(tiny.model, ids, 0.6, m=3.0, lam=0.1)
    chunks = capture_block_inputs(tiny.model, ids, 8)
    direct = []
    for block in decoder_blocks(tiny.model):
        lins = find_linears(block)
        stats = run_block_collecting(block, lins, chunks, want_h=False)
        scores = [lin.weight.abs() * stats[n].X.sqrt() for n, lin in lins.items()]
        flat = torch.cat([s.flatten() for s in scores])
        direct.append(float((flat > 3.0 * flat.mean()).float().mean()) * 100)
        chunks = run_block(block, chunks)
    assert outliers == pytest.approx(direct)
    assert ratios == pytest.approx(list(_published(direct, 0.6, 0.1)))


@pytest.mark.parametrize(
    "method,metric",
    [("wanda", None), ("magnitude", None), ("sparsegpt", None), ("metric", "abs(W)*mms(X)")],
)
@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_owl_keeps_the_model_wide_sparsity(tiny, method, metric, ratio):
    ids = calibration_windows(tiny.tokenizer, load_text("builtin", role="calib"), 4, 64, 0)
    cfg = PruneConfig(
        method, ratio, metric=load_metric(metric) if metric else None, allocation="owl"
    )
    res = prune_model(tiny.model, cfg, ids)
    zeros, total = count_block_params(tiny.model)
    # exact up to the rounding of the last layer's rows (tiny: rows of 64 weights)
    assert zeros / total == pytest.approx(ratio, abs=64 / total)
    assert res.sparsity == pytest.approx(ratio, abs=64 / total)
    assert len(set(res.block_ratios)) == len(res.block_ratios)  # not uniform
    assert np.mean(res.block_ratios) == pytest.approx(ratio)


def test_allocation_refusals():
    with pytest.raises(PruneError, match="2:4 fixes every block at 0.5"):
        PruneConfig("wanda", 0.5, "2:4", allocation="owl")
    with pytest.raises(PruneError, match="unknown name 'owll'"):  # read as a formula
        PruneConfig("wanda", 0.5, allocation="owll")
    with pytest.raises(PruneError, match="lambda must be in"):
        PruneConfig("wanda", 0.5, allocation="owl", owl_lambda=0.7)
    with pytest.raises(PruneError, match="M must be positive"):
        PruneConfig("wanda", 0.5, allocation="owl", owl_m=0)


def test_cli_owl_writes_its_allocation(tmp_path, capsys):
    argv = "prune --model tiny --prune_method wanda --allocation owl --sparsity_ratio 0.7"
    argv += " --nsamples 4 --seqlen 64 --eval-windows 1"
    assert main([*argv.split(), "--save", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["allocation"] == "owl" and res["owl_m"] == 5.0 and res["owl_lambda"] == 0.08
    assert len(res["block_sparsity"]) == len(res["block_outliers"]) == 2
    assert res["actual_sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert "allocation owl" in capsys.readouterr().err
    bad = "prune --model tiny --prune_method wanda --allocation owl --sparsity_type 2:4"
    assert main(bad.split()) == 2
