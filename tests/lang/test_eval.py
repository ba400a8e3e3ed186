"""Evaluation semantics of every operator, checked by hand against docs/language.md."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pzshell.lang import DegenerateMetric, MetricError, compile_metric, evaluate, parse
from pzshell.lang.ops import OPS

from .conftest import make_inputs


def ev(text, W, G=None, X=None, **kw):
    return evaluate(parse(text), W, G, X, check=False, **kw)


@pytest.fixture
def wgx():
    return make_inputs(0)


def test_every_operator_is_covered_here():
    covered = {
        "add",
        "sub",
        "mul",
        "div",
        "sqr",
        "pow",
        "neg",
        "abs",
        "log",
        "exp",
        "sqrt",
        "tanh",
        "skp",
        "mms",
        "zsn",
        "rown",
        "coln",
    }
    assert covered == set(OPS)


def test_terminals(wgx):
    W, G, X = wgx
    torch.testing.assert_close(ev("W", W), W.abs(), rtol=0, atol=0)  # W is |w|
    torch.testing.assert_close(ev("G", W, G), G, rtol=0, atol=0)
    torch.testing.assert_close(ev("X", W, X=X), X.expand_as(W), rtol=0, atol=0)
    torch.testing.assert_close(ev("X", W, X=X.reshape(-1)), X.expand_as(W))  # (in,) accepted


def test_elementwise_binary_broadcast(wgx):
    W, G, X = wgx
    A = W.abs()
    torch.testing.assert_close(ev("W + X", W, X=X), A + X, rtol=0, atol=0)
    torch.testing.assert_close(ev("W - G", W, G), A - G, rtol=0, atol=0)
    torch.testing.assert_close(ev("W * X", W, X=X), A * X, rtol=0, atol=0)


def test_div_uses_the_norm_of_the_whole_broadcast_second_operand(wgx):
    W, G, X = wgx
    A = W.abs()
    torch.testing.assert_close(ev("W / G", W, G), A / torch.sqrt((G * G).sum()))
    # X is (1, in); it is broadcast to (out, in) before the norm: sqrt(out) times its own norm
    got = ev("W / X", W, X=X)
    torch.testing.assert_close(got, A / torch.linalg.vector_norm(X.expand_as(W)))
    assert not torch.allclose(got, A / torch.linalg.vector_norm(X))
    # two (1, in) operands: nothing to broadcast, the norm is over `in` entries only
    torch.testing.assert_close(ev("X / X", W, X=X), (X / torch.linalg.vector_norm(X)).expand_as(W))
    # a constant is a full (out, in) tensor
    assert ev("1 / 2", W).flatten()[0].item() == pytest.approx(1 / (2 * math.sqrt(W.numel())))


def test_sqr_and_pow_are_the_same_square(wgx):
    W, G, _ = wgx
    torch.testing.assert_close(ev("sqr(W - G)", W, G), (W.abs() - G) ** 2, rtol=0, atol=0)
    assert torch.equal(ev("pow(W - G)", W, G), ev("sqr(W - G)", W, G))


def test_neg_abs_skp_tanh(wgx):
    W, G, _ = wgx
    D = W.abs() - G
    assert torch.equal(ev("neg(W - G)", W, G), -D)
    assert torch.equal(ev("abs(W - G)", W, G), D.abs())
    assert torch.equal(ev("skp(W - G)", W, G), D)
    torch.testing.assert_close(ev("tanh(W - G)", W, G), torch.tanh(D))


def test_log_is_protected(wgx):
    W, G, _ = wgx
    D = W.abs() - G
    torch.testing.assert_close(ev("log(W - G)", W, G), torch.log(D.abs() + 0.001))
    assert ev("log(0)", W).flatten()[0].item() == pytest.approx(math.log(0.001), rel=1e-6)


def test_exp_clamps_at_100(wgx):
    W, _, _ = wgx
    big = ev("exp(W * 1000)", W, dtype=torch.float64)
    # every weight above 0.1 is clamped to exp(100)
    assert torch.all(big[W.abs() > 0.1] == math.exp(100))
    torch.testing.assert_close(ev("exp(W)", W), torch.exp(W.abs()))
    # in fp32 exp(100) overflows: the reference code has the same behaviour
    assert torch.isinf(ev("exp(100)", W)).all()


def test_sqrt_is_of_the_absolute_value(wgx):
    W, G, _ = wgx
    D = W.abs() - G
    torch.testing.assert_close(ev("sqrt(W - G)", W, G), torch.sqrt(D.abs()))
    assert ev("sqrt(-4)", W).flatten()[0].item() == 2.0


def test_mms_and_zsn_are_whole_tensor(wgx):
    W, G, _ = wgx
    A = W.abs()
    torch.testing.assert_close(ev("mms(W)", W), (A - A.min()) / (A.max() - A.min()))
    got = ev("zsn(W)", W)
    torch.testing.assert_close(got, (A - A.mean()) / A.std())  # unbiased std, whole tensor
    rows = (A - A.mean(1, keepdim=True)) / A.std(1, keepdim=True)
    assert not torch.allclose(got, rows)
    assert ev("mms(W)", W).min().item() == 0.0 and ev("mms(W)", W).max().item() == 1.0


def test_zsn_sees_the_shape_of_its_operand(wgx):
    """(1, in) X has `in` entries; X + 0 is broadcast to (out, in): the unbiased std differs."""
    W, _, X = wgx
    a, b = ev("zsn(X)", W, X=X), ev("zsn(X + 0)", W, X=X)
    n, m = X.numel(), W.numel()
    torch.testing.assert_close(b, a * math.sqrt((m - 1) / (n - 1)) / math.sqrt(m / n))


def test_rown_and_coln(wgx):
    W, G, _ = wgx
    D = W.abs() - G
    torch.testing.assert_close(ev("rown(W - G)", W, G), D / D.abs().sum(1, keepdim=True))
    torch.testing.assert_close(ev("coln(W - G)", W, G), D / D.abs().sum(0, keepdim=True))
    torch.testing.assert_close(ev("rown(W)", W).abs().sum(1), torch.ones(W.shape[0]))


def test_constants_are_full_tensors(wgx):
    W, _, X = wgx
    out = ev("X + 0", W, X=X)
    assert out.shape == W.shape
    assert torch.equal(ev("2.5", W), torch.full(W.shape, 2.5))


def test_output_is_fp32_with_the_weight_shape():
    W, G, X = make_inputs(1, 4, 16, dtype=torch.float16)
    s = evaluate(parse("W * sqrt(X) + G"), W, G, X)
    assert s.dtype == torch.float32 and s.shape == W.shape
    s = evaluate(parse("sqrt(X)"), W, X=X, check=False)
    assert s.dtype == torch.float32 and s.shape == W.shape


def test_the_published_best_tree(wgx):
    W, G, _ = wgx
    A = W.abs()
    expected = (A * A).abs() * (G - G.min()) / (G.max() - G.min())
    torch.testing.assert_close(evaluate(parse("abs(W*W)*mms(G)"), W, G), expected)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("mms(0 * W)", "NaN"),
        ("W / (G - G)", "infinite"),  # a zero norm: x / 0
        ("exp(W * 1000)", "infinite"),
        ("W - W", "all scores equal 0"),
        ("3", "all scores equal 3"),
        ("X - X + 1", "all scores equal 1"),
    ],
)
def test_degenerate_metrics_are_detected_with_a_reason(wgx, text, reason):
    W, G, X = wgx
    with pytest.raises(DegenerateMetric, match=reason):
        evaluate(parse(text), W, G, X)
    evaluate(parse(text), W, G, X, check=False)  # the raw scores are still available


def test_missing_and_misshapen_statistics(wgx):
    W, G, X = wgx
    with pytest.raises(MetricError, match="needs G, X"):
        evaluate(parse("W * G * X"), W)
    with pytest.raises(MetricError, match="expected \\(8, 32\\)"):
        evaluate(parse("W * G"), W, G[:, :4])
    with pytest.raises(MetricError, match="must be a matrix"):
        evaluate(parse("W"), W[0])


def test_compile_metric(wgx):
    W, G, X = wgx
    f = compile_metric(parse("W * sqrt(X)"))
    assert f.terminals == {"W", "X"}
    torch.testing.assert_close(f(W, G, X), W.abs() * X.sqrt())


def test_rows_give_the_whole_matrix_scores_of_those_rows():
    # every operator, the row-local ones on the rows alone and the column/whole-tensor ones
    # (coln, mms, zsn, div) from whole-matrix operands: the same values, bit for bit
    import random

    from pzshell.lang.random_trees import random_tree

    W, G, X = make_inputs(3, out=16, inp=24)
    rows = torch.tensor([1, 4, 5, 11, 15])
    rng = random.Random(0)
    ops = sorted(OPS)
    seen_whole = set()
    for _ in range(300):
        tree = random_tree(rng, 5, ops=ops, p_const=0.2)
        whole = evaluate(tree, W, G, X, check=False)
        cut = evaluate(tree, W, G, X, rows=rows, check=False)
        assert cut.shape == (5, 24)
        assert torch.equal(torch.nan_to_num(cut), torch.nan_to_num(whole[rows])), str(tree)
        seen_whole |= {n.data for _, n in tree.walk() if n.is_op and not OPS[n.data].elementwise}
    assert {"coln", "rown", "mms", "zsn", "div"} <= seen_whole


def test_a_repeated_subtree_is_computed_once_with_the_same_value(wgx, monkeypatch):
    W, G, X = wgx
    calls = []
    real = OPS["coln"].torch_fn
    spy = dataclasses.replace(OPS["coln"], torch_fn=lambda x: calls.append(1) or real(x))
    monkeypatch.setitem(OPS, "coln", spy)
    got = ev("sqrt(X) * (W - coln(W) - coln(W))", W, G, X)
    assert len(calls) == 1
    want = X.sqrt() * (W.abs() - real(W.abs()) - real(W.abs()))
    assert torch.allclose(got, want)


def test_rows_scores_are_checked_for_degeneracy(wgx):
    W, G, X = wgx
    with pytest.raises(DegenerateMetric, match="all scores equal"):
        evaluate(parse("coln(W) - coln(W)"), W, G, X, rows=torch.tensor([0, 2]))
    W = W.clone()
    W[2] = float("nan")  # only a row outside the cut is broken: the cut is fine
    evaluate(parse("W * sqrt(X)"), W, G, X, rows=torch.tensor([0, 1]))
    with pytest.raises(DegenerateMetric, match="NaN"):
        evaluate(parse("W * sqrt(X)"), W, G, X, rows=torch.tensor([0, 2]))
