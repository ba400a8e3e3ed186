"""The statistics core (pzshell.engine.stats): the published gradient file, one key scheme, and
the same statistics for the prune engine, structured pruning and the search."""

from __future__ import annotations

import copy

import pytest
import torch

from pzshell.data import calibration_windows, load_text
from pzshell.engine import structured as S
from pzshell.engine.calib import capture_block_inputs, run_block, run_block_collecting
from pzshell.engine.prune import PruneConfig, prune_model
from pzshell.engine.stats import (
    StatsCollector,
    activation_stats,
    compute_gradients,
    gradient_stats,
    load_gradients,
    model_linears,
    save_gradients,
    stat_key,
)
from pzshell.models import block_linears, decoder_blocks, find_linears


@pytest.fixture(scope="module")
def calib(tiny_lm):
    return calibration_windows(tiny_lm.tokenizer, load_text("builtin", role="calib"), 6, 48, 0)


def published_keys(model) -> list[str]:
    return [f"{n}_layer_{i}" for i, lins in enumerate(block_linears(model)) for n in lins]


def original_gradient_file(model, calib, path, nsamples: int, scale: int = 100) -> None:
    """G as the published Pruner-Zero script makes and saves it (lib/gradient_computation.py):
    every parameter trainable, one forward/backward per sample, ``(scale * g)^2`` summed in fp32,
    square root, fp16, ``torch.save`` of the dict to an open file."""

    def find_layers(module, name=""):  # the original's recursion over named_children
        if type(module) is torch.nn.Linear:
            return {name: module}
        res = {}
        for child_name, child in module.named_children():
            res.update(find_layers(child, f"{name}.{child_name}" if name else child_name))
        return res

    layers = model.model.layers
    l2 = {}
    for i, layer in enumerate(layers):
        for name, lin in find_layers(layer).items():
            l2[f"{name}_layer_{i}"] = torch.zeros_like(lin.weight, dtype=torch.float32)
    model.train()
    for s in range(nsamples):
        ids = calib[s : s + 1]
        model(input_ids=ids, labels=ids).loss.backward()
        for i, layer in enumerate(layers):
            for name, lin in find_layers(layer).items():
                grad = lin.weight.grad.detach().clone().to(dtype=torch.float32)
                l2[f"{name}_layer_{i}"] = l2[f"{name}_layer_{i}"] + torch.abs((grad * scale) ** 2)
        model.zero_grad()
    model.eval()
    for name in l2:
        l2[name] = torch.sqrt(l2[name]).to(dtype=torch.float16)
    with open(path, "wb") as f:
        torch.save(l2, f)


def test_key_scheme(tiny_lm):
    assert stat_key("self_attn.q_proj", 0) == "self_attn.q_proj_layer_0"
    assert list(model_linears(tiny_lm.model)) == published_keys(tiny_lm.model)
    assert len(published_keys(tiny_lm.model)) == 2 * 7


def test_gradient_file_in_the_published_format(tmp_path, tiny_lm, calib):
    g = compute_gradients(tiny_lm.model, calib[:2])
    assert list(g) == published_keys(tiny_lm.model)
    lins = model_linears(tiny_lm.model)
    for k, v in g.items():
        assert v.dtype == torch.float16 and v.device.type == "cpu"
        assert v.shape == lins[k].weight.shape
    path = tmp_path / "gradients_aggregrate_norm_l2_model_tiny_2_0.pth"
    save_gradients(g, path)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # how the original reads it
    assert isinstance(raw, dict) and list(raw) == list(g)
    assert all(raw[k].dtype == torch.float16 and torch.equal(raw[k], g[k]) for k in g)
    back = load_gradients(path, tiny_lm.model)
    assert all(torch.equal(back[k], g[k]) for k in g)


def test_a_file_made_by_the_original_code_loads_and_prunes_the_same(tmp_path, tiny, calib):
    path = tmp_path / "gradients_aggregrate_norm_l2_model_tiny_3_0.pth"
    original_gradient_file(copy.deepcopy(tiny.model), calib, path, 3)
    theirs = load_gradients(path, tiny.model)
    ours = compute_gradients(tiny.model, calib[:3])
    assert list(theirs) == list(ours)
    for k in ours:
        assert theirs[k].dtype == torch.float16
        torch.testing.assert_close(theirs[k], ours[k], rtol=1e-3, atol=1e-5)
    a, b = copy.deepcopy(tiny.model), copy.deepcopy(tiny.model)
    cfg = PruneConfig("pruner-zero", 0.5)
    prune_model(a, cfg, None, gradients=theirs)
    prune_model(b, cfg, None, gradients=ours)
    for la, lb in zip(model_linears(a).values(), model_linears(b).values(), strict=True):
        agree = ((la.weight == 0) == (lb.weight == 0)).float().mean()
        assert agree > 0.999  # equal up to fp16 ties of the two computations


def test_structured_and_prune_engines_get_the_same_statistics(tiny_lm, calib):
    """X: the prune driver's block-by-block pass (on the dense model), structured pruning's
    whole-model pass and the search's pass are one computation. G: structured pruning's fp32 G
    is the gradient file's G before its fp16 rounding."""
    model = tiny_lm.model
    st = S.collect_stats(model, calib, gradients=False, activations=True)
    searched = activation_stats(model, calib)
    chunks = capture_block_inputs(model, calib, 8)
    by_block = {}
    for i, block in enumerate(decoder_blocks(model)):
        lins = find_linears(block)
        stats = run_block_collecting(block, lins, chunks, want_h=False)
        by_block.update({stat_key(n, i): stats[n].X for n in lins})
        chunks = run_block(block, chunks)
    assert list(st.x_sq) == list(by_block) == published_keys(model)
    for k, x in by_block.items():
        assert x.shape == (1, model_linears(model)[k].in_features)
        assert torch.equal(st.x_sq[k], x), k
        assert torch.equal(searched[k].X, x), k
    with_grads = S.collect_stats(model, calib[:3], gradients=True, activations=True)
    G = compute_gradients(model, calib[:3])
    assert list(with_grads.grad_mean) == list(G)
    for k, g16 in G.items():
        torch.testing.assert_close(with_grads.G(k), g16.float(), rtol=1e-3, atol=1e-5)
        assert with_grads.G(k).dtype == torch.float32


def test_per_window_taylor_statistics_match_a_direct_computation(tiny, calib):
    n = 3
    st = S.collect_stats(tiny.model, calib[:n], gradients=True, activations=False)
    weights = {k: lin.weight for k, lin in model_linears(tiny.model).items()}
    for w in tiny.model.parameters():
        w.requires_grad_(False)
    total = {k: torch.zeros_like(w) for k, w in weights.items()}
    squares = {k: torch.zeros_like(w) for k, w in weights.items()}
    for s in range(n):
        ids = calib[s : s + 1]
        for w in weights.values():
            w.requires_grad_(True)
        loss = tiny.model(input_ids=ids, labels=ids).loss
        grads = torch.autograd.grad(loss, list(weights.values()))
        for w in weights.values():
            w.requires_grad_(False)
        for k, g in zip(weights, grads, strict=True):
            total[k] += g
            squares[k] += g * g
    assert st.nsamples == n and set(st.grad_mean) == set(weights)
    for k in weights:
        assert st.grad_mean[k].dtype == st.grad_sq_mean[k].dtype == torch.float32
        assert torch.equal(st.grad_mean[k], total[k] / n), k
        torch.testing.assert_close(st.grad_sq_mean[k], squares[k] / n, rtol=1e-6, atol=0)
        # the metric language's G = sqrt(sum_s (100 g_s)^2), unrounded
        torch.testing.assert_close(st.G(k), 100 * squares[k].sqrt(), rtol=1e-5, atol=0)


def test_gradient_pass_restores_the_model(tiny, calib):
    frozen = tiny.model.model.embed_tokens.weight
    frozen.requires_grad_(False)
    gs = gradient_stats(tiny.model, calib[:1], first_moment=True)
    assert gs.windows == 1 and set(gs.sum) == set(gs.sq_sum) == set(model_linears(tiny.model))
    assert not frozen.requires_grad
    assert all(p.requires_grad for n, p in tiny.model.named_parameters() if "embed_tokens" not in n)
    assert all(p.grad is None for p in tiny.model.parameters())


def test_gradient_pass_refuses_a_collector_that_stops_early(tiny, calib):
    with pytest.raises(ValueError, match="loss"):
        gradient_stats(tiny.model, calib[:1], collector=StatsCollector({}, False, stop_early=True))


def test_linears_reading_one_input_share_their_statistics(tiny_lm, calib):
    block = decoder_blocks(tiny_lm.model)[0]
    lins = find_linears(block)
    stats = run_block_collecting(block, lins, capture_block_inputs(tiny_lm.model, calib, 3), True)
    assert stats["self_attn.q_proj"] is stats["self_attn.k_proj"] is stats["self_attn.v_proj"]
    assert stats["mlp.gate_proj"] is stats["mlp.up_proj"]
    distinct = {id(stats[n]) for n in ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj")}
    assert len(distinct | {id(stats["mlp.down_proj"])}) == 4
    assert stats["self_attn.q_proj"].tokens == 6 * 48


@pytest.mark.parametrize(
    "content,says",
    [
        (b"", "the file is empty"),
        (bytes(range(256)) * 20, "5,120 bytes that are not a torch.save archive"),
        ("truncated", "a damaged or truncated torch.save archive: PytorchStreamReader failed"),
    ],
)
def test_a_damaged_gradient_file_is_a_short_clear_error(tmp_path, content, says, capsys):
    from pzshell.cli import main

    bad = tmp_path / "g.pth"
    if content == "truncated":
        torch.save({"x_layer_0": torch.zeros(64, 64, dtype=torch.float16)}, bad)
        bad.write_bytes(bad.read_bytes()[:2000])
    else:
        bad.write_bytes(content)
    argv = ["prune", "--model", "tiny", "--prune_method", "pruner-zero", "--gradient_path"]
    assert main([*argv, str(bad), "--nsamples", "2", "--seqlen", "32", "--eval", "none"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{bad}: not a gradient file" in err and says in err, err
    assert "issue" not in err and "weights_only" not in err and len(err) < 400
