"""The rewrite rules of the simplifier: Opposing Operation Simplification and friends.

:data:`RULES` is the table :func:`~pzshell.lang.rewrite.simplify` applies: Pruner-Zero's
Opposing Operation Simplification (an operator undone by its opposite), identities that hold
because ``W``/``G``/``X`` are non-negative, identities of the normalising operators, and constant
folding. Every rule is *value preserving* under the protected semantics of the operators
(``log`` adds 0.001, ``exp`` clamps at 100, ``div`` divides by a whole-tensor norm ...); its
``exact`` says whether fp32 results are bit-identical or equal up to rounding, and the docstring
of its function says why it holds. Patterns that look like identities but are not
(``log(exp(x))``) are listed in :data:`KEPT` with the reason. docs/language.md lists both tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .ops import COLUMN_TERMINALS, OPS
from .tree import Node, format_number

# ---------------------------------------------------------------------------------------------
# Facts about subtrees: non-negativity (from the registry's flags) and shape
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=65536)
def nonneg(node: Node) -> bool:
    """Provably ``>= 0`` everywhere: the terminals are, constants by value, operators by their
    flags."""
    if node.is_terminal:
        return True
    if node.is_const:
        return node.value >= 0
    return bool(OPS[node.data].nonneg(*(nonneg(c) for c in node.children)))


@lru_cache(maxsize=65536)
def row_shaped(node: Node) -> bool:
    """The subtree evaluates to a ``(1, in)`` tensor: every leaf is ``X`` or ``S``.

    ``W``, ``G`` and constants are ``(out, in)`` (the reference code builds constants with the
    weight's shape), and binary operators broadcast. The shape is visible to whole-tensor
    statistics (the unbiased std of ``zsn``, the column sums of ``coln``, the norm in ``div``),
    so a rewrite must never change it; the rule engine checks this for every rule.
    """
    if node.is_terminal:
        return node.data in COLUMN_TERMINALS
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
    bit-identical; another device's libm may differ by an ulp for log/exp/tanh. Operators the
    registry marks not elementwise (div, mms, zsn, rown, coln) are not folded: on a constant
    tensor their value depends on its shape (``div(1, 2)`` is ``1 / (2 sqrt(out*in))``) or is
    NaN (``mms(2)``), and non-finite results are left alone so the degenerate-metric check
    still sees them."""
    if not OPS[n.data].elementwise:
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


@rule(
    "nested_const_factor",
    ("mul", "add"),
    "mul(c1, mul(c2, x)) -> mul(c1*c2, x) (also add)",
    "rounding",
)
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


@rule(
    "even_arg", ("sqrt", "log"), "sqrt(abs|neg(x)) -> sqrt(x); log(abs|neg(x)) -> log(x)", "bitwise"
)
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


@rule(
    "normalise_affine",
    ("mms", "zsn"),
    "mms|zsn(zsn|mms(x)), mms|zsn(x + c), mms|zsn(x - c), mms|zsn(c*x) (c > 0), "
    "mms|zsn(div(x, y)) -> mms|zsn(x)",
    "rounding",
)
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


@rule(
    "rowcol_idempotent",
    ("rown", "coln"),
    "rown(rown(x)) -> rown(x); coln(coln(x)) -> coln(x)",
    "rounding",
)
def _rowcol_idem(n: Node) -> Node | None:
    """Each row (column) of ``rown(x)`` (``coln(x)``) already has absolute sum 1."""
    (c,) = n.children
    return c if c.data == n.data else None


@rule(
    "rowcol_scale",
    ("rown", "coln"),
    "rown|coln(c*x) (c > 0), rown|coln(div(x, y)) -> rown|coln(x)",
    "rounding",
)
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
    Kept(
        "log(exp(x))",
        "log(exp(min(x, 100)) + 0.001) is not x: the clamp caps it at ~100, the +0.001 lifts "
        "every x below about -6.9 to log(0.001) = -6.9 (all such x tie), and exp underflows.",
    ),
    Kept(
        "exp(log(X))",
        "would become X + 0.001, which broadcasts the (1, in) statistic X to (out, in) and "
        "changes what a surrounding zsn/coln/div sees; rewritten only when x is (out, in).",
    ),
    Kept("sqrt(sqrt(x)), sqr(sqr(x))", "x^(1/4) and x^4: no opposing pair."),
    Kept("tanh(x)", "no inverse in the language; it saturates to +-1 in fp32 (ties)."),
    Kept("div(x, 1)", "x / ||1|| = x / sqrt(out*in) depends on the shape; not x."),
    Kept("mms(neg(x))", "equals 1 - mms(x), not mms(x): min-max scaling is not sign invariant."),
    Kept(
        "x + y - y",
        "exact in real arithmetic but not in fp32 when |y| >> |x| "
        "(catastrophic cancellation), so simplifying it would change scores.",
    ),
)


__all__ = ["KEPT", "RULES", "Kept", "Rule", "nonneg", "row_shaped"]
