"""GQA-aware structured pruning on the in-memory `tiny` model (2 blocks, 4 q / 2 kv heads)."""

from __future__ import annotations

import copy
import csv
import json

import pytest
import torch

from pzshell.cli import main
from pzshell.data import calibration_windows, load_text
from pzshell.engine import structured as S
from pzshell.models import build_tiny, decoder_blocks, load_model
from pzshell.models.structure import STRUCTURE_FILE, load_structured, save_structured


@pytest.fixture(scope="module")
def calib(tiny_lm):
    return calibration_windows(tiny_lm.tokenizer, load_text("builtin", role="calib"), 3, 32, 0)


@pytest.fixture(scope="module")
def stats(tiny_lm, calib):
    """Gradients, activations and block distances of the dense tiny model (computed once)."""
    return S.collect_stats(tiny_lm.model, calib, gradients=True, activations=True)


@pytest.fixture(scope="module")
def ids(tiny_lm):
    return torch.randint(0, 257, (2, 24), generator=torch.Generator().manual_seed(1))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def plan_for(model, stats, ratio=0.3, method="taylor", **kw):
    parts = S.model_parts(model)
    imp = S.unit_importance(parts, S.parse_importance(method), stats)
    return S.make_plan(parts, imp, ratio, block_importance=stats.block_cosine, **kw)


def plan_with(model, keep_attn: dict[int, list[int]], keep_mlp: dict[int, list[int]]) -> S.Plan:
    """A hand-made plan: the listed units kept (blocks not listed keep everything)."""
    parts = S.model_parts(model)
    zeros = [(torch.zeros(p.kv_heads), torch.zeros(p.intermediate)) for p in parts]
    table = S.UnitTable.build(parts, zeros)
    for b, k, i in zip(
        table.block.tolist(), table.kind.tolist(), table.index.tolist(), strict=True
    ):
        keep = keep_attn if k == S.ATTN else keep_mlp
        if b in keep and i not in keep[b]:
            table.kept[(table.block == b) & (table.kind == k) & (table.index == i)] = False
    return S.Plan(table, "manual", 0.5, S.prunable_params(parts), [])


# ------------------------------------------------------------------------------------------------
# pure pieces
# ------------------------------------------------------------------------------------------------


def test_attention_group_scores_follow_repeat_kv():
    hd, n_kv, r, hidden = 2, 3, 2, 5
    q = torch.zeros(n_kv * r * hd, hidden)
    k = torch.zeros(n_kv * hd, hidden)
    v = torch.zeros(n_kv * hd, hidden)
    o = torch.zeros(hidden, n_kv * r * hd)
    q[2 * r * hd + 1] = 1.0  # a row of query head 5, which reads KV head 5 // r = 2
    k[1 * hd] = 10.0  # KV head 1
    o[:, 0] = 100.0  # a column of query head 0 -> group 0
    s = S.attention_group_scores(q, k, v, o, hd)
    assert s.tolist() == [100.0 * hidden, 10.0 * hidden, 1.0 * hidden]


def test_mlp_channel_scores():
    gate, up, down = torch.eye(3), 2 * torch.eye(3), torch.diag(torch.tensor([0.0, 0.0, 5.0]))
    assert S.mlp_channel_scores(gate, up, down).tolist() == [3.0, 3.0, 8.0]


def test_taylor_scores():
    w = torch.tensor([[1.0, -2.0]])
    g = torch.tensor([[0.5, 0.5]])
    g2 = torch.tensor([[4.0, 1.0]])
    first = S.weight_scores(S.parse_importance("taylor"), w, grad_mean=g, grad_sq_mean=g2)
    second = S.weight_scores(S.parse_importance("taylor_2nd"), w, grad_mean=g, grad_sq_mean=g2)
    assert first.tolist() == [[0.5, 1.0]]
    assert second.tolist() == [[0.5 + 0.5 * 1 * 4, 1.0 + 0.5 * 4 * 1]]


@pytest.mark.parametrize(
    "text, want",
    [("2:8", (0.2, 0.8)), ("0:10", (0.0, 1.0)), ("10:0", (1.0, 0.0)), ("0.3:9.7", (0.03, 0.97))],
)
def test_parse_distribution(text, want):
    assert S.parse_distribution(text) == pytest.approx(want)


@pytest.mark.parametrize("text", ["abc", "2:8:1", "2", "-1:5", "0:0", "a:b", "nan:1"])
def test_parse_distribution_errors(text):
    with pytest.raises(S.StructuredError):
        S.parse_distribution(text)


def test_waterfill_and_rounding():
    x = S.waterfill([1.0, 1.0, 4.0], [10.0, 10.0, 10.0], 15.0)
    assert sum(x) == pytest.approx(15.0)
    assert x[2] == pytest.approx(10.0)  # capped, the rest spread evenly
    assert x[0] == pytest.approx(2.5)
    with pytest.raises(ValueError):
        S.waterfill([1.0, 0.0], [10.0, 10.0], 11.0)  # the zero-weight block cannot take any
    counts = S.round_units([2.6, 2.6, 0.8], [1, 1, 1], [5, 5, 5])
    assert sum(counts) == 6 and counts[2] == 1


# ------------------------------------------------------------------------------------------------
# plan -> surgery
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, kw",
    [
        ("taylor", {}),
        ("taylor_2nd", {}),
        ("wanda", {}),
        ("abs(W*W)*mms(G)", {}),
        ("taylor", {"strategy": "inverse", "distribution": "2:8"}),
        ("taylor", {"strategy": "uniform", "distribution": "5:5"}),
        ("wanda", {"strategy": "inverse", "distribution": "2:8", "freeze_top_n": 1}),
    ],
)
def test_param_counts_match_plan(tiny, stats, ids, method, kw):
    plan = plan_for(tiny.model, stats, 0.35, method, **kw)
    dense_params = S.model_params(tiny.model)
    rep = S.apply_plan(tiny.model, plan)
    parts = S.model_parts(tiny.model)
    assert S.prunable_params(parts) == plan.params_after == rep.params_after
    assert plan.params_removed == dense_params - S.model_params(tiny.model)
    assert abs(plan.achieved_ratio - 0.35) < 0.1
    # every linear has the shape the kept units say
    for p in parts:
        kv = len(plan.table.keep_indices(p.index, S.ATTN))
        ch = len(plan.table.keep_indices(p.index, S.MLP))
        assert p.kv_heads == kv and p.intermediate == ch
        if kv:
            assert p.q.weight.shape == (kv * 2 * 16, 64) and p.o.weight.shape == (64, kv * 32)
            assert p.k.weight.shape == p.v.weight.shape == (kv * 16, 64)
    assert torch.isfinite(logits(tiny.model, ids)).all()


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.8])
def test_q_kv_ratio_holds_in_every_block(tiny, stats, ids, ratio):
    plan = plan_for(tiny.model, stats, ratio, "wanda")
    S.apply_plan(tiny.model, plan)
    for p in S.model_parts(tiny.model):
        assert p.q_heads == 2 * p.kv_heads  # tiny: 4 q heads / 2 kv heads
        assert tiny.model.config.num_attention_heads // tiny.model.config.num_key_value_heads == 2
    assert torch.isfinite(logits(tiny.model, ids)).all()


def test_all_units_kept_is_the_same_model(tiny, ids):
    before = logits(tiny.model, ids)
    plan = plan_with(tiny.model, {}, {})
    S.apply_plan(tiny.model, plan)  # slices every linear with all of its rows / columns
    assert torch.equal(logits(tiny.model, ids), before)


def test_removal_by_hand_matches_the_tool(tiny, stats, ids):
    """Zeroing the o_proj columns of removed KV groups and the down_proj columns of removed
    channels in the dense model removes exactly their contribution: same output as surgery."""
    plan = plan_for(tiny.model, stats, 0.5, "taylor_2nd", strategy="uniform", distribution="3:7")
    by_hand = copy.deepcopy(tiny.model)
    with torch.no_grad():
        for i, block in enumerate(decoder_blocks(by_hand)):
            keep = plan.table.keep_indices(i, S.ATTN)
            for g in range(2):
                if g not in keep:  # group g: query heads 2g, 2g+1 -> o columns 32g .. 32g+31
                    block.self_attn.o_proj.weight[:, 32 * g : 32 * (g + 1)] = 0
            keep = set(plan.table.keep_indices(i, S.MLP))
            for c in range(128):
                if c not in keep:
                    block.mlp.down_proj.weight[:, c] = 0
    S.apply_plan(tiny.model, plan)
    assert any(p.kv_heads < 2 for p in S.model_parts(tiny.model))
    torch.testing.assert_close(logits(tiny.model, ids), logits(by_hand, ids), atol=1e-5, rtol=1e-5)


def test_empty_attention_and_mlp(tiny, ids):
    """A block with zero KV groups (or zero channels) lets the residual pass through."""
    plan = plan_with(tiny.model, {0: []}, {1: []})
    ref = copy.deepcopy(tiny.model)
    with torch.no_grad():
        decoder_blocks(ref)[0].self_attn.o_proj.weight.zero_()
        decoder_blocks(ref)[1].mlp.down_proj.weight.zero_()
    S.apply_plan(tiny.model, plan)
    blocks = decoder_blocks(tiny.model)
    assert isinstance(blocks[0].self_attn, S.EmptyAttention)
    assert isinstance(blocks[1].mlp, S.EmptyMLP)
    torch.testing.assert_close(logits(tiny.model, ids), logits(ref, ids), atol=1e-5, rtol=1e-5)
    assert S.model_parts(tiny.model)[0].kv_heads == 0


def test_depth_removal(tiny, ids, tmp_path):
    plan = plan_with(tiny.model, {0: []}, {0: []})
    emptied = copy.deepcopy(tiny.model)
    S.apply_plan(emptied, plan_with(emptied, {0: []}, {0: []}))  # empty but kept
    rep = S.apply_plan(tiny.model, plan, remove_empty_layers=True)
    assert rep.removed_blocks == [0] and rep.source_blocks == [1]
    assert len(decoder_blocks(tiny.model)) == 1 and tiny.model.config.num_hidden_layers == 1
    assert decoder_blocks(tiny.model)[0].self_attn.layer_idx == 0
    # the removed block's norms go too
    assert rep.model_params_before - rep.model_params_after == plan.params_removed + 2 * 64
    out = logits(tiny.model, ids)
    torch.testing.assert_close(out, logits(emptied, ids), atol=1e-5, rtol=1e-5)
    gen = tiny.model.generate(ids[:1, :5], max_new_tokens=3, do_sample=False)  # KV cache works
    assert gen.shape == (1, 8)
    save_structured(tiny.model, tiny.tokenizer, tmp_path / "m", removed_blocks=rep.removed_blocks)
    again, _ = load_structured(tmp_path / "m")
    assert again.config.num_hidden_layers == 1
    assert torch.equal(logits(again, ids), out)


def test_save_and_reload_exact(tiny, stats, ids, tmp_path):
    plan = plan_for(tiny.model, stats, 0.6, "taylor")
    S.apply_plan(tiny.model, plan)
    out = logits(tiny.model, ids)
    save_structured(tiny.model, tiny.tokenizer, tmp_path / "m")
    doc = json.loads((tmp_path / "m" / STRUCTURE_FILE).read_text())
    assert [b["kv_heads"] for b in doc["blocks"]] == [p.kv_heads for p in S.model_parts(tiny.model)]
    model, tok = load_structured(tmp_path / "m")
    assert torch.equal(logits(model, ids), out)
    assert tok is not None
    # load_model (so every --model DIR) goes through the structured loader
    lm = load_model(str(tmp_path / "m"), device="cpu")
    assert "structurally pruned" in lm.source
    assert torch.equal(logits(lm.model, ids), out)
    assert S.model_params(lm.model) == S.model_params(tiny.model)


def test_layerwise_allocation(tiny, stats):
    parts = S.model_parts(tiny.model)
    imp = S.unit_importance(parts, S.parse_importance("taylor"), stats)
    bi = [0.1, 0.3]  # block 1 three times as important
    inv = S.make_plan(parts, imp, 0.4, strategy="inverse", distribution="0:10", block_importance=bi)
    rows = inv.blocks(parts)
    assert rows[0]["removed_fraction"] > rows[1]["removed_fraction"]  # inverse: 0 loses more
    assert all(r["kv_groups_kept"] == 2 for r in rows)  # 0:10 leaves attention alone
    uni = S.make_plan(parts, imp, 0.4, strategy="uniform", distribution="0:10", block_importance=bi)
    a, b = (r["intermediate_kept"] for r in uni.blocks(parts))
    assert a == b
    att = S.make_plan(parts, imp, 0.3, strategy="uniform", distribution="10:0", block_importance=bi)
    assert all(r["intermediate_kept"] == 128 for r in att.blocks(parts))
    frz = S.make_plan(
        parts, imp, 0.3, strategy="inverse", distribution="2:8", block_importance=bi, freeze_top_n=1
    )
    assert frz.frozen == [1]
    r1 = frz.blocks(parts)[1]
    assert r1["removed_fraction"] == 0 and r1["frozen"]
    with pytest.raises(S.StructuredError, match="holds only"):  # attention is 1/3 of tiny
        S.make_plan(parts, imp, 0.5, strategy="uniform", distribution="10:0", block_importance=bi)


def test_global_allocation_is_a_knapsack(tiny, stats):
    parts = S.model_parts(tiny.model)
    imp = S.unit_importance(parts, S.parse_importance("taylor"), stats)
    plan = S.make_plan(parts, imp, 0.3)
    t = plan.table
    score = t.importance / t.cost.double()
    assert score[~t.kept].max() <= score[t.kept].min()  # removed units are the cheapest
    # the removed parameters are as close to the target as whole units allow
    assert abs(plan.params_removed - 0.3 * plan.params_before) <= t.cost.max() / 2


def test_metric_formula_equals_builtin_wanda(tiny, stats):
    parts = S.model_parts(tiny.model)
    a = S.unit_importance(parts, S.parse_importance("wanda"), stats)
    b = S.unit_importance(parts, S.parse_importance("W*sqrt(X)"), stats)
    for (a1, a2), (b1, b2) in zip(a, b, strict=True):
        torch.testing.assert_close(a1, b1)
        torch.testing.assert_close(a2, b2)


def test_block_importance_measures(stats):
    assert len(stats.block_cosine) == len(stats.block_angular) == 2
    assert all(0 < x < 2 for x in stats.block_cosine)
    assert all(0 < x <= 1 for x in stats.block_angular)


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------

FAST = ["--model", "tiny", "--device", "cpu", "--num_samples", "2", "--seqlen", "32"]


def test_cli_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    flags = (
        "--pruning_ratio 0.4 --importance_method wanda --pruning_strategy inverse "
        "--pruning_distribution 2:8 --test_after_prune --eval-windows 1 --speed_windows 1"
    )
    rc = main(["structured", *FAST, *flags.split(), "--save", str(run), "--save_model"])
    assert rc == 0
    for name in [
        "settings.json",
        "units.csv",
        "blocks.json",
        "kept.png",
        "results.json",
        "structured.log",
    ]:
        assert (run / name).is_file(), name
    res = json.loads((run / "results.json").read_text())
    keys = "ppl_dense ppl params_before params_after tokens_per_s_dense tokens_per_s"
    for key in [*keys.split(), "model_params_after"]:
        assert key in res, key
    rows = list(csv.DictReader((run / "units.csv").open()))
    assert set(rows[0]) == {"block", "kind", "unit", "importance", "cost", "kept"}
    assert len(rows) == 2 * (2 + 128)
    removed = sum(int(r["cost"]) for r in rows if r["kept"] == "0")
    assert res["params_before"] - res["params_after"] == removed
    blocks = json.loads((run / "blocks.json").read_text())
    assert len(blocks["blocks"]) == 2 and "structure" in blocks
    assert (run / "kept.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "settings.json").read_text())["pruning_distribution"] == "2:8"
    lm = load_model(str(run / "model"), device="cpu")
    assert S.prunable_params(S.model_parts(lm.model)) == res["params_after"]


def test_cli_finetune_lora(tmp_path):
    flags = "--pruning_ratio 0.3 --finetune --finetune_samples 2 --finetune_seqlen 16 --eval none"
    rc = main(["structured", *FAST, *flags.split(), "--save", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["finetune"]["method"] == "lora" and res["finetune"]["steps"] == 2
    assert "ppl_dense" not in res and "ppl" not in res


def test_cli_finetune_saved_structured_model_keeps_its_shapes(tmp_path):
    """`pzshell finetune` of a structurally pruned model saves it so that it reloads exactly."""
    run = tmp_path / "run"
    flags = ["--pruning_ratio", "0.4", "--eval", "none", "--save", str(run), "--save_model"]
    rc = main(["structured", *FAST, *flags])
    assert rc == 0
    out = tmp_path / "recovered"
    flags = [
        "--finetune_samples",
        "2",
        "--finetune_seqlen",
        "16",
        "--eval-seqlen",
        "32",
        "--eval-windows",
        "1",
    ]
    rc = main(["finetune", "--model", str(run / "model"), *flags, "--save_model", str(out)])
    assert rc == 0
    assert (out / STRUCTURE_FILE).is_file()
    a = load_model(str(run / "model"), device="cpu").model
    b = load_model(str(out), device="cpu").model
    shapes = [(n, tuple(p.shape)) for n, p in a.named_parameters()]
    assert shapes == [(n, tuple(p.shape)) for n, p in b.named_parameters()]
    assert S.prunable_params(S.model_parts(b)) == S.prunable_params(S.model_parts(a))


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory):
    """A tiny OPT model on disk: attention without GQA-style q/k/v/o naming in LLaMA blocks."""
    from transformers import OPTConfig, OPTForCausalLM

    from pzshell.models.load import byte_tokenizer

    d = tmp_path_factory.mktemp("opt")
    cfg = OPTConfig(
        vocab_size=257,
        hidden_size=32,
        num_hidden_layers=1,
        ffn_dim=64,
        num_attention_heads=2,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
    )
    OPTForCausalLM(cfg).save_pretrained(d)
    byte_tokenizer().save_pretrained(d)
    return d


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pruning_ratio", "0"], "pruning ratio"),
        (["--pruning_ratio", "1"], "pruning ratio"),
        (["--pruning_ratio", "1.5"], "pruning ratio"),
        (["--pruning_ratio", "-0.2"], "pruning ratio"),
        (["--pruning_strategy", "inverse", "--pruning_distribution", "2-8"], "does not parse"),
        (["--pruning_strategy", "inverse", "--pruning_distribution", "0:0"], "not both 0"),
        (["--pruning_distribution", "2:8"], "layer-wise"),
        (["--freeze_top_n_layers", "2"], "freezes every block"),
        (["--freeze_top_n_layers", "7"], "freezes every block"),
        (["--freeze_top_n_layers", "-1"], ">= 0"),
        (["--importance_method", "W*(X"], "importance method"),
        (
            [
                "--pruning_strategy",
                "uniform",
                "--pruning_distribution",
                "10:0",
                "--pruning_ratio",
                "0.5",
            ],
            "holds only",
        ),
        (["--save_model"], "--save"),
    ],
)
def test_cli_bad_input_exits_2(extra, message, capsys):
    assert main(["structured", *FAST, "--eval", "none", *extra]) == 2
    err = capsys.readouterr().err
    assert "error" in err and message in err.replace("\n", " ")


def test_cli_non_gqa_model_exits_2(opt_dir, capsys):
    flags = ["--device", "cpu", "--num_samples", "1", "--seqlen", "16", "--eval", "none"]
    rc = main(["structured", "--model", str(opt_dir), *flags])
    assert rc == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "structured pruning" in err or "GQA" in err


def test_build_tiny_variants_prune(ids):
    """Other GQA shapes: 8 q heads over 2 kv heads (4:1), and plain multi-head attention."""
    for overrides in ({"num_attention_heads": 8}, {"num_key_value_heads": 4}):
        lm = build_tiny(**overrides)
        calib = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(0))
        st = S.collect_stats(lm.model, calib)
        parts = S.model_parts(lm.model)
        ratio = parts[0].group_size
        plan = S.make_plan(parts, S.unit_importance(parts, S.parse_importance("taylor"), st), 0.5)
        S.apply_plan(lm.model, plan)
        for p in S.model_parts(lm.model):
            assert p.q_heads == ratio * p.kv_heads
        assert S.prunable_params(S.model_parts(lm.model)) == plan.params_after
        assert torch.isfinite(logits(lm.model, ids)).all()


def test_save_model_picks_the_format(tiny, stats, ids, tmp_path):
    from pzshell.models.structure import has_custom_structure, save_model

    assert not has_custom_structure(tiny.model)
    save_model(tiny.model, tiny.tokenizer, tmp_path / "m")
    assert not (tmp_path / "m" / STRUCTURE_FILE).exists()
    S.apply_plan(tiny.model, plan_for(tiny.model, stats, 0.3, "wanda"))
    assert has_custom_structure(tiny.model)
    save_model(tiny.model, tiny.tokenizer, tmp_path / "m")  # same directory, now pruned
    lm = load_model(str(tmp_path / "m"), device="cpu")
    assert torch.equal(logits(lm.model, ids), logits(tiny.model, ids))


def test_generate_with_kv_cache_and_empty_first_attention(tiny):
    """The model reads the KV cache length from layer 0; an empty attention there keeps it."""
    S.apply_plan(tiny.model, plan_with(tiny.model, {0: []}, {}))
    ids = torch.randint(0, 257, (1, 6), generator=torch.Generator().manual_seed(0))
    cached = tiny.model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    plain = tiny.model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain)


def test_a_degenerate_importance_formula_is_refused(capsys):
    """`W-W` gives every unit the same importance: refused, as `prune` refuses it, instead of
    removing an arbitrary quarter of the units."""
    argv = ["structured", *FAST, "--eval", "none", "--importance_method", "W-W"]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "constant" in err or "degenerate" in err, err


@pytest.mark.parametrize("with_note", [True, False])
def test_eval_of_a_structured_model_reports_its_structure(tmp_path, capsys, with_note):
    """`eval` on a structurally pruned directory said "pruning: dense"."""
    from pzshell.jobs.provenance import PROVENANCE_FILE

    run = tmp_path / "run"
    flags = ["--pruning_ratio", "0.4", "--eval", "none", "--save", str(run), "--save_model"]
    assert main(["structured", *FAST, *flags]) == 0
    made = json.loads((run / "results.json").read_text())
    if not with_note:  # a directory without pzshell's note of how it was made
        (run / "model" / PROVENANCE_FILE).unlink()
    capsys.readouterr()
    out = tmp_path / "ev"
    argv = ["eval", "--model", str(run / "model"), "--eval-windows", "1", "--save", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["method"] == "structured" and res["sparsity_type"] == "structured"
    assert res["model_params_after"] == made["model_params_after"]
    err = " ".join(capsys.readouterr().err.split())
    assert "dense" not in err and f"{made['model_params_after']:,} parameters" in err
    if with_note:
        assert res["model_params_before"] == made["model_params_before"]
        assert f"{made['model_params_before']:,} -> " in err
