"""Algebra on metric trees: Opposing Operation Simplification and the canonical rank form.

Two questions a search and a user ask about a formula:

* **Is there a simpler tree with the same scores?** :func:`simplify` rewrites the tree with the
  rules of :data:`RULES` (Pruner-Zero's Opposing Operation Simplification, non-negativity of
  ``W``/``G``/``X``, constant folding), bottom-up to a fixpoint. Every rule is *value
  preserving* under the protected semantics of the operators (``log`` adds 0.001, ``exp``
  clamps at 100, ``div`` divides by a whole-tensor norm ...): the simplified tree scores the
  same weights with the same values up to fp32 rounding. Patterns that look like identities but
  are not (``log(exp(x))``) are listed in :data:`KEPT` with the reason.
* **Does it prune the same weights as another formula?** Masks depend only on the order of the
  scores inside a comparison group, so strictly increasing maps of the whole metric do not
  matter. :func:`canonical` strips them from the sympy form of the simplified tree and hashes
  the rest: equal keys mean equal masks (in exact arithmetic; see :func:`canonical`).

Both work on the immutable :class:`~pzshell.lang.tree.Node` and are cached per node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from .errors import MetricError
from .ops import OPS
from .tree import Node, format_number, to_infix

# ---------------------------------------------------------------------------------------------
# Facts about subtrees: non-negativity (from the registry's flags) and shape
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=65536)
def nonneg(node: Node) -> bool:
    """Provably ``>= 0`` everywhere: W, G, X are, constants by value, operators by their flags."""
    if node.is_terminal:
        return True
    if node.is_const:
        return node.value >= 0
    return bool(OPS[node.data].nonneg(*(nonneg(c) for c in node.children)))


@lru_cache(maxsize=65536)
def row_shaped(node: Node) -> bool:
    """The subtree evaluates to a ``(1, in)`` tensor: every leaf is ``X``.

    ``W``, ``G`` and constants are ``(out, in)`` (the reference code builds constants with the
    weight's shape), and binary operators broadcast. The shape is visible to whole-tensor
    statistics (the unbiased std of ``zsn``, the column sums of ``coln``, the norm in ``div``),
    so a rewrite must never change it; the rule engine checks this for every rule.
    """
    if node.is_terminal:
        return node.data == "X"
    if node.is_const:
        return False
    return all(row_shaped(c) for c in node.children)


def _is(node: Node, value: float) -> bool:
    return node.is_const and node.value == value


def _pos_const(node: Node) -> bool:
    return node.is_const and node.value > 0


def _fp32_text(value: float) -> str:
    """Shortest decimal text that reads back as exactly this fp32 value."""
    return format_number(float(np.format_float_positional(np.float32(value), unique=True)))


# ---------------------------------------------------------------------------------------------
# The rule table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One rewrite: ``pattern`` names it, ``exact`` says how far values are preserved.

    ``exact`` is ``"bitwise"`` when fp32 evaluation gives identical bits, ``"rounding"`` when
    the identity holds in real arithmetic under the protected semantics and fp32 results differ
    only by rounding. The docstring of ``fn`` says why the rule holds.
    """

    name: str
    ops: tuple[str, ...]  # root operators the rule can match (empty: any operator)
    pattern: str
    exact: str
    fn: Callable[[Node], Node | None]

    @property
    def why(self) -> str:
        return " ".join((self.fn.__doc__ or "").split())


RULES: list[Rule] = []


def rule(name: str, ops: tuple[str, ...], pattern: str, exact: str):
    assert exact in ("bitwise", "rounding")

    def register(fn: Callable[[Node], Node | None]) -> Callable[[Node], Node | None]:
        RULES.append(Rule(name, ops, pattern, exact, fn))
        return fn

    return register


def N(data: str, *children: Node) -> Node:  # noqa: N802 (reads like a constructor)
    return Node(data, tuple(children))


_ZERO = Node("0")


@rule("fold_constants", (), "op(c1[, c2]) -> c", "rounding")
def _fold_constants(n: Node) -> Node | None:
    """An elementwise operator on constants is computed once with the operator's own torch
    function in fp32 (on a vector, like the metric's constant tensors) and stored as the
    shortest decimal that reads back as the same fp32 value: on the CPU evaluation is then
    bit-identical; another device's libm may differ by an ulp for log/exp/tanh. Whole-tensor
    operators (div, mms, zsn, rown, coln) are not folded: on a constant tensor their value
    depends on its shape (``div(1, 2)`` is ``1 / (2 sqrt(out*in))``) or is NaN (``mms(2)``), and
    non-finite results are left alone so the degenerate-metric check still sees them."""
    if n.data in ("div", "mms", "zsn", "rown", "coln"):
        return None
    if not all(c.is_const for c in n.children):
        return None
    args = [torch.full((64,), c.value, dtype=torch.float32) for c in n.children]
    with torch.no_grad():
        value = float(OPS[n.data].torch_fn(*args)[0])
    if not np.isfinite(value):
        return None
    return Node(_fp32_text(value))


@rule("skip", ("skp",), "skp(x) -> x", "bitwise")
def _skip(n: Node) -> Node | None:
    """``skp`` is the identity."""
    return n.children[0]


@rule("pow_is_sqr", ("pow",), "pow(x) -> sqr(x)", "bitwise")
def _pow_is_sqr(n: Node) -> Node | None:
    """``pow`` and ``sqr`` are two names of the same function ``x*x`` (same torch function in
    the registry), so one spelling is enough for everything downstream."""
    return N("sqr", n.children[0])


@rule("double_neg", ("neg",), "neg(neg(x)) -> x", "bitwise")
def _double_neg(n: Node) -> Node | None:
    """Negation only flips the sign bit."""
    (c,) = n.children
    return c.children[0] if c.data == "neg" else None


@rule("neg_sub", ("neg",), "neg(sub(x, y)) -> sub(y, x)", "bitwise")
def _neg_sub(n: Node) -> Node | None:
    """Round-to-nearest is symmetric, so ``-(x - y)`` and ``y - x`` round identically."""
    (c,) = n.children
    return N("sub", c.children[1], c.children[0]) if c.data == "sub" else None


@rule("self_sub", ("sub",), "sub(x, x) -> 0", "bitwise")
def _self_sub(n: Node) -> Node | None:
    """``x - x`` is exactly 0 for every finite ``x`` (an overflowing ``x`` makes the original
    NaN, i.e. degenerate, and the engine rejects it). The shape check keeps ``X - X`` (a
    ``(1, in)`` zero) as is."""
    x, y = n.children
    return _ZERO if x == y else None


@rule("add_neg", ("add",), "add(x, neg(y)) -> sub(x, y); add(neg(x), y) -> sub(y, x)", "bitwise")
def _add_neg(n: Node) -> Node | None:
    """IEEE subtraction is addition of the negation, and addition commutes exactly."""
    x, y = n.children
    if y.data == "neg":
        return N("sub", x, y.children[0])
    if x.data == "neg":
        return N("sub", y, x.children[0])
    return None


@rule("sub_neg", ("sub",), "sub(x, neg(y)) -> add(x, y)", "bitwise")
def _sub_neg(n: Node) -> Node | None:
    """IEEE ``x - (-y)`` is ``x + y``."""
    x, y = n.children
    return N("add", x, y.children[0]) if y.data == "neg" else None


@rule("mul_neg_neg", ("mul",), "mul(neg(x), neg(y)) -> mul(x, y)", "bitwise")
def _mul_neg_neg(n: Node) -> Node | None:
    """The sign of a product is the xor of the operands' signs; the magnitude is unchanged."""
    x, y = n.children
    if x.data == "neg" and y.data == "neg":
        return N("mul", x.children[0], y.children[0])
    return None


@rule("self_mul", ("mul",), "mul(x, x) -> sqr(x)", "bitwise")
def _self_mul(n: Node) -> Node | None:
    """``sqr`` is computed as ``x * x``."""
    x, y = n.children
    return N("sqr", x) if x == y else None


@rule("add_zero", ("add", "sub"), "add(x, 0), add(0, x), sub(x, 0) -> x", "bitwise")
def _add_zero(n: Node) -> Node | None:
    """Adding zero changes no finite value (only the sign of a zero, which ranks equal). The
    shape check keeps ``X + 0`` (broadcast to ``(out, in)``) as is."""
    x, y = n.children
    if _is(y, 0):
        return x
    if n.data == "add" and _is(x, 0):
        return y
    return None


@rule("zero_sub", ("sub",), "sub(0, x) -> neg(x)", "bitwise")
def _zero_sub(n: Node) -> Node | None:
    """``0 - x`` is ``-x`` (up to the sign of a zero result)."""
    x, y = n.children
    return N("neg", y) if _is(x, 0) else None


@rule(
    "mul_unit", ("mul",), "mul(x, 1), mul(1, x) -> x; mul(x, -1), mul(-1, x) -> neg(x)", "bitwise"
)
def _mul_unit(n: Node) -> Node | None:
    """Multiplying by 1 is exact; by -1 flips the sign bit."""
    x, y = n.children
    for a, b in ((x, y), (y, x)):
        if _is(b, 1):
            return a
        if _is(b, -1):
            return N("neg", a)
    return None


@rule("mul_zero", ("mul",), "mul(x, 0), mul(0, x) -> 0", "bitwise")
def _mul_zero(n: Node) -> Node | None:
    """``0 * x`` is 0 for finite ``x`` (an overflowing ``x`` gives NaN: degenerate anyway)."""
    x, y = n.children
    return _ZERO if _is(x, 0) or _is(y, 0) else None


@rule("nested_const_factor", ("mul", "add"), "mul(c1, mul(c2, x)) -> mul(c1*c2, x) (also add)",
      "rounding")  # fmt: skip
def _nested_const(n: Node) -> Node | None:
    """Constants are one value broadcast everywhere, so re-associating ``c1 * (c2 * x)`` as
    ``(c1 * c2) * x`` is the associative law; fp32 may round the two orders differently
    (by one ulp). The folded constant is computed in fp32."""
    x, y = n.children
    c, other = (x, y) if x.is_const else (y, x) if y.is_const else (None, None)
    if c is None or other.data != n.data:
        return None
    a, b = other.children
    c2, rest = (a, b) if a.is_const else (b, a) if b.is_const else (None, None)
    if c2 is None:
        return None
    folded = _fold_constants(N(n.data, c, c2))
    return N(n.data, folded, rest) if folded is not None else None


@rule("abs_nonneg", ("abs",), "abs(t) -> t for provably non-negative t", "bitwise")
def _abs_nonneg(n: Node) -> Node | None:
    """W, G, X are non-negative and the registry's ``nonneg`` flags propagate it (``sqr``,
    ``sqrt``, ``exp``, ``mms``, ``abs`` are always >= 0; ``add``/``mul``/``tanh``/... of
    non-negatives are). Covers ``abs(abs(x))``, ``abs(W)``, ``abs(W*W)``."""
    (c,) = n.children
    return c if nonneg(c) else None


@rule("abs_neg", ("abs",), "abs(neg(x)) -> abs(x)", "bitwise")
def _abs_neg(n: Node) -> Node | None:
    """``|-x| = |x|``: both clear the sign bit."""
    (c,) = n.children
    return N("abs", c.children[0]) if c.data == "neg" else None


@rule("sqr_sign", ("sqr",), "sqr(neg(x)), sqr(abs(x)) -> sqr(x)", "bitwise")
def _sqr_sign(n: Node) -> Node | None:
    """A square ignores the sign: ``(-x)*(-x)`` and ``|x|*|x|`` equal ``x*x`` exactly."""
    (c,) = n.children
    return N("sqr", c.children[0]) if c.data in ("neg", "abs") else None


@rule("even_arg", ("sqrt", "log"), "sqrt(abs|neg(x)) -> sqrt(x); log(abs|neg(x)) -> log(x)",
      "bitwise")  # fmt: skip
def _even_arg(n: Node) -> Node | None:
    """The protected ``sqrt`` and ``log`` take ``|x|`` first, so an inner sign change or
    ``abs`` is redundant."""
    (c,) = n.children
    return N(n.data, c.children[0]) if c.data in ("neg", "abs") else None


@rule("sqrt_sqr", ("sqrt",), "sqrt(sqr(x)) -> abs(x)", "rounding")
def _sqrt_sqr(n: Node) -> Node | None:
    """``sqrt(|x*x|) = |x|``. In fp32 the result is |x| to rounding, except where ``x*x``
    overflows (|x| > 1.8e19: the original is inf, degenerate) or underflows (|x| < 3.7e-23: the
    original is 0, a tie the simplified form breaks)."""
    (c,) = n.children
    return N("abs", c.children[0]) if c.data == "sqr" else None


@rule("sqr_sqrt", ("sqr",), "sqr(sqrt(x)) -> abs(x)", "rounding")
def _sqr_sqrt(n: Node) -> Node | None:
    """``sqrt(|x|)^2 = |x|`` (one rounding of the square root, one of the product)."""
    (c,) = n.children
    return N("abs", c.children[0]) if c.data == "sqrt" else None


@rule("exp_log", ("exp",), "exp(log(x)) -> add(abs(x), 0.001)", "rounding")
def _exp_log(n: Node) -> Node | None:
    """``exp(min(log(|x| + 0.001), 100)) = |x| + 0.001``: the clamp never acts, because every
    finite fp32 ``|x| + 0.001`` is below ``3.4e38 < e^100``, so the log stays under 88.8. Not
    ``x``: the 0.001 of the protected log survives. The shape check keeps ``exp(log(X))``, whose
    rewrite would broadcast the ``(1, in)`` X against the constant."""
    (c,) = n.children
    return N("add", N("abs", c.children[0]), Node("0.001")) if c.data == "log" else None


@rule("mms_idempotent", ("mms",), "mms(mms(x)) -> mms(x)", "bitwise")
def _mms_mms(n: Node) -> Node | None:
    """``mms(x)`` has min exactly 0 (``lo - lo``) and max exactly 1 (``(hi-lo)/(hi-lo)``), so
    scaling it again divides by 1 and subtracts 0."""
    (c,) = n.children
    return c if c.data == "mms" else None


@rule("zsn_idempotent", ("zsn",), "zsn(zsn(x)) -> zsn(x)", "rounding")
def _zsn_zsn(n: Node) -> Node | None:
    """``zsn(x)`` has mean 0 and std 1 (to rounding), so a second z-score changes nothing."""
    (c,) = n.children
    return c if c.data == "zsn" else None


@rule("normalise_affine", ("mms", "zsn"),
      "mms|zsn(zsn|mms(x)), mms|zsn(x + c), mms|zsn(x - c), mms|zsn(c*x) (c > 0), "
      "mms|zsn(div(x, y)) -> mms|zsn(x)", "rounding")  # fmt: skip
def _normalise_affine(n: Node) -> Node | None:
    """``mms`` and ``zsn`` are invariant under positive affine maps ``a*x + b`` (a > 0) applied to
    the whole tensor: both subtract a location and divide by a scale that move with the map.
    ``zsn(x)``, ``mms(x)``, ``x + c``, ``c * x`` with a positive constant, and ``x / ||y||`` (a
    positive scalar; a zero norm makes the original degenerate) are such maps. The shape check
    keeps ``zsn(X + c)``, whose std counts ``out*in`` entries rather than ``in``."""
    (c,) = n.children
    if c.data in ("mms", "zsn") and c.data != n.data:
        return N(n.data, c.children[0])
    if c.data in ("add", "sub", "mul"):
        x, y = c.children
        if c.data in ("add", "sub") and y.is_const:
            return N(n.data, x)
        if c.data == "add" and x.is_const:
            return N(n.data, y)
        if c.data == "mul" and _pos_const(y):
            return N(n.data, x)
        if c.data == "mul" and _pos_const(x):
            return N(n.data, y)
    if c.data == "div":
        return N(n.data, c.children[0])
    return None


@rule("rowcol_idempotent", ("rown", "coln"), "rown(rown(x)) -> rown(x); coln(coln(x)) -> coln(x)",
      "rounding")  # fmt: skip
def _rowcol_idem(n: Node) -> Node | None:
    """Each row (column) of ``rown(x)`` (``coln(x)``) already has absolute sum 1."""
    (c,) = n.children
    return c if c.data == n.data else None


@rule("rowcol_scale", ("rown", "coln"),
      "rown|coln(c*x) (c > 0), rown|coln(div(x, y)) -> rown|coln(x)", "rounding")  # fmt: skip
def _rowcol_scale(n: Node) -> Node | None:
    """``rown``/``coln`` divide by a sum of absolute values, so a positive scalar factor
    (a positive constant, or ``1/||y||``) cancels."""
    (c,) = n.children
    if c.data == "mul":
        x, y = c.children
        if _pos_const(y):
            return N(n.data, x)
        if _pos_const(x):
            return N(n.data, y)
    if c.data == "div":
        return N(n.data, c.children[0])
    return None


@rule("div_sign", ("div",), "div(x, neg(y)), div(x, abs(y)) -> div(x, y)", "bitwise")
def _div_sign(n: Node) -> Node | None:
    """A norm ignores signs: ``||-y|| = || |y| || = ||y||``."""
    x, y = n.children
    return N("div", x, y.children[0]) if y.data in ("neg", "abs") else None


@dataclass(frozen=True)
class Kept:
    """A pattern that looks like an opposing pair but is *not* an identity; simplify keeps it."""

    pattern: str
    why: str


KEPT: tuple[Kept, ...] = (
    Kept("log(exp(x))",
         "log(exp(min(x, 100)) + 0.001) is not x: the clamp caps it at ~100, the +0.001 lifts "
         "every x below about -6.9 to log(0.001) = -6.9 (all such x tie), and exp underflows."),
    Kept("exp(log(X))",
         "would become X + 0.001, which broadcasts the (1, in) statistic X to (out, in) and "
         "changes what a surrounding zsn/coln/div sees; rewritten only when x is (out, in)."),
    Kept("sqrt(sqrt(x)), sqr(sqr(x))", "x^(1/4) and x^4: no opposing pair."),
    Kept("tanh(x)", "no inverse in the language; it saturates to +-1 in fp32 (ties)."),
    Kept("div(x, 1)", "x / ||1|| = x / sqrt(out*in) depends on the shape; not x."),
    Kept("mms(neg(x))", "equals 1 - mms(x), not mms(x): min-max scaling is not sign invariant."),
    Kept("x + y - y", "exact in real arithmetic but not in fp32 when |y| >> |x| "
         "(catastrophic cancellation), so simplifying it would change scores."),
)  # fmt: skip


_BY_OP: dict[str, tuple[Rule, ...]] = {
    name: tuple(r for r in RULES if not r.ops or name in r.ops) for name in OPS
}


def _measure(node: Node) -> tuple[int, int, int]:
    """Decreases strictly with every applied rule (termination): exp/log pairs, size, pows."""
    counts = {"exp": 0, "log": 0, "pow": 0}
    for _, n in node.walk():
        if n.data in counts:
            counts[n.data] += 1
    return (counts["exp"] + counts["log"], node.size, counts["pow"])


def rewrite_once(node: Node) -> tuple[Rule, Node] | None:
    """The first rule that rewrites ``node`` at its root (not below), with the result."""
    if not node.is_op:
        return None
    for r in _BY_OP[node.data]:
        out = r.fn(node)
        if out is None or out == node:
            continue
        if row_shaped(out) != row_shaped(node):
            continue  # see row_shaped: the shape is part of the value
        return r, out
    return None


@lru_cache(maxsize=65536)
def simplify(node: Node) -> Node:
    """The tree rewritten with :data:`RULES` bottom-up to a fixpoint.

    Scores are preserved (see each rule's ``exact``); the result is never larger in the order
    of :func:`_measure` (exp/log pairs, then size).
    """
    if not node.children:
        return node
    kids = tuple(simplify(c) for c in node.children)
    n = node if kids == node.children else Node(node.data, kids)
    step = rewrite_once(n)
    if step is None:
        return n
    return simplify(step[1])


def explain(node: Node) -> list[tuple[str, str, str]]:
    """The rewrites :func:`simplify` makes, as ``(rule, before, after)`` infix triples."""
    log: list[tuple[str, str, str]] = []

    def go(n: Node) -> Node:
        if not n.children:
            return n
        kids = tuple(go(c) for c in n.children)
        n = n if kids == n.children else Node(n.data, kids)
        while (step := rewrite_once(n)) is not None:
            r, out = step
            log.append((r.name, to_infix(n), to_infix(out)))
            n = go(out)
        return n

    go(node)
    return log


# ---------------------------------------------------------------------------------------------
# sympy
# ---------------------------------------------------------------------------------------------


def _symfuncs():
    from . import symfuncs

    return symfuncs


@lru_cache(maxsize=65536)
def to_sympy(node: Node) -> Any:
    """The sympy expression of a tree, through each operator's ``sympy_fn`` in the registry.

    Constants become exact rationals of their decimal text. An operand whose whole-tensor
    statistic depends on the broadcast shape (the registry's ``Op.whole``) and whose sympy
    form cannot show that it is ``(out, in)`` (no W or G left in it) is wrapped in
    :class:`~pzshell.lang.symfuncs.Full`, so that ``zsn(X + 0)`` and ``zsn(X)`` stay apart.
    """
    S = _symfuncs()
    import sympy

    if node.is_terminal:
        return S.SYMBOLS[node.data]
    if node.is_const:
        return sympy.Rational(node.data)
    op = OPS.get(node.data)
    if op is None:  # pragma: no cover - Node construction already rejects unknown names
        raise MetricError(f"operator '{node.data}' has no sympy form")
    args = [to_sympy(c) for c in node.children]
    if op.whole and not row_shaped(node):
        for i in op.whole:
            a = args[i]
            if not a.is_Number and not (a.free_symbols & {S.W, S.G}):
                args[i] = S.Full(a)
    return op.sympy_fn(S, *args)


# ---------------------------------------------------------------------------------------------
# Canonical rank form
# ---------------------------------------------------------------------------------------------

SYMPY_MAX_SIZE = 200
"""Trees larger than this (after simplification) get the structural key; sympy's automatic
evaluation is polynomial but not cheap, and a search may produce bloated trees."""


@dataclass(frozen=True)
class CanonicalForm:
    """The canonical rank form of a metric: equal ``key`` means the same pruning masks.

    ``key`` is a short hex sha256; ``expr`` the sympy expression (None for a structural key);
    ``text`` a readable form; ``fallback`` why sympy was not used, if it was not.
    """

    key: str
    expr: Any
    text: str
    fallback: str | None = None


def _hash(kind: str, text: str) -> str:
    return hashlib.sha256(f"{kind}:{text}".encode()).hexdigest()[:16]


def _uniform(e) -> bool:
    """The value is the same at every entry: numbers and norms, and anything made of them."""
    S = _symfuncs()
    if e.is_Number:
        return True
    if isinstance(e, S.Fro):
        return True
    if e.is_Symbol:
        return False
    return bool(e.args) and all(_uniform(a) for a in e.args)


def _strip_once(e) -> tuple[Any, int]:
    """One strictly increasing map removed from the root of ``e``: ``(rest, sign)``.

    ``sign`` is -1 when a negation was taken out instead (the caller keeps it apart, since sympy
    would distribute it back over a sum). Each map is strictly increasing on the values the
    metric can take and the same for every entry of the layer, so the masks of every comparison
    group (rows, N:M blocks, the whole layer) are unchanged.
    """
    import sympy

    S = _symfuncs()
    if e.is_Number:
        return e, 1
    # positive affine normalisations of the whole tensor, and the broadcast marker
    if isinstance(e, (S.Mms, S.Zsn, S.Full)):
        return e.args[0], 1
    # the protected log, log(|x| + 0.001), is increasing in |x|
    if isinstance(e, sympy.log):
        return e.args[0], 1
    if e.is_Add:
        keep = [t for t in e.args if not _uniform(t)]
        if keep and len(keep) < len(e.args):
            return sympy.Add(*keep), 1  # an additive per-layer constant
        content, rest = e.primitive()
        if content.is_positive and content != 1:
            return rest, 1  # a positive rational factor of every term
        if e.could_extract_minus_sign():
            return -e, -1  # one of e and -e, chosen by sympy's canonical sign rule
        common = None
        for t in e.args:
            scalars = {f for f in sympy.Mul.make_args(t) if _uniform(f) and f.is_positive}
            common = scalars if common is None else common & scalars
        if common:
            # a positive per-layer factor of every term (W/||G|| + X/||G||)
            return sympy.Add(*(t / sympy.Mul(*common) for t in e.args)), 1
        return e, 1
    if e.is_Pow:
        base, p = e.args
        if p.is_Number and p.is_positive:
            if base.is_nonnegative or (p.is_integer and p.is_odd):
                return base, 1  # t -> t^p is increasing on t >= 0 (everywhere for odd p)
            if p.is_integer and p.is_even:
                return S.Abs(base), 1  # t^p = |t|^p
        return e, 1
    if isinstance(e, sympy.exp):
        # exp(c*y) = exp(y)^c: a power map of positive values (exp itself is kept, see canonical)
        c, rest = e.args[0].as_coeff_Mul()
        if c.is_positive and c != 1:
            return sympy.exp(rest), 1
        return e, 1
    if e.is_Mul:
        coeff, factors = e.as_coeff_mul()
        if coeff.is_negative:
            return sympy.Mul(-coeff, *factors), -1
        rest = [f for f in factors if not (_uniform(f) and (f.is_positive or f.is_negative))]
        if not coeff.is_positive:  # zoo (a zero norm) or nan: leave the degenerate metric be
            return e, 1
        if coeff != 1 or len(rest) < len(factors):
            # per-layer scalar factors: positive ones drop, negative ones flip the order
            flips = sum(1 for f in factors if _uniform(f) and f.is_negative)
            return sympy.Mul(*rest), -1 if flips % 2 else 1
        return _normalise_exponents(e), 1
    return e, 1


def _normalise_exponents(e):
    """``prod f_i^p_i`` with ``p_i > 0`` and every ``f_i >= 0`` (or ``p_i`` even): divide all
    exponents by that of the first base in sympy's sort order (``t -> t^(1/p)`` is increasing
    on t >= 0), so ``W**2*X`` and ``W*sqrt(X)`` meet. Bases are ordered by themselves, not by
    their powers, so the choice does not depend on the exponents being normalised."""
    import sympy

    powers = []
    for f in e.args:
        base, p = f.args if f.is_Pow else (f, sympy.S.One)
        if isinstance(f, sympy.exp):  # exp(c*y) = exp(y)^c
            p, rest = f.args[0].as_coeff_Mul()
            base = sympy.exp(rest)
        if not (p.is_Number and p.is_positive):
            return e
        if not base.is_nonnegative:
            if not (p.is_integer and p.is_even):
                return e
            base = _symfuncs().Abs(base)  # t^2k = |t|^2k
        powers.append((base, p))
    first = min(powers, key=lambda bp: sympy.default_sort_key(bp[0]))[1]
    if first == 1:
        return e
    return sympy.Mul(*(b ** (p / first) for b, p in powers))


def rank_form(expr) -> tuple[Any, int]:
    """Strip strictly increasing per-layer maps from the root until none is left.

    Returns ``(core, sign)``: the metric ranks like ``sign * core``.
    """
    sign = 1
    for _ in range(64):
        new, flip = _strip_once(expr)
        sign *= flip
        if new == expr and flip == 1:
            break
        expr = new
    return expr, sign


def _signed(expr, sign: int):
    import sympy

    return expr if sign > 0 else sympy.Mul(-1, expr, evaluate=False)


def canonical_signs(e):
    """Rebuild ``e`` with one sign convention for the sums inside products, even powers and
    ``Abs``: sympy keeps ``-(G - W)*X`` and ``(W - G)*X`` as different trees (and the sign
    simplification inside ``sympy.Abs`` produces the first), so without this two spellings of
    one function could get two keys. Each sum factor of a product takes the sign that sympy's
    ``could_extract_minus_sign`` rule prefers, and the product's coefficient absorbs the rest."""
    import sympy

    S = _symfuncs()
    if e.is_Atom or not e.args:
        return e
    args = [canonical_signs(a) for a in e.args]
    if e.is_Mul:
        flip = False
        for i, a in enumerate(args):
            if a.is_Add and a.could_extract_minus_sign():
                args[i] = -a
                flip = not flip
        return sympy.Mul(sympy.S.NegativeOne, *args) if flip else sympy.Mul(*args)
    if isinstance(e, sympy.Abs):
        return S.Abs(args[0])
    if e.is_Pow and args[1].is_integer and args[1].is_even:
        return S.sq(args[0]) ** (args[1] / 2)
    return e.func(*args)


def _structural(s: Node, reason: str) -> CanonicalForm:
    text = to_infix(s)
    return CanonicalForm(_hash("tree", text), None, text, fallback=reason)


@lru_cache(maxsize=16384)
def canonical(node: Node) -> CanonicalForm:
    """The canonical rank form: formulas with equal keys give equal pruning masks.

    Steps: :func:`simplify`; convert to sympy (commutativity, associativity, collecting like
    terms and numeric folding come from sympy's canonical ordering); then strip maps that are
    strictly increasing and the same for the whole layer: positive constant or norm
    (``Fro``) factors, constant or norm terms, ``mms``/``zsn`` (positive affine), ``log``,
    ``t^p`` (p > 0) of a non-negative ``t``, and normalise the exponents of a product of
    non-negative factors (``W*sqrt(X)`` ~ ``W**2*X``). ``exp`` and ``tanh`` are *not* stripped:
    in fp32 ``tanh`` saturates to 1 above ~9 and ``exp`` is clamped at 100, overflows above 88.7
    and underflows below -103, so they create ties that the inner metric does not have. Row- or
    column-relative maps (``rown``) are not stripped either: they are not the same for the whole
    layer, and a magnitude-style comparison group spans it.

    Equality is in exact arithmetic: two rank-equivalent formulas can still break fp32 ties
    differently (``W**2*X`` underflows to 0 earlier than ``W*sqrt(X)``). If sympy fails or the
    tree is huge, the key is structural (a hash of the simplified tree), which is still sound:
    equal simplified trees give equal masks.
    """
    s = simplify(node)
    if s.size > SYMPY_MAX_SIZE:
        return _structural(s, f"tree has {s.size} nodes after simplification")
    try:
        import sympy

        expr = _signed(*rank_form(canonical_signs(to_sympy(s))))
        return CanonicalForm(_hash("sympy", sympy.srepr(expr)), expr, sympy.sstr(expr))
    except (RecursionError, MemoryError) as e:  # pragma: no cover - guarded by the size limit
        return _structural(s, f"sympy gave up: {type(e).__name__}")
    except Exception as e:  # sympy internals: fall back to the structural key, which is sound
        return _structural(s, f"sympy failed: {type(e).__name__}: {e}")


@lru_cache(maxsize=1)
def _known_keys() -> dict[str, str]:
    from .library import shipped_tree, shipped_tree_names

    out: dict[str, str] = {}
    for name in shipped_tree_names():
        out.setdefault(canonical(shipped_tree(name)).key, name)
    return out


def equivalent_known(node: Node) -> str | None:
    """The name of a shipped tree with the same canonical key ("same pruning rule as wanda")."""
    return _known_keys().get(canonical(node).key)


__all__ = [
    "KEPT", "RULES", "CanonicalForm", "Kept", "Rule", "canonical", "equivalent_known", "explain",
    "nonneg", "rank_form", "row_shaped", "rewrite_once", "simplify", "to_sympy",
]  # fmt: skip
