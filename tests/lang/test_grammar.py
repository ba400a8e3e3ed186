"""Grammar, printers and the Pruner-Zero JSON interchange."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from lark.grammar import NonTerminal

from pzshell.lang import Node, from_json, load_metric, parse, to_infix, to_json, to_latex
from pzshell.lang.library import shipped_tree_names, shipped_tree_path
from pzshell.lang.ops import OPS, PUBLISHED
from pzshell.lang.parse import _ToTree, parser
from pzshell.lang.random_trees import random_tree
from pzshell.lang.tree import EXTENDED_MARK, to_json_obj
from pzshell.paths import trees_dir

from .conftest import trees


def N(data, *children):  # noqa: N802
    return Node(data, tuple(children))


W, G, X = Node("W"), Node("G"), Node("X")


def test_every_grammar_rule_has_a_handler():
    """Like blark's test_check_unhandled_rules: a rule the transformer does not handle would
    leave a raw Lark Tree inside a Node."""
    needed = set()
    for r in parser().rules:
        if r.alias:
            needed.add(r.alias)
            continue
        if r.origin.name.startswith("_"):
            continue  # _rule (and Lark's own __x_star_0 for repetitions) is inlined
        kept = [s for s in r.expansion if not getattr(s, "filter_out", False)]
        if r.options.expand1 and len(kept) == 1:
            continue  # ?rule with a single child is inlined by Lark
        needed.add(r.origin.name)
    handled = {name for name in dir(_ToTree) if not name.startswith("_")}
    assert needed, "no rules found"
    assert needed <= handled, f"rules without a handler: {sorted(needed - handled)}"
    # and the handlers are not stale: each names a rule or an alias
    names = {r.alias or r.origin.name for r in parser().rules} | {
        s.name for r in parser().rules for s in r.expansion if isinstance(s, NonTerminal)
    }
    own = {n for n in vars(_ToTree) if not n.startswith("_")}
    assert own <= names, f"handlers for no rule: {sorted(own - names)}"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("W", W),
        ("abs(W*W)*mms(G)", N("mul", N("abs", N("mul", W, W)), N("mms", G))),
        ("W + G * X", N("add", W, N("mul", G, X))),
        ("(W + G) * X", N("mul", N("add", W, G), X)),
        ("W - G - X", N("sub", N("sub", W, G), X)),
        ("W / G", N("div", W, G)),
        ("-W", N("neg", W)),
        ("-W^2", N("neg", N("sqr", W))),
        ("(-W)^2", N("sqr", N("neg", W))),
        ("W**2", N("sqr", W)),
        ("W^0.5", N("sqrt", W)),
        ("pow(W)", N("pow", W)),
        ("-2", Node("-2")),
        ("neg(2)", N("neg", Node("2"))),
        ("--W", N("neg", N("neg", W))),
        ("2.50 * W", N("mul", Node("2.5"), W)),
        ("1e-3 + W", N("add", Node("0.001"), W)),
        ("sub(W, G)", N("sub", W, G)),
        ("  W\t*\nG ", N("mul", W, G)),
        ("rown(W) + coln(W)", N("add", N("rown", W), N("coln", W))),
    ],
)
def test_parse(text, expected):
    assert parse(text) == expected


FORMULAS = [
    "W",
    "abs(W * W) * mms(G)",
    "W * sqrt(X)",
    "(rown(W) + coln(W)) * sqrt(sqrt(X))",
    "-2 * W",
    "W * -2",
    "W - -2",
    "neg(2)",
    "neg(-2)",
    "-neg(2)",
    "(-2)^2",
    "sqr(neg(2))",
    "-(W^2)",
    "(-W)^2",
    "W / (G / X)",
    "(W / G) / X",
    "W / G / X",
    "W - (G - X)",
    "W - (G + X)",
    "-(W + G)",
    "--W",
    "1e-07 * W",
    "1e+20 + W",
    "0.1 + 0.2",
    "tanh(exp(log(zsn(skp(pow(W))))))",
    "div(sub(W, G), mul(X, add(G, W)))",
]


@pytest.mark.parametrize("text", FORMULAS)
def test_text_round_trip(text):
    t = parse(text)
    printed = to_infix(t)
    assert parse(printed) == t
    assert to_infix(parse(printed)) == printed


@given(trees())
def test_text_round_trip_random(t):
    assert parse(to_infix(t)) == t


@given(trees())
def test_json_round_trip_random(t):
    assert from_json(to_json(t)) == t
    assert from_json(json.dumps(to_json_obj(t, mark_extended=False))) == t


def test_gp_random_trees_round_trip():
    rng = random.Random(1)
    for _ in range(200):
        t = random_tree(rng, 6, rng.choice(["grow", "full"]), ops=tuple(OPS), p_const=0.2)
        assert parse(to_infix(t)) == t
        assert from_json(to_json(t)) == t


def test_best_tree_loads_and_saves_back_byte_for_byte():
    path = shipped_tree_path("pruner_zero")
    raw = path.read_text(encoding="utf-8")
    assert not raw.endswith("\n")  # json.dump(indent=4) as in GPTree.save_tree
    t = load_metric(str(path))
    assert t == parse("abs(W*W)*mms(G)")
    assert to_json(t) == raw


@pytest.mark.parametrize("name", ["magnitude", "wanda", "pruner_zero", "ria"])
def test_shipped_trees_save_back_identically(name):
    raw = shipped_tree_path(name).read_text(encoding="utf-8")
    assert to_json(from_json(raw)) == raw


def test_extended_trees_carry_the_marker():
    ria = load_metric("ria")
    obj = json.loads(shipped_tree_path("ria").read_text())
    assert obj[EXTENDED_MARK]["extended_ops"] == ["coln", "rown"]
    assert to_json_obj(ria)[EXTENDED_MARK]["requires"] == "pzshell"
    # the marker is information, not a requirement: the same tree loads without it
    del obj[EXTENDED_MARK]
    assert from_json(json.dumps(obj)) == ria


def test_published_trees_have_no_marker_and_load_without_it():
    for name in shipped_tree_names():
        t = load_metric(name)
        if not t.uses_extended and not t.has_constants:
            assert EXTENDED_MARK not in to_json_obj(t)
            assert all(n.data in PUBLISHED or n.is_terminal for _, n in t.walk())


def test_constants_are_marked_because_the_reference_loader_rejects_them():
    t = parse("2 * W")
    assert not t.uses_extended and t.needs_pzshell
    assert to_json_obj(t)[EXTENDED_MARK]["constants"] == ["2"]
    assert from_json(to_json(t)) == t


def test_json_accepts_numeric_labels_and_ignores_unknown_keys():
    t = from_json('{"data": "mul", "left": {"data": 2}, "right": {"data": "W"}, "note": 1}')
    assert t == N("mul", Node("2"), W)
    assert from_json('{"data": "2.0"}') == Node("2")


def test_all_shipped_trees_found():
    assert set(shipped_tree_names()) >= {"magnitude", "wanda", "pruner_zero", "ria"}
    assert (trees_dir() / "wanda.json").is_file()


@pytest.mark.parametrize(
    "text, latex",
    [
        ("W * sqrt(X)", r"W \cdot \sqrt{\left|X\right|}"),
        ("W - -2", r"W - \left(-2\right)"),
        ("W - (G - X)", r"W - \left(G - X\right)"),
        ("-(W + G)", r"-\left(W + G\right)"),
        ("(W + G) * X", r"\left(W + G\right) \cdot X"),
        ("log(W)", r"\log\left(\left|W\right| + 10^{-3}\right)"),
        ("W / G", r"\frac{W}{\lVert G \rVert_2}"),
        ("(-W)^2", r"\left(-W\right)^{2}"),
    ],
)
def test_latex(text, latex):
    assert to_latex(parse(text)) == latex


def test_node_measures():
    t = parse("abs(W*W)*mms(G)")
    assert (t.size, t.depth, t.terminals) == (7, 4, frozenset({"W", "G"}))
    assert [p for p, _ in t.walk()] == [
        "",
        "left",
        "left.left",
        "left.left.left",
        "left.left.right",
        "right",
        "right.left",
    ]


def test_infix_forms_and_precedence_come_from_the_registry():
    """Every operator with an infix symbol parses from it, and two infix operators group by
    their registered precedence (the tighter one first; equal ones to the left)."""
    infix = [op for op in OPS.values() if op.infix]
    assert {op.name for op in infix} == {"add", "sub", "mul", "div"}
    for a in infix:
        assert parse(f"W {a.infix} G") == N(a.name, W, G)
        for b in infix:
            got = parse(f"W {a.infix} G {b.infix} X")
            if b.prec > a.prec:
                assert got == N(a.name, W, N(b.name, G, X))
            else:
                assert got == N(b.name, N(a.name, W, G), X)
            assert parse(to_infix(got)) == got
    for op in OPS.values():
        if op.exponent is not None:
            assert parse(f"W^{op.exponent}") == N(op.name, W)
        if op.prefix:
            assert parse(f"{op.prefix}W") == N(op.name, W)


def test_the_extended_terminal_s_parses_evaluates_and_is_marked():
    """``S`` (SparseGPT's column curvature, one value per input column) is a leaf like ``X``:
    it parses, broadcasts over the rows, is refused when not given, and a tree that reads it is
    marked as needing pzshell (the published loader knows only W, G, X)."""
    import torch

    from pzshell.lang import MetricError, evaluate
    from pzshell.lang.algebra import canonical, nonneg, row_shaped

    t = parse("W^2 * S")
    assert t.terminals == {"W", "S"} and t.uses_extended and t.needs_pzshell
    obj = to_json_obj(t)
    assert obj[EXTENDED_MARK]["extended_terminals"] == ["S"]
    assert obj[EXTENDED_MARK]["extended_ops"] == []
    assert from_json(to_json(t)) == t
    W, S = torch.randn(3, 4), torch.rand(4)
    torch.testing.assert_close(evaluate(t, W, S=S), W**2 * S.reshape(1, 4))
    with pytest.raises(MetricError, match="needs S"):
        evaluate(t, W)
    with pytest.raises(MetricError, match="statistic S has shape"):
        evaluate(t, W, S=torch.rand(5))
    assert row_shaped(parse("sqrt(S) * X")) and nonneg(parse("S"))
    assert canonical(t).key == canonical(parse("W * sqrt(S)")).key
    assert canonical(t).key != canonical(parse("W^2 * X")).key
    assert EXTENDED_MARK not in to_json_obj(parse("W^2 * X"))
