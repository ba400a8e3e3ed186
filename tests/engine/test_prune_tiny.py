"""The layer-sequential driver, gradients, perplexity and the CLI on the in-memory `tiny` model."""

from __future__ import annotations

import math

import pytest
import torch

from pzshell.cli import main
from pzshell.data import calibration_windows, eval_windows, load_text
from pzshell.engine.calib import capture_block_inputs, run_block, run_block_collecting
from pzshell.engine.masks import row_mask
from pzshell.engine.prune import PruneConfig, PruneError, prune_model
from pzshell.engine.stats import GradientError, compute_gradients, load_gradients, save_gradients
from pzshell.evaluate import perplexity
from pzshell.lang import evaluate, parse
from pzshell.models import build_tiny, count_block_params, decoder_blocks, find_linears, load_model


@pytest.fixture(scope="module")
def calib(tiny_lm):
    return calibration_windows(tiny_lm.tokenizer, load_text("builtin", role="calib"), 6, 48, 0)


@pytest.fixture(scope="module")
def evalw(tiny_lm):
    return eval_windows(tiny_lm.tokenizer, load_text("builtin"), 64, 3)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("stype", ["unstructured", "2:4", "4:8", "3:8"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_exact_sparsity(tiny, calib, method, stype):
    res = prune_model(tiny.model, PruneConfig(method, 0.5, stype), calib)
    n, m = (0, 0) if stype == "unstructured" else map(int, stype.split(":"))
    for layer in find_linears_all(tiny.model):
        w = layer.weight
        if n:
            assert ((w == 0).reshape(w.shape[0], -1, m).sum(-1) >= n).all()
            assert res.sparsity == pytest.approx(n / m)
        elif method == "wanda":
            assert ((w == 0).sum(1) >= w.shape[1] // 2).all()
    zeros, total = count_block_params(tiny.model)
    assert zeros / total == pytest.approx(res.sparsity, abs=1e-3)


def find_linears_all(model):
    for block in decoder_blocks(model):
        yield from find_linears(block).values()


def test_wanda_equals_formula(tiny_lm, calib):
    outs = []
    for cfg in (
        PruneConfig("wanda", 0.5),
        PruneConfig("metric", 0.5, metric=parse("W*sqrt(X)")),
        PruneConfig("metric", 0.5, metric=parse("W^2*X")),  # the same pruning rule
    ):
        lm = build_tiny()
        prune_model(lm.model, cfg, calib)
        outs.append(weights(lm.model))
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k]), k
        assert torch.equal(outs[0][k], outs[2][k]), k


def test_layer_sequential_matches_manual_reference(calib):
    """Block 1's mask must come from inputs produced by the already-pruned block 0."""
    lm = build_tiny()
    prune_model(lm.model, PruneConfig("wanda", 0.5), calib)
    ref = build_tiny()
    blocks = decoder_blocks(ref.model)
    chunks = capture_block_inputs(ref.model, calib, 8)
    tree = parse("W*sqrt(X)")
    for block in blocks:
        lins = find_linears(block)
        stats = run_block_collecting(block, lins, chunks, want_h=False)
        with torch.no_grad():
            for name, lin in lins.items():
                mask = row_mask(evaluate(tree, lin.weight, X=stats[name].X), 0.5)
                lin.weight[mask] = 0
        chunks = run_block(block, chunks)
    got, want = weights(lm.model), weights(ref.model)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_statistics_pass_stops_at_the_last_linear_and_stays_exact(tiny_lm, calib):
    """From the second chunk on, the statistics pass ends at the last linear's input (down_proj's
    product is never needed); X and H still equal a direct computation over every token."""
    block = decoder_blocks(tiny_lm.model)[0]
    lins = find_linears(block)
    chunks = capture_block_inputs(tiny_lm.model, calib, 2)  # 3 chunks of 2 windows
    inputs: dict[str, list] = {n: [] for n in lins}
    ran = {n: 0 for n in lins}

    def grab(name):
        def hook(module, args, out):
            inputs[name].append(args[0].detach().reshape(-1, args[0].shape[-1]))

        return hook

    handles = [lin.register_forward_hook(grab(n)) for n, lin in lins.items()]
    run_block(block, chunks)  # the reference: plain forwards, every linear sees every token
    for h in handles:
        h.remove()

    def count(name):
        def hook(module, args, out):
            ran[name] += 1

        return hook

    counter = [lin.register_forward_hook(count(n)) for n, lin in lins.items()]
    stats = run_block_collecting(block, lins, chunks, want_h=True)
    for h in counter:
        h.remove()
    assert ran["mlp.down_proj"] == 1  # the first chunk only: it shows the order of the linears
    assert ran["mlp.up_proj"] == 3
    for name in lins:
        x = torch.cat(inputs[name]).float()
        assert stats[name].tokens == x.shape[0] == 6 * 48
        torch.testing.assert_close(stats[name].X, (x * x).mean(0, keepdim=True))
        torch.testing.assert_close(stats[name].hessian(), 2 * x.T @ x / x.shape[0])


def test_magnitude_needs_no_calibration(tiny):
    cfg = PruneConfig("magnitude", 0.3)
    assert not cfg.needs_calibration
    res = prune_model(tiny.model, cfg, None)
    assert res.sparsity == pytest.approx(0.3, abs=1e-3)


def test_metric_over_w_and_g_skips_calibration(tiny, calib):
    g = compute_gradients(tiny.model, calib[:2])
    cfg = PruneConfig("pruner-zero", 0.5)
    assert cfg.needs_gradients and not cfg.needs_calibration
    prune_model(tiny.model, cfg, None, gradients=g)
    zeros, total = count_block_params(tiny.model)
    assert zeros / total == pytest.approx(0.5)


def test_reconstruct_variant_keeps_mask_and_changes_weights(calib):
    a, b = build_tiny(), build_tiny()
    prune_model(a.model, PruneConfig("wanda", 0.5), calib)
    prune_model(b.model, PruneConfig("wanda", 0.5, reconstruct=True), calib)
    la = find_linears(decoder_blocks(a.model)[0])["self_attn.q_proj"].weight
    lb = find_linears(decoder_blocks(b.model)[0])["self_attn.q_proj"].weight
    assert torch.equal(la == 0, lb == 0)  # same mask in the first block
    assert not torch.equal(la, lb)  # but reconstructed surviving weights


def test_gradient_file_round_trip(tmp_path, tiny, calib):
    g = compute_gradients(tiny.model, calib[:3])
    assert "self_attn.q_proj_layer_0" in g and "mlp.down_proj_layer_1" in g
    assert all(v.dtype == torch.float16 for v in g.values())
    # G = sqrt(sum_s (100 grad_s)^2): check against a direct computation for one weight
    w = find_linears(decoder_blocks(tiny.model)[0])["mlp.up_proj"].weight
    acc = torch.zeros_like(w)
    for s in range(3):
        ids = calib[s : s + 1]
        w.requires_grad_(True)
        loss = tiny.model(input_ids=ids, labels=ids).loss
        (gr,) = torch.autograd.grad(loss, w)
        acc += (100 * gr) ** 2
        w.requires_grad_(False)
    torch.testing.assert_close(g["mlp.up_proj_layer_0"].float(), acc.sqrt(), rtol=2e-3, atol=1e-3)
    path = tmp_path / "grads.pth"
    save_gradients(g, path)
    # the original code reads it with a plain torch.load of the dict
    raw = torch.load(path, map_location="cpu")
    assert set(raw) == set(g)
    back = load_gradients(path, tiny.model)
    for k in g:
        assert torch.equal(back[k], g[k])


def test_gradient_file_from_other_model_is_rejected(tmp_path, calib):
    other = build_tiny(hidden_size=32, intermediate_size=64)
    g = {k: v for k, v in compute_gradients(other.model, calib[:1]).items()}
    path = tmp_path / "other.pth"
    save_gradients(g, path)
    with pytest.raises(GradientError, match="another model"):
        load_gradients(path, build_tiny().model)


def test_perplexity_matches_hf_loss(tiny_lm, evalw):
    r = perplexity(tiny_lm.model, evalw)
    losses = []
    with torch.no_grad():
        for w in evalw:
            losses.append(float(tiny_lm.model(input_ids=w[None], labels=w[None]).loss))
    assert r.ppl == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)
    assert r.tokens == evalw.numel() and r.predicted == evalw.shape[0] * (evalw.shape[1] - 1)


def test_save_and_reload_gives_same_perplexity(tmp_path, tiny, calib, evalw):
    prune_model(tiny.model, PruneConfig("wanda", 0.5), calib)
    ppl = perplexity(tiny.model, evalw).ppl
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    back = load_model(str(tmp_path), device="cpu")
    assert perplexity(back.model, evalw).ppl == pytest.approx(ppl, rel=1e-6)
    zeros, total = count_block_params(back.model)
    assert zeros / total == pytest.approx(0.5)


def test_degenerate_metric_is_reported(tiny, calib):
    from pzshell.lang import DegenerateMetric

    with pytest.raises(DegenerateMetric, match="block 0"):
        prune_model(tiny.model, PruneConfig("metric", 0.5, metric=parse("mms(X - X)")), calib)


def test_config_errors():
    with pytest.raises(PruneError, match=r"\[0, 1\)"):
        PruneConfig("wanda", 1.0)
    with pytest.raises(PruneError, match="unknown pruning method"):
        PruneConfig("bogus", 0.5)
    with pytest.raises(PruneError, match="needs a formula"):
        PruneConfig("metric", 0.5)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

FAST = ["--model", "tiny", "--nsamples", "2", "--seqlen", "32", "--eval-windows", "1"]


def test_cli_prune_writes_results(tmp_path, capsys):
    rc = main(["prune", *FAST, "--metric", "W*sqrt(X)", "--save", str(tmp_path / "run")])
    assert rc == 0
    import json

    res = json.loads((tmp_path / "run" / "results.json").read_text())
    keys = (
        "model method metric sparsity_ratio sparsity_type actual_sparsity nsamples seqlen seed "
        "calib_data eval_data eval_seqlen eval_tokens ppl prune_seconds peak_rss_mb"
    )
    for key in keys.split():
        assert key in res, key
    assert res["method"] == "metric" and res["metric"] == "W * sqrt(X)"
    assert res["actual_sparsity"] == pytest.approx(0.5)
    assert res["eval_tokens"] == 32 and math.isfinite(res["ppl"])


def test_cli_grad_then_prune_with_original_flags(tmp_path, capsys):
    gp = tmp_path / "g.pth"
    assert (
        main(["grad", "--model", "tiny", "--nsamples", "2", "--seqlen", "32", "-o", str(gp)]) == 0
    )
    flags = ["--prune_method", "pruner-zero", "--gradient_path", str(gp), "--sparsity_type", "2:4"]
    rc = main(["prune", *FAST, *flags])
    assert rc == 0


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--model", "no/such-model-dir/"], "no such model"),
        (["--sparsity_ratio", "1.0"], "[0, 1)"),
        (["--sparsity_ratio", "-0.1"], "[0, 1)"),
        (["--sparsity_type", "4:4"], "0 < N < M"),
        (["--sparsity_type", "2:5"], "multiple of 5"),
        (["--json_tree", "missing.json"], "no such file"),
        (["--calib", "missing.txt"], "not a file"),
        (["--metric", "W*sqrt(Y)"], "unknown name 'Y'"),
        (["--prune_method", "pruner-zero", "--gradient_path", "GRAD_OTHER"], "another model"),
        (["--prune_method", "bogus"], "unknown pruning method"),
    ],
)
def test_cli_bad_input_exit_2(tmp_path, capsys, extra, message, calib):
    if "GRAD_OTHER" in extra:
        other = build_tiny(hidden_size=32, intermediate_size=64)
        gp = tmp_path / "other.pth"
        save_gradients(compute_gradients(other.model, calib[:1]), gp)
        extra = [str(gp) if e == "GRAD_OTHER" else e for e in extra]
    args = ["prune", *FAST]
    if "--model" in extra:
        args = ["prune", "--nsamples", "2", "--seqlen", "32"]
    rc = main([*args, *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err.replace("\n", " ")
    assert "Traceback" not in err


def test_cli_gradient_path_is_created_when_missing(tmp_path):
    gp = tmp_path / "new" / "g.pth"
    assert main(["prune", *FAST, "--prune_method", "pruner-zero", "--gradient_path", str(gp)]) == 0
    assert gp.exists()  # computed from the calibration windows and saved for the next run
    assert set(load_gradients(gp)) >= {"self_attn.q_proj_layer_0", "mlp.down_proj_layer_1"}
