"""The engine on the real default model, SmolLM2-135M (kept short: runs in CI)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pzshell.cli import main
from pzshell.data import calibration_windows, eval_windows, load_text
from pzshell.engine.prune import PruneConfig, prune_model
from pzshell.engine.stats import compute_gradients
from pzshell.evaluate import perplexity
from pzshell.models import count_block_params, decoder_blocks, find_linears

from ..conftest import shared_texts

pytestmark = pytest.mark.smollm2


def test_smollm2_architecture(smollm2_lm):
    blocks = decoder_blocks(smollm2_lm.model)
    assert len(blocks) == 30
    lins = find_linears(blocks[0])
    assert tuple(lins["self_attn.k_proj"].weight.shape) == (192, 576)  # 3 KV heads x 64
    assert tuple(lins["mlp.down_proj"].weight.shape) == (576, 1536)
    assert smollm2_lm.default_seqlen() == 2048  # min(2048, 8192 positions)


def test_smollm2_wanda_prune_and_eval(smollm2):
    calib_src, eval_src = shared_texts()
    tok = smollm2.tokenizer
    calib = calibration_windows(tok, load_text(calib_src, role="calib"), 2, 128, 0)
    ev = eval_windows(tok, load_text(eval_src), 256, 2)
    dense = perplexity(smollm2.model, ev).ppl
    assert 5 < dense < 200
    prune_model(smollm2.model, PruneConfig("wanda", 0.5), calib)
    zeros, total = count_block_params(smollm2.model)
    assert zeros / total == pytest.approx(0.5, abs=1e-4)
    pruned = perplexity(smollm2.model, ev).ppl
    assert math.isfinite(pruned) and dense < pruned < 50 * dense


def test_smollm2_gradient_statistic_shapes(smollm2):
    calib_src, _ = shared_texts()
    calib = calibration_windows(smollm2.tokenizer, load_text(calib_src, role="calib"), 1, 64, 0)
    g = compute_gradients(smollm2.model, calib)
    assert len(g) == 30 * 7
    assert g["self_attn.q_proj_layer_0"].shape == (576, 576)
    assert g["mlp.down_proj_layer_29"].dtype == torch.float16
    assert all(torch.isfinite(v.float()).all() for v in g.values())


def test_smollm2_cli_prune_2_4(tmp_path):
    calib_src, eval_src = shared_texts()
    flags = "--model smollm2 --prune_method sparsegpt --sparsity_type 2:4 --nsamples 2 --seqlen 128"
    evals = ["--eval", eval_src, "--eval-seqlen", "256", "--eval-windows", "1"]
    rc = main(["prune", *flags.split(), "--calib", calib_src, *evals, "--save", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["actual_sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert res["eval_tokens"] == 256 and math.isfinite(res["ppl"])


def test_smollm2_owl_at_70_percent(smollm2):
    """OWL on the real model: 30 blocks, each its own ratio, the total kept at 70%."""
    calib_src, eval_src = shared_texts()
    tok = smollm2.tokenizer
    calib = calibration_windows(tok, load_text(calib_src, role="calib"), 2, 128, 0)
    ev = eval_windows(tok, load_text(eval_src), 256, 1)
    res = prune_model(smollm2.model, PruneConfig("wanda", 0.7, allocation="owl"), calib)
    zeros, total = count_block_params(smollm2.model)
    assert zeros / total == pytest.approx(0.7, abs=1e-5)
    assert len(res.block_ratios) == 30 and len(res.block_outliers) == 30
    assert max(res.block_ratios) - min(res.block_ratios) == pytest.approx(0.16, abs=1e-6)
    assert all(0 < o < 100 for o in res.block_outliers)
    assert math.isfinite(perplexity(smollm2.model, ev).ppl)
