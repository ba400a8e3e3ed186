"""Canonical rank form: formulas with one key prune the same weights."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
import torch
from hypothesis import assume, given, note
from hypothesis import strategies as st

from pzshell.lang import Node, degenerate_reason, evaluate, load_metric, parse, rank, to_infix
from pzshell.lang.algebra import canonical, equivalent_known, nonneg, simplify
from pzshell.lang.random_trees import random_tree

from .conftest import make_inputs, trees


def key(text: str) -> str:
    return canonical(parse(text)).key


SAME = [
    [
        "W * sqrt(X)",
        "W^2 * X",
        "sqrt(W^2 * X)",
        "pow(W) * X",
        "X * W^2",
        "2 * W * sqrt(X) + 5",
        "mms(W * sqrt(X))",
        "zsn(W^2 * X)",
        "log(W * sqrt(X))",
        "sqrt(W) * sqrt(sqrt(X))",
        "wanda",
        "(W * sqrt(X)) / G",
        "W * sqrt(X) + 1 / G",
        "-(-(W * sqrt(X)))",
        "exp(log(W * sqrt(X)))",
    ],
    [
        "W",
        "abs(W)",
        "mms(W)",
        "zsn(W)",
        "3 * W + 1",
        "W^2",
        "sqrt(W)",
        "log(W)",
        "W / G",
        "exp(log(W))",
        "magnitude",
        "W + W",
        "skp(W) - 0.5",
    ],
    [
        "abs(W*W)*mms(G)",
        "W^2 * mms(G)",
        "W * sqrt(mms(G))",
        "pruner_zero",
        "sqr(W^2) * mms(G)^2",
        "W * W * mms(2 * G + 1)",
        "mms(zsn(G)) * sqr(-W)",
    ],
    ["ria", "sqr((rown(W) + coln(W))^2) * X", "(coln(W) + rown(W)) * sqrt(sqrt(X))"],
    ["-W", "-mms(W)", "neg(3 * W + 1)", "-log(W)", "0 - sqrt(W)"],
    ["W - G", "2 * W - 2 * G", "-(G - W)", "W / X - G / X", "mms(W - G)"],
    ["(W - G)^2", "abs(W - G)", "sqrt(sqr(W - G))", "sqr(G - W)", "log(W - G)"],
    ["exp(W)", "exp(W)^2", "sqrt(exp(W))", "log(exp(W))"],
    ["X", "zsn(X)", "mms(X)", "X + 0", "X / X"],
    # W / X and X / (X + 0) both divide by the norm of X broadcast to (out, in)
    ["W + X", "W / X + X / (X + 0)", "(W + X) / G"],
    ["tanh(W)^2 * sqr(zsn(X)^2)", "tanh(W) * zsn(X)^2"],
]

DIFFERENT = [
    "W * X",
    "W * sqrt(X)",
    "W",
    "-W",
    "W - G",
    "G - W",
    "tanh(W)",
    "exp(W)",
    "rown(W)",
    "W * G",
    "W + G",
    "abs(W - G)",
    "mms(G)",
    "W * mms(G)",
    "W + X",
    "zsn(X) * W",
    "zsn(X + 0) * W",
    "coln(X) * W",
    "coln(X + 0) * W",
    "W / X + X / X",
]


@pytest.mark.parametrize("group", SAME, ids=lambda g: g[0])
def test_same_pruning_rule_same_key(group):
    keys = {text: canonical(load_metric(text)).key for text in group}
    assert len(set(keys.values())) == 1, keys


def test_different_pruning_rules_different_keys():
    keys = defaultdict(list)
    for text in DIFFERENT:
        keys[key(text)].append(text)
    assert all(len(v) == 1 for v in keys.values()), [v for v in keys.values() if len(v) > 1]


def test_exp_and_tanh_are_not_stripped():
    """They saturate in fp32 (tanh -> 1 above ~9, exp clamps at 100 and overflows above 88.7),
    creating ties the inner metric does not have: not the same masks in practice."""
    assert key("tanh(W)") != key("W")
    assert key("exp(W)") != key("W")
    W = torch.linspace(0, 20, 64).reshape(2, 32)
    assert len(torch.unique(torch.tanh(W))) < len(torch.unique(W))


def test_canonical_form_fields():
    c = canonical(parse("W^2 * X"))
    assert c.text == "W*sqrt(X)"
    assert len(c.key) == 16 and int(c.key, 16) >= 0
    assert c.fallback is None
    assert canonical(parse("-W")).text == "-W"


def test_equivalent_known():
    assert equivalent_known(parse("W^2 * X")) == "wanda"
    assert equivalent_known(parse("abs(W)*2")) == "magnitude"
    assert equivalent_known(parse("W^2 * mms(G)")) == "pruner_zero"
    assert equivalent_known(load_metric("ria")) == "ria"
    assert equivalent_known(parse("W * X")) is None


def test_structural_fallback_for_huge_trees():
    t = parse("W")
    for i in range(120):
        t = Node("add", (t, Node("mul", (Node(str(i % 7 + 2)), Node("G")))))
    t = Node("tanh", (t,))
    c = canonical(t)
    assert c.expr is None and "nodes" in c.fallback
    assert canonical(Node("tanh", (t.children[0],))).key == c.key  # same tree, same key
    assert c.key != key("tanh(W)")


def test_structural_fallback_when_sympy_fails(monkeypatch):
    def boom(node):
        raise TypeError("sympy internals")

    t = parse("W * tanh(G) + X")
    monkeypatch.setattr(rank, "to_sympy", boom)  # canonical looks it up in its own module
    rank.canonical.cache_clear()
    try:
        c = canonical(t)
        assert c.expr is None and "sympy failed" in c.fallback
        assert c.key == canonical(parse("skp(W * tanh(G) + X)")).key  # simplified first
    finally:
        rank.canonical.cache_clear()


GOLDEN = {
    "W * sqrt(X)": ("f2d7243c9508833b", "W*sqrt(X)"),
    "abs(W*W)*mms(G)": ("f78a3b2fdcb5cdab", "W*sqrt(Mms(G))"),
    "tanh(W - G) * zsn(X)": ("a880c09ef6ccb836", "-tanh(G - W)*Zsn(X)"),
    "log(exp(W) + G)": ("4b089bc46c5f7435", "G + exp(Cap(W))"),
    "ria": ("c03c08fc6620ef67", "X*(Coln(W) + Rown(W))**4"),
}


@pytest.mark.parametrize("formula", GOLDEN)
def test_keys_are_stable(formula):
    """Keys are stored in search logs and caches: they must not depend on the process (hash
    randomisation, evaluation order). A change here invalidates stored keys: do it on purpose."""
    c = canonical(load_metric(formula))
    assert (c.key, c.text) == GOLDEN[formula]


# ---------------------------------------------------------------------------------------------
# Property: equal keys => equal masks
# ---------------------------------------------------------------------------------------------

SPARSITIES = (0.2, 0.5, 0.7)


def _masks(node: Node, W, G, X) -> torch.Tensor | None:
    """Masks (True = pruned) per output row at each sparsity, per 2:4 block, and per layer,
    from float64 scores; None when the scores are degenerate or tie at a cut."""
    s = evaluate(node, W, G, X, check=False, dtype=torch.float64)
    if degenerate_reason(s):
        return None
    out = []
    # comparison groups: output rows, blocks of 4 consecutive inputs (2:4), the whole layer
    for grouped, fractions in (
        (s, SPARSITIES),
        (s.reshape(-1, 4), (0.5,)),
        (s.reshape(1, -1), (0.5,)),
    ):
        srt = grouped.sort(dim=1).values
        span = (srt[:, -1] - srt[:, 0]).abs()
        for f in fractions:
            k = int(f * grouped.shape[1])
            gap = srt[:, k] - srt[:, k - 1]
            if bool((gap <= 1e-9 * span + 1e-300).any()):
                return None  # a tie at the cut: either choice is a valid mask
            out.append((grouped <= srt[:, k - 1 : k]).reshape(-1))
    return torch.stack(out)


C = Node.const


def _transforms(t: Node) -> list[tuple[str, Node]]:
    """Rank-preserving maps of the whole metric."""
    out = [
        ("3*t+1", Node("add", (Node("mul", (C(3), t)), C(1)))),
        ("mms(t)", Node("mms", (t,))),
        ("zsn(t)", Node("zsn", (t,))),
        ("t/||G||", Node("div", (t, Node("G")))),
        ("t + 1/||W||", Node("add", (t, Node("div", (C(1), Node("W")))))),
        ("--t", Node("neg", (Node("neg", (t,)),))),
    ]
    if nonneg(t):
        out += [
            ("sqrt(t)", Node("sqrt", (t,))),
            ("t^2", Node("sqr", (t,))),
            ("log(t)", Node("log", (t,))),
            ("sqrt(t)*2", Node("mul", (Node("sqrt", (t,)), C(2)))),
        ]
    return out


@given(
    t=trees(max_leaves=8),
    seed=st.integers(0, 2**16),
    pick=st.integers(0, 9),
)
def test_equal_keys_give_equal_masks(t, seed, pick):
    W, G, X = make_inputs(seed, 8, 32, torch.float64)
    m = _masks(t, W, G, X)
    assume(m is not None)
    transforms = _transforms(t)
    name, u = transforms[pick % len(transforms)]
    note(f"t = {to_infix(t)}; u = {name} = {to_infix(u)}")
    ct, cu = canonical(t), canonical(u)
    note(f"keys {ct.key} {ct.text!r}  {cu.key} {cu.text!r}")
    # completeness: the canonical form sees through these maps
    assert cu.key == ct.key
    # soundness: same key, same masks
    mu = _masks(u, W, G, X)
    assume(mu is not None)
    assert torch.equal(m, mu)


def test_random_trees_sharing_a_key_share_masks():
    """Soundness beyond the transforms: group many GP trees by key and compare masks."""
    rng = random.Random(11)
    W, G, X = make_inputs(3, 8, 32, torch.float64)
    by_key: dict[str, list[tuple[Node, torch.Tensor]]] = defaultdict(list)
    for _ in range(250):
        t = random_tree(rng, rng.randint(2, 5), rng.choice(["grow", "full"]), p_const=0.1)
        m = _masks(t, W, G, X)
        if m is not None:
            by_key[canonical(t).key].append((t, m))
    shared = [v for v in by_key.values() if len(v) > 1]
    assert sum(len(v) - 1 for v in shared) > 30  # the check has something to check
    for group in shared:
        t0, m0 = group[0]
        for t, m in group[1:]:
            assert torch.equal(m, m0), f"{to_infix(t)} vs {to_infix(t0)}"


def test_simplified_tree_has_the_same_key():
    rng = random.Random(5)
    for _ in range(100):
        t = random_tree(rng, 5, p_const=0.1)
        assert canonical(simplify(t)).key == canonical(t).key


def test_every_constant_metric_has_one_key():
    # W * exp(-104) folds to 0 in fp32 (exp underflows below -103); an affine map of it folds to
    # another constant. Every constant ties every weight, so they are one candidate
    # (found by hypothesis: 'W * exp(-104)' against '3 * (W * exp(-104)) + 1').
    t = parse("W * exp(-104)")
    keys = {canonical(parse(f)).key for f in ("0", "1", "-2.5", "3 * (W * exp(-104)) + 1")}
    assert keys == {canonical(t).key}
    assert canonical(parse("W")).key != canonical(t).key
