"""The operator registry of the metric language: one entry per operator.

Each entry carries everything the rest of the package needs to know about an operator: arity,
the exact torch semantics (SPEC "The metric language"), its sympy form, and how it prints
(infix, function-call and LaTeX). Adding an operator is adding one `Op(...)` to `_OPS`.

The sympy forms receive the module :mod:`pzshell.lang.symfuncs` as ``S`` so sympy is imported
only when someone asks for algebra, never by the pruning engine's hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

TERMINALS: tuple[str, ...] = ("W", "G", "X")
"""Leaves: |weight| (out,in), gradient statistic (out,in), activation statistic (1,in)."""

TERMINAL_DOCS = {
    "W": "absolute value of the weight, |w|, shape (out, in)",
    "G": "gradient statistic sqrt(sum_s (100*dL_s/dw)^2), shape (out, in)",
    "X": "mean over calibration tokens of x_j^2 for input column j, shape (1, in)",
}


@dataclass(frozen=True)
class Op:
    """One operator of the language."""

    name: str
    arity: int
    torch_fn: Callable[..., torch.Tensor]
    sympy_fn: Callable[..., Any]
    latex: Callable[..., str]
    doc: str
    infix: str | None = None  # binary infix symbol, if any
    extended: bool = False  # beyond the published Pruner-Zero operator set
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
    Op("add", 2, lambda x, y: x + y, lambda S, x, y: x + y,
       lambda a, b: f"{a} + {b}", "x + y (broadcasting)", infix="+", nonneg=_ALL),
    Op("sub", 2, lambda x, y: x - y, lambda S, x, y: x - y,
       lambda a, b: f"{a} - {b}", "x - y (broadcasting)", infix="-"),
    Op("mul", 2, lambda x, y: x * y, lambda S, x, y: x * y,
       lambda a, b: rf"{a} \cdot {b}", "x * y (broadcasting)", infix="*", nonneg=_ALL),
    Op("div", 2, _div, lambda S, x, y: x / S.Fro(y),
       lambda a, b: rf"\frac{{{a}}}{{\lVert {b} \rVert_2}}",
       "x / ||y||_2: divides by the Frobenius norm of the whole (broadcast) second operand",
       infix="/", nonneg=lambda a, b: a, whole=(1,)),
    Op("sqr", 1, _sqr, lambda S, x: S.sq(x), _sq, "x^2",
       nonneg=_ANY),
    Op("pow", 1, _sqr, lambda S, x: S.sq(x), _sq,
       "x^2 (same function as sqr)", nonneg=_ANY),
    Op("neg", 1, lambda x: -x, lambda S, x: -x, lambda a: f"-{a}", "-x"),
    Op("abs", 1, torch.abs, lambda S, x: S.Abs(x), lambda a: rf"\left|{a}\right|", "|x|",
       nonneg=_ANY),
    Op("log", 1, lambda x: torch.log(x.abs() + 0.001), lambda S, x: S.plog(x),
       lambda a: rf"\log\left(\left|{a}\right| + 10^{{-3}}\right)", "log(|x| + 0.001)"),
    Op("exp", 1, lambda x: torch.exp(x.clamp(max=100)), lambda S, x: S.pexp(x),
       lambda a: rf"e^{{\min\left({a}, 100\right)}}", "exp(min(x, 100))", nonneg=_ANY),
    Op("sqrt", 1, lambda x: torch.sqrt(x.abs()), lambda S, x: S.sqrt(S.Abs(x)),
       lambda a: rf"\sqrt{{\left|{a}\right|}}", "sqrt(|x|)", nonneg=_ANY),
    Op("tanh", 1, torch.tanh, lambda S, x: S.tanh(x), lambda a: rf"\tanh\left({a}\right)",
       "tanh(x)", nonneg=_ALL),
    Op("skp", 1, lambda x: x, lambda S, x: x, lambda a: a, "identity", nonneg=_ALL),
    Op("mms", 1, _mms, lambda S, x: S.Mms(x), lambda a: _fn("mms", a),
       "min-max scale over the whole tensor: (x - min) / (max - min)", nonneg=_ANY),
    Op("zsn", 1, _zsn, lambda S, x: S.Zsn(x), lambda a: _fn("zsn", a),
       "z-score over the whole tensor: (x - mean) / std", whole=(0,)),
    Op("rown", 1, _rown, lambda S, x: S.Rown(x), lambda a: _fn("rown", a),
       "x / sum_j |x_ij| (each entry over its row's absolute sum)", extended=True, nonneg=_ALL),
    Op("coln", 1, _coln, lambda S, x: S.Coln(x), lambda a: _fn("coln", a),
       "x / sum_i |x_ij| (each entry over its column's absolute sum)", extended=True,
       nonneg=_ALL, whole=(0,)),
)  # fmt: skip

OPS: dict[str, Op] = {op.name: op for op in _OPS}
INFIX: dict[str, str] = {op.infix: op.name for op in _OPS if op.infix}
PUBLISHED: tuple[str, ...] = tuple(op.name for op in _OPS if not op.extended)
EXTENDED: tuple[str, ...] = tuple(op.name for op in _OPS if op.extended)
UNARY: tuple[str, ...] = tuple(op.name for op in _OPS if op.arity == 1)
BINARY: tuple[str, ...] = tuple(op.name for op in _OPS if op.arity == 2)
