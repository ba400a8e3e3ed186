"""The operator registry of the metric language: one entry per operator.

Each entry carries everything the rest of the package needs to know about an operator: arity,
the exact torch semantics (docs/language.md), its sympy form, how it is written and printed
(infix symbol and precedence, function-call form, LaTeX), and the facts the simplifier relies on
(non-negativity, elementwise or not, shape-sensitive operands). The parser (which generates its
infix grammar rules from ``infix``/``prefix``/``prec``), the printers and the simplifier read
these fields and keep no operator list or precedence table of their own; only the rewrite rules
name the operators they rewrite. Adding an operator is adding one `Op(...)` to `_OPS`.

The sympy forms receive the module :mod:`pzshell.lang.symfuncs` as ``S`` so sympy is imported
only when someone asks for algebra, never by the pruning engine's hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

TERMINALS: tuple[str, ...] = ("W", "G", "X", "S")
"""Leaves: |weight| (out,in), gradient statistic (out,in), activation statistic (1,in), and
(extended, pzshell only) SparseGPT's column curvature ``1 / [H_{j:,j:}^-1]_jj`` (1,in)."""
PUBLISHED_TERMINALS: tuple[str, ...] = ("W", "G", "X")
"""The leaves the published Pruner-Zero code knows; the search's default terminal set."""
EXTENDED_TERMINALS: tuple[str, ...] = ("S",)
"""Leaves beyond the published set: a tree using one is marked as needing pzshell."""
COLUMN_TERMINALS: tuple[str, ...] = ("X", "S")
"""Leaves of shape ``(1, in)``: one value per input column, shared by every row."""

# Precedence of the text forms, loosest first: how tightly an operator's infix, prefix or power
# form binds its operands. A function call, a name, a number or a parenthesised formula is an atom.
PREC_SUM = 1
"""``a + b``, ``a - b`` (left-associative)."""
PREC_PRODUCT = 2
"""``a * b``, ``a / b`` (left-associative)."""
PREC_PREFIX = 3
"""Unary minus ``-a`` (and a negative constant, which prints as one)."""
PREC_POWER = 4
"""``a^2`` / ``a**2``: binds tighter than unary minus, so ``-W^2`` is ``-(W^2)``."""
PREC_ATOM = 5
"""Names, numbers, calls ``f(x)`` and ``(...)``: never need parentheses."""


@dataclass(frozen=True)
class Op:
    """One operator of the language."""

    name: str
    arity: int
    torch_fn: Callable[..., torch.Tensor]
    sympy_fn: Callable[..., Any]
    latex: Callable[..., str]
    doc: str
    infix: str | None = None
    """Binary infix symbol (``+``): formulas may write ``a + b`` for ``add(a, b)``."""
    prefix: str | None = None
    """Unary prefix symbol (``-``): formulas may write ``-a`` for ``neg(a)``."""
    exponent: float | None = None
    """Formulas may write ``a^e`` or ``a**e`` for this operator; it prints that way when its
    ``prec`` is :data:`PREC_POWER` (``sqr``), as a call otherwise (``sqrt``)."""
    prec: int = PREC_ATOM
    """Precedence of the operator's infix, prefix or power form; :data:`PREC_ATOM` for the
    function-call form."""
    extended: bool = False  # beyond the published Pruner-Zero operator set
    elementwise: bool = True
    """False when an entry of the result depends on other entries of the operand: a
    whole-tensor statistic (the norm of ``div``, the min/max of ``mms``, the mean/std of
    ``zsn``) or a row/column sum (``rown``, ``coln``). Such an operator on a constant depends on
    the tensor's shape, so the simplifier never folds it."""
    row_local: bool = False
    """True for a non-elementwise operator whose result for a row depends on that row alone
    (``rown``): :func:`~pzshell.lang.compile.evaluate` computes it on a row subset directly."""
    nonneg: Callable[..., bool] = field(default=lambda *args: False)
    """Given the children's non-negativity flags, is the result provably >= 0?"""
    whole: tuple[int, ...] = ()
    """Operands whose value is used through a whole-tensor statistic that changes when a
    ``(1, in)`` operand is broadcast to ``(out, in)`` (unbiased std, column sums, the norm)."""


def _broadcast(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.broadcast_tensors(x, y)


def _div(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # The reference broadcasts both operands first and divides by the norm of the broadcast y.
    x, y = _broadcast(x, y)
    return x / torch.linalg.vector_norm(y)


def _mms(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo)


def _zsn(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std()


def _rown(x: torch.Tensor) -> torch.Tensor:
    return x / x.abs().sum(dim=-1, keepdim=True)


def _coln(x: torch.Tensor) -> torch.Tensor:
    return x / x.abs().sum(dim=-2, keepdim=True)


def _sqr(x: torch.Tensor) -> torch.Tensor:
    return x * x


def _sq(a: str) -> str:
    return f"{a}^{{2}}" if a.isalnum() else rf"\left({a}\right)^{{2}}"


def _fn(name: str, a: str) -> str:
    return rf"\operatorname{{{name}}}\left({a}\right)"


_ALL = lambda *flags: all(flags)  # noqa: E731
_ANY = lambda *flags: True  # noqa: E731

_OPS: tuple[Op, ...] = (
    Op(
        "add",
        2,
        torch_fn=lambda x, y: x + y,
        sympy_fn=lambda S, x, y: x + y,
        latex=lambda a, b: f"{a} + {b}",
        doc="x + y (broadcasting)",
        infix="+",
        prec=PREC_SUM,
        nonneg=_ALL,
    ),
    Op(
        "sub",
        2,
        torch_fn=lambda x, y: x - y,
        sympy_fn=lambda S, x, y: x - y,
        latex=lambda a, b: f"{a} - {b}",
        doc="x - y (broadcasting)",
        infix="-",
        prec=PREC_SUM,
    ),
    Op(
        "mul",
        2,
        torch_fn=lambda x, y: x * y,
        sympy_fn=lambda S, x, y: x * y,
        latex=lambda a, b: rf"{a} \cdot {b}",
        doc="x * y (broadcasting)",
        infix="*",
        prec=PREC_PRODUCT,
        nonneg=_ALL,
    ),
    Op(
        "div",
        2,
        torch_fn=_div,
        sympy_fn=lambda S, x, y: x / S.Fro(y),
        latex=lambda a, b: rf"\frac{{{a}}}{{\lVert {b} \rVert_2}}",
        doc="x / ||y||_2: divides by the Frobenius norm of the whole (broadcast) second operand",
        infix="/",
        prec=PREC_PRODUCT,
        nonneg=lambda a, b: a,
        elementwise=False,
        whole=(1,),
    ),
    Op(
        "sqr",
        1,
        torch_fn=_sqr,
        sympy_fn=lambda S, x: S.sq(x),
        latex=_sq,
        doc="x^2",
        exponent=2,
        prec=PREC_POWER,
        nonneg=_ANY,
    ),
    Op(
        "pow",
        1,
        torch_fn=_sqr,
        sympy_fn=lambda S, x: S.sq(x),
        latex=_sq,
        doc="x^2 (same function as sqr)",
        nonneg=_ANY,
    ),
    Op(
        "neg",
        1,
        torch_fn=lambda x: -x,
        sympy_fn=lambda S, x: -x,
        latex=lambda a: f"-{a}",
        doc="-x",
        prefix="-",
        prec=PREC_PREFIX,
    ),
    Op(
        "abs",
        1,
        torch_fn=torch.abs,
        sympy_fn=lambda S, x: S.Abs(x),
        latex=lambda a: rf"\left|{a}\right|",
        doc="|x|",
        nonneg=_ANY,
    ),
    Op(
        "log",
        1,
        torch_fn=lambda x: torch.log(x.abs() + 0.001),
        sympy_fn=lambda S, x: S.plog(x),
        latex=lambda a: rf"\log\left(\left|{a}\right| + 10^{{-3}}\right)",
        doc="log(|x| + 0.001)",
    ),
    Op(
        "exp",
        1,
        torch_fn=lambda x: torch.exp(x.clamp(max=100)),
        sympy_fn=lambda S, x: S.pexp(x),
        latex=lambda a: rf"e^{{\min\left({a}, 100\right)}}",
        doc="exp(min(x, 100))",
        nonneg=_ANY,
    ),
    Op(
        "sqrt",
        1,
        torch_fn=lambda x: torch.sqrt(x.abs()),
        sympy_fn=lambda S, x: S.sqrt(S.Abs(x)),
        latex=lambda a: rf"\sqrt{{\left|{a}\right|}}",
        doc="sqrt(|x|)",
        exponent=0.5,
        nonneg=_ANY,
    ),
    Op(
        "tanh",
        1,
        torch_fn=torch.tanh,
        sympy_fn=lambda S, x: S.tanh(x),
        latex=lambda a: rf"\tanh\left({a}\right)",
        doc="tanh(x)",
        nonneg=_ALL,
    ),
    Op(
        "skp",
        1,
        torch_fn=lambda x: x,
        sympy_fn=lambda S, x: x,
        latex=lambda a: a,
        doc="identity",
        nonneg=_ALL,
    ),
    Op(
        "mms",
        1,
        torch_fn=_mms,
        sympy_fn=lambda S, x: S.Mms(x),
        latex=lambda a: _fn("mms", a),
        doc="min-max scale over the whole tensor: (x - min) / (max - min)",
        nonneg=_ANY,
        elementwise=False,
    ),
    Op(
        "zsn",
        1,
        torch_fn=_zsn,
        sympy_fn=lambda S, x: S.Zsn(x),
        latex=lambda a: _fn("zsn", a),
        doc="z-score over the whole tensor: (x - mean) / std",
        elementwise=False,
        whole=(0,),
    ),
    Op(
        "rown",
        1,
        torch_fn=_rown,
        sympy_fn=lambda S, x: S.Rown(x),
        latex=lambda a: _fn("rown", a),
        doc="x / sum_j |x_ij| (each entry over its row's absolute sum)",
        extended=True,
        nonneg=_ALL,
        elementwise=False,
        row_local=True,
    ),
    Op(
        "coln",
        1,
        torch_fn=_coln,
        sympy_fn=lambda S, x: S.Coln(x),
        latex=lambda a: _fn("coln", a),
        doc="x / sum_i |x_ij| (each entry over its column's absolute sum)",
        extended=True,
        nonneg=_ALL,
        elementwise=False,
        whole=(0,),
    ),
)

OPS: dict[str, Op] = {op.name: op for op in _OPS}
PUBLISHED: tuple[str, ...] = tuple(op.name for op in _OPS if not op.extended)
EXTENDED: tuple[str, ...] = tuple(op.name for op in _OPS if op.extended)
UNARY: tuple[str, ...] = tuple(op.name for op in _OPS if op.arity == 1)
