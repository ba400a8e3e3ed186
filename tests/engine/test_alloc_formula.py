"""Allocation formulas over per-block statistics: parsing and its errors, OWL as the formula
``D``, the model-wide total kept, refusals before any weight changes, and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pzshell.cli import main
from pzshell.data import calibration_windows, load_text
from pzshell.engine.alloc_formula import AllocationFormulaError, parse_allocation, spread
from pzshell.engine.calib import capture_block_inputs, run_block
from pzshell.engine.layer_ratios import (
    block_statistics,
    formula_block_ratios,
    owl_block_ratios,
    owl_from_outliers,
)
from pzshell.engine.prune import PruneConfig, PruneError, prune_model
from pzshell.models import count_block_params, decoder_blocks


def _ids(tiny):
    return calibration_windows(tiny.tokenizer, load_text("builtin", role="calib"), 4, 64, 0)


@pytest.mark.parametrize(
    "text, says",
    [
        ("D * Q", "unknown name 'Q' at column 5"),
        ("foo(D)", "unknown function 'foo'"),
        ("D *", "not a formula at column"),
        ("", "empty"),
        ("2 + 3", "uses no block statistic"),
        ("D if A else L", "ifexp is not part of the formula language"),
        ("D % 2", "is not allowed"),
        ("log(D, A)", "takes one operand"),
    ],
)
def test_bad_formulas_are_refused_with_what_is_wrong(text, says):
    with pytest.raises(AllocationFormulaError, match=says):
        parse_allocation(text)


def test_values_and_spread():
    f = parse_allocation("D^2 * (1 - L) + sqrt(A)")
    stats = {"D": [1.0, 2.0, 4.0], "A": [0.25, 0.04, 0.09], "L": [0.0, 0.5, 1.0]}
    assert f.terms == {"D", "A", "L"}
    assert f.values(stats) == pytest.approx([1.5, 2.2, 0.3])
    r = spread([1.5, 2.2, 0.3], 0.6, 0.08)
    assert np.mean(r) == pytest.approx(0.6) and max(r) - min(r) == pytest.approx(0.16)
    assert r[1] < r[0] < r[2]  # a larger value keeps more
    # OWL's rule is the spread of D
    assert spread([3.0, 7.0, 5.0], 0.7, 0.1) == pytest.approx(
        owl_from_outliers([3, 7, 5], 0.7, 0.1)
    )


def test_constant_or_not_finite_values_are_refused():
    stats = {"D": [1.0, 2.0], "L": [0.0, 1.0]}
    with pytest.raises(AllocationFormulaError, match="same value"):
        parse_allocation("D * 0 + 1").values(stats)
    with pytest.raises(AllocationFormulaError, match="not finite for block 0 .*D = 1"):
        parse_allocation("D / (D - 1)").values(stats)


def test_formula_d_is_owl_and_angular_is_measured(tiny):
    ids = _ids(tiny)
    owl, outliers = owl_block_ratios(tiny.model, ids, 0.6, m=3.0, lam=0.1)
    ratios, terms = formula_block_ratios("D", tiny.model, ids, 0.6, m=3.0, lam=0.1)
    assert ratios == pytest.approx(owl) and terms["D"] == pytest.approx(outliers)
    # A, directly: the mean over tokens of arccos(cos(h_in, h_out)) / pi of every block
    chunks = capture_block_inputs(tiny.model, ids, 8)
    direct = []
    for block in decoder_blocks(tiny.model):
        out = run_block(block, chunks)
        x = torch.cat([c.hidden.flatten(0, -2) for c in chunks]).float()
        y = torch.cat([c.hidden.flatten(0, -2) for c in out]).float()
        cos = torch.nn.functional.cosine_similarity(x, y, dim=-1).clamp(-1, 1)
        direct.append(float(torch.arccos(cos).mean() / math.pi))
        chunks = out
    stats, sizes = block_statistics(tiny.model, ids)
    assert stats["A"] == pytest.approx(direct, rel=1e-5)
    assert stats["L"] == [0.0, 1.0] and len(sizes) == 2


@pytest.mark.parametrize("formula", ["A", "1 - L", "D * (1 + A)"])
@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_formula_allocation_keeps_the_model_wide_sparsity(tiny, formula, ratio):
    cfg = PruneConfig("wanda", ratio, allocation=formula)
    res = prune_model(tiny.model, cfg, _ids(tiny))
    zeros, total = count_block_params(tiny.model)
    assert zeros / total == pytest.approx(ratio, abs=64 / total)
    assert len(set(res.block_ratios)) == len(res.block_ratios)  # not uniform
    assert np.mean(res.block_ratios) == pytest.approx(ratio)


def test_refusals_before_any_weight_changes(tiny):
    with pytest.raises(PruneError, match="unknown name 'Z'"):
        PruneConfig("wanda", 0.5, allocation="Z")
    with pytest.raises(PruneError, match="2:4 fixes every block"):
        PruneConfig("wanda", 0.5, "2:4", allocation="D")
    before = [p.detach().clone() for p in tiny.model.parameters()]
    with pytest.raises(AllocationFormulaError, match="same value"):
        prune_model(
            tiny.model, PruneConfig("wanda", 0.5, allocation="L * 0 + 2 + D * 0"), _ids(tiny)
        )
    assert all(torch.equal(a, b) for a, b in zip(before, tiny.model.parameters(), strict=True))


def test_cli_formula_allocation(tmp_path, capsys):
    argv = "prune --model tiny --prune_method wanda --sparsity_ratio 0.6"
    argv += " --nsamples 4 --seqlen 64 --eval-windows 1"
    assert main([*argv.split(), "--allocation", "A * (1 - L)", "--save", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["allocation"] == "A * (1 - L)"
    assert len(res["block_angular"]) == len(res["block_sparsity"]) == 2
    assert res["actual_sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert main([*argv.split(), "--allocation", "D +", "--save", str(tmp_path / "b")]) == 2
    assert "not a formula at column" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_given_block_ratios_prune_as_the_allocation_would_without_its_pass(tiny):
    """An allocation search passes the ratios it already holds: the prune is the same as the
    one that computes them, and bad ratios are refused before any weight changes."""
    ids = _ids(tiny)
    dense = {k: v.detach().clone() for k, v in tiny.model.state_dict().items()}
    cfg = PruneConfig("wanda", 0.6, allocation="1 - L", owl_lambda=0.1)
    res = prune_model(tiny.model, cfg, ids)
    assert res.allocation_seconds > 0
    pruned = {k: v.detach().clone() for k, v in tiny.model.state_dict().items()}
    tiny.model.load_state_dict(dense)
    again = prune_model(tiny.model, cfg, ids, block_ratios=res.block_ratios)
    assert again.block_ratios == res.block_ratios and again.allocation_seconds == 0
    assert all(torch.equal(v, pruned[k]) for k, v in tiny.model.state_dict().items())
    tiny.model.load_state_dict(dense)
    for bad, says in (
        ([0.5], "1 ratios for a 1 - L allocation of 2 blocks"),
        ([0.5, 1.0], r"must be in \[0, 1\)"),
    ):
        with pytest.raises(PruneError, match=says):
            prune_model(tiny.model, cfg, ids, block_ratios=bad)
    with pytest.raises(PruneError, match="with a non-uniform allocation"):
        prune_model(tiny.model, PruneConfig("wanda", 0.5), ids, block_ratios=[0.5, 0.5])
    assert all(torch.equal(v, dense[k]) for k, v in tiny.model.state_dict().items())
