"""Opposing Operation Simplification: every rule proven numerically, and on random trees."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from pzshell.lang import degenerate_reason, evaluate, parse, to_infix
from pzshell.lang.algebra import KEPT, RULES, explain, nonneg, row_shaped, simplify
from pzshell.lang.ops import OPS
from pzshell.lang.rewrite import _measure

from .conftest import make_inputs, trees

# Formulas on which each rule fires at the root. Signed sub-expressions (W - G, zsn(W)) make
# the sign-sensitive rules meaningful: W, G, X alone are non-negative.
EXAMPLES: dict[str, list[str]] = {
    "fold_constants": [
        "sqr(3)",
        "log(0.1)",
        "exp(2)",
        "tanh(-1)",
        "0.1 + 0.2",
        "neg(2)",
        "sqrt(-2)",
        "abs(-0.5)",
        "pow(1.5)",
        "skp(7)",
        "3 * 0.1",
        "1 - 0.3",
    ],
    "skip": ["skp(W - G)", "skp(X)"],
    "pow_is_sqr": ["pow(W - G)", "pow(X)"],
    "double_neg": ["neg(neg(W - G))", "--X"],
    "neg_sub": ["neg(W - G)", "-(X - X)"],
    "self_sub": ["W * G - W * G", "zsn(W) - zsn(W)"],
    "add_neg": ["W + neg(G)", "neg(W) + G", "X + -X"],
    "sub_neg": ["W - neg(G)", "X - -X"],
    "mul_neg_neg": ["neg(W) * neg(G - X)"],
    "self_mul": ["(W - G) * (W - G)", "X * X"],
    "add_zero": ["(W - G) + 0", "0 + W", "G - 0"],
    "zero_sub": ["0 - W", "0 - zsn(G)"],
    "mul_unit": ["W * 1", "1 * G", "(W - G) * -1", "-1 * zsn(W)"],
    "mul_zero": ["W * 0", "0 * zsn(G)", "X * 0"],
    "nested_const_factor": ["2 * (3 * W)", "(W * 0.5) * 3", "1 + (W + 2)", "(2 + X) + 0.1"],
    "abs_nonneg": [
        "abs(W)",
        "abs(abs(W - G))",
        "abs(sqrt(W - G))",
        "abs(mms(W - G))",
        "abs(exp(W - G))",
        "abs(W * G + X)",
        "abs(tanh(X))",
        "abs(W / G)",
        "abs(rown(W))",
        "abs(sqr(W - G))",
    ],
    "abs_neg": ["abs(neg(W - G))"],
    "sqr_sign": ["sqr(neg(W - G))", "sqr(abs(W - G))"],
    "even_arg": ["sqrt(abs(W - G))", "sqrt(neg(W - G))", "log(abs(W - G))", "log(neg(W - G))"],
    "sqrt_sqr": ["sqrt(sqr(W - G))", "sqrt(sqr(X))"],
    "sqr_sqrt": ["sqr(sqrt(W - G))", "sqr(sqrt(X))"],
    "exp_log": ["exp(log(W - G))", "exp(log(W))", "exp(log(zsn(G)))"],
    "mms_idempotent": ["mms(mms(W - G))", "mms(mms(X))"],
    "zsn_idempotent": ["zsn(zsn(W - G))", "zsn(zsn(X))"],
    "normalise_affine": [
        "mms(zsn(W - G))",
        "zsn(mms(W - G))",
        "mms((W - G) + 3)",
        "zsn(2 + W)",
        "mms(W - 5)",
        "zsn(W * 3)",
        "mms(0.5 * G)",
        "zsn(W / G)",
        "mms(W / X)",
        "zsn(mms(X))",
    ],
    "rowcol_idempotent": ["rown(rown(W - G))", "coln(coln(W - G))", "coln(coln(X))"],
    "rowcol_scale": ["rown(2 * (W - G))", "coln((W - G) * 3)", "rown(W / G)", "coln(W / X)"],
    "div_sign": ["W / neg(G - X)", "W / abs(G - X)", "X / -X"],
}

RULE_BY_NAME = {r.name: r for r in RULES}


def scores(node, W, G, X, dtype=torch.float32):
    return evaluate(node, W, G, X, check=False, dtype=dtype)


def test_every_rule_has_examples_and_a_documented_reason():
    assert set(EXAMPLES) == set(RULE_BY_NAME)
    for r in RULES:
        assert r.exact in ("bitwise", "rounding")
        assert len(r.why) > 15, f"{r.name}: say why the rule holds"
        assert r.pattern
        assert all(op in OPS for op in r.ops)
    assert len({r.name for r in RULES}) == len(RULES)


@pytest.mark.parametrize(
    "name, text", [(name, text) for name, texts in EXAMPLES.items() for text in texts]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_rule_preserves_scores(name, text, seed):
    """The numeric proof of each rule: the rewrite scores every weight as the original does
    (bit for bit for "bitwise" rules), shape included."""
    rule = RULE_BY_NAME[name]
    before = parse(text)
    after = rule.fn(before)
    assert after is not None and after != before, f"{name} did not fire on {text}"
    assert row_shaped(after) == row_shaped(before)
    W, G, X = make_inputs(seed)
    a, b = scores(before, W, G, X), scores(after, W, G, X)
    if rule.exact == "bitwise":
        assert torch.equal(a, b) or (torch.isnan(a).all() and torch.isnan(b).all())
    else:
        torch.testing.assert_close(b, a, rtol=2e-5, atol=1e-6, equal_nan=True)
    # and the values are meaningful (not all NaN), so the comparison proves something
    assert torch.isfinite(a).any()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("abs(W*W)*mms(G)", "W^2 * mms(G)"),  # Pruner-Zero's best tree
        ("exp(log(W))", "W + 0.001"),
        ("exp(log(W - G))", "abs(W - G) + 0.001"),
        ("sqrt(sqr(W - G))", "abs(W - G)"),
        ("sqr(sqrt(W))", "W"),
        ("neg(neg(W))", "W"),
        ("W - W", "0"),
        ("skp(W) * skp(X)", "W * X"),
        ("abs(abs(W - G))", "abs(W - G)"),
        ("abs(neg(W - G))", "abs(G - W)"),  # neg_sub fires first
        ("sqr(neg(W))", "W^2"),
        ("sqr(abs(W - G))", "(W - G)^2"),
        ("pow(W) * X", "W^2 * X"),
        ("mms(mms(W))", "mms(W)"),
        ("zsn(zsn(W))", "zsn(W)"),
        ("mms(zsn(W))", "mms(W)"),
        ("zsn(mms(W))", "zsn(W)"),
        ("abs(W) * abs(sqrt(X))", "W * sqrt(X)"),
        ("mms(3 * W + 1)", "mms(W)"),
        ("W * (2 + 3)", "W * 5"),
        ("log(exp(W))", "log(exp(W))"),  # kept: not an identity
        ("W + (G - G)", "W"),
    ],
)
def test_simplify_examples(text, expected):
    assert to_infix(simplify(parse(text))) == expected


def test_shape_guard_keeps_rewrites_that_would_broadcast_X():
    """X - X is a (1, in) zero and X + 0 an (out, in) X: a whole-tensor statistic sees that."""
    W, G, X = make_inputs(0)
    for text in ("zsn(X + 0)", "exp(log(X))", "X - X", "coln(X * 1 + 0)", "0 - X", "-1 * X"):
        t = parse(text)
        s = simplify(t)
        assert row_shaped(s) == row_shaped(t)
        torch.testing.assert_close(scores(s, W, G, X), scores(t, W, G, X), equal_nan=True)
    # the guard is needed: the unguarded rewrite changes the scores
    assert not torch.allclose(
        scores(parse("zsn(X + 0)"), W, G, X), scores(parse("zsn(X)"), W, G, X)
    )


@pytest.mark.parametrize(
    "text, x",
    [("log(exp(W - G))", -10.0), ("div(W, 1)", None), ("mms(neg(W))", None)],
)
def test_kept_patterns_are_not_identities(text, x):
    W, G, X = make_inputs(0)
    t = parse(text)
    assert simplify(t) == t
    inner = t.children[0].children[0] if t.data == "log" else t.children[0]
    if x is not None:  # log(exp(x)) floors at log(0.001) for very negative x
        v = torch.full((2, 2), x)
        got = evaluate(t, v.abs(), v.abs() - v, None, check=False)  # W - G = v
        assert abs(got[0, 0].item() - x) > 3
    else:
        assert not torch.allclose(scores(t, W, G, X), scores(inner, W, G, X))
    assert any(k.pattern.startswith(text.split("(")[0]) for k in KEPT)


def test_nonneg_follows_the_registry_flags():
    for text, expected in [
        ("W", True),
        ("W - G", False),
        ("sqr(W - G)", True),
        ("log(W)", False),
        ("exp(W - G)", True),
        ("tanh(W)", True),
        ("tanh(W - G)", False),
        ("W / (G - X)", True),
        ("zsn(W)", False),
        ("mms(W - G)", True),
        ("-2", False),
        ("0", True),
        ("rown(W)", True),
    ]:
        assert nonneg(parse(text)) is expected, text


def test_explain_names_the_rules():
    steps = explain(parse("abs(W*W)*mms(G)"))
    assert [s[0] for s in steps] == ["self_mul", "abs_nonneg"]


def _undefined(t) -> bool:
    """True when t normalises a constant: ``zsn(c)`` and ``mms(c)`` are 0/0 in exact
    arithmetic, and what fp32 makes of them (NaN, or +-0.998 from the rounding of ``mean(c)``)
    depends on how ``c`` was computed. Folding ``681.738^2`` to ``464766.66`` inside ``zsn``
    flips that sign, so such a tree has no ground truth for the simplifier to preserve."""
    return any(
        n.is_op and n.data in ("zsn", "mms") and not n.children[0].terminals for _, n in t.walk()
    )


def _conditioned(t, W, G, X):
    """fp32 scores of t when they are finite, non-constant and not dominated by rounding."""
    if _undefined(t):
        return None
    a32 = scores(t, W, G, X)
    a64 = scores(t, W, G, X, torch.float64)
    if degenerate_reason(a32) or degenerate_reason(a64):
        return None
    scale = a64.abs().max()
    if not torch.all((a32.double() - a64).abs() <= 1e-4 * (a64.abs() + 1e-3 * scale)):
        return None  # ill-conditioned (zsn of a near-constant, x + y - y, ...): no ground truth
    return a64


def test_normalising_a_constant_has_no_ground_truth():
    # The Hypothesis example that failed a fresh clone: fp32 gives -0.998 for one form of the
    # constant and +0.998 for the other, both rounding noise of 0/0.
    t = parse("W + zsn(681.738^2)")
    assert _undefined(t) and _undefined(parse("mms(2 * 3) * W"))
    assert not _undefined(parse("W + zsn(W * 3)")) and not _undefined(parse("coln(3) * W"))
    assert _conditioned(t, *make_inputs(0)) is None


@given(t=trees(max_leaves=10), seed=st.integers(0, 2**16))
def test_simplify_preserves_scores_on_random_trees(t, seed):
    W, G, X = make_inputs(seed)
    truth = _conditioned(t, W, G, X)
    assume(truth is not None)
    s = simplify(t)
    got = scores(s, W, G, X).double()
    scale = truth.abs().max()
    assert torch.all((got - truth).abs() <= 2e-4 * (truth.abs() + 1e-3 * scale)), (
        f"{to_infix(t)} -> {to_infix(s)}"
    )


@given(t=trees(max_leaves=12))
def test_simplify_is_a_fixpoint_and_never_grows(t):
    s = simplify(t)
    assert simplify(s) == s
    assert _measure(s) <= _measure(t)
    assert row_shaped(s) == row_shaped(t)


def test_folded_constants_evaluate_bit_identically_on_cpu():
    W, G, X = make_inputs(2)
    for text in ("W * log(0.1)", "G + exp(2) * tanh(-1)", "X * sqrt(3) - 0.1 * 3", "W * pow(1.1)"):
        t = parse(text)
        s = simplify(t)
        assert s.size < t.size
        assert torch.equal(scores(s, W, G, X), scores(t, W, G, X)), text


def test_every_operator_has_a_sympy_form():
    from pzshell.lang.algebra import to_sympy

    for name, op in OPS.items():
        args = (parse("W - G"), parse("X"))[: op.arity]
        expr = to_sympy(parse(f"{name}({', '.join(to_infix(a) for a in args)})"))
        assert expr.free_symbols, name
    assert "Full" in str(to_sympy(parse("zsn(X + 0)"))) and "Full" not in str(
        to_sympy(parse("zsn(X)"))
    )
