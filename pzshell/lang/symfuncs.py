"""sympy forms of the metric language's operators, with their protected semantics.

The registry in :mod:`pzshell.lang.ops` builds sympy expressions through this module (as ``S``),
so sympy is imported only when someone asks for algebra.

Whole-tensor and row/column operators cannot be written with scalar sympy functions, so they are
custom :class:`sympy.Function` subclasses. Following sympytorch / PySR, ``eval`` folds only
explicit numbers (and only where the value does not depend on the tensor's shape); identities
such as ``mms(mms(x)) = mms(x)`` live in the rewrite rules of :mod:`pzshell.lang.rules`, not
here, so that each one is named, documented and tested.

The terminals are ``nonnegative=True`` symbols: ``W = |w|``, ``G`` is a root of a sum of
squares and ``X`` a mean of squares.
"""

from __future__ import annotations

import sympy
from sympy import Function, Min, Rational, Symbol, exp, log, nan, sqrt, tanh

__all__ = [
    "Abs",
    "Cap",
    "Coln",
    "Fro",
    "Full",
    "G",
    "Mms",
    "Rown",
    "S",
    "SYMBOLS",
    "W",
    "X",
    "Zsn",
    "pexp",
    "plog",
    "sq",
    "sqrt",
    "tanh",
]

W = Symbol("W", nonnegative=True)
G = Symbol("G", nonnegative=True)
X = Symbol("X", nonnegative=True)
S = Symbol("S", nonnegative=True)
SYMBOLS: dict[str, Symbol] = {"W": W, "G": G, "X": X, "S": S}

LOG_EPS = Rational(1, 1000)
"""``log`` adds 0.001 before taking the logarithm (protected log of the reference code)."""
EXP_CAP = 100
"""``exp`` clamps its argument at 100 (protected exp of the reference code)."""


def Abs(x: sympy.Expr) -> sympy.Expr:  # noqa: N802 (the sympy name)
    """``sympy.Abs`` with a canonical argument.

    ``sympy.Abs`` rewrites its argument with ``signsimp(..., evaluate=False)``, which leaves
    unevaluated products such as ``-(W - 3)`` *inside* the result, so the same function could
    get two different expression trees (and two canonical keys). The result is rebuilt with
    evaluation, keeping each ``Abs`` with the sign of its argument chosen by sympy's
    ``could_extract_minus_sign`` rule.
    """
    return _evaluated(sympy.Abs(x))


def sq(x: sympy.Expr) -> sympy.Expr:
    """``x**2`` with the sign of ``x`` chosen canonically (``(G - W)**2``, never ``(W - G)**2``
    for one and ``(G - W)**2`` for the other), as sympy leaves even powers' bases alone."""
    return _even_base(x) ** 2


def _even_base(x: sympy.Expr) -> sympy.Expr:
    return -x if x.could_extract_minus_sign() else x


def _evaluated(e: sympy.Basic) -> sympy.Basic:
    if not e.args or e.is_Atom:
        return e
    args = [_evaluated(a) for a in e.args]
    if isinstance(e, sympy.Abs):
        a = _even_base(args[0])
        return a if a.is_nonnegative else sympy.Abs(a, evaluate=False)
    if e.is_Pow and args[1].is_integer and args[1].is_even:
        return _even_base(args[0]) ** args[1]
    return e.func(*args)


def plog(x: sympy.Expr) -> sympy.Expr:
    """Protected log: ``log(|x| + 1/1000)``."""
    return log(Abs(x) + LOG_EPS)


def pexp(x: sympy.Expr) -> sympy.Expr:
    """Protected exp: ``exp(min(x, 100))``, the min written :class:`Cap` (see there)."""
    return exp(Cap(x))


class Cap(Function):
    """``min(x, 100)``, the clamp of the protected ``exp``.

    The same function as ``Min(x, 100)``; a dedicated class because sympy's ``Min`` tries to
    decide ``x >= 100`` through the assumption system on every construction, which made the
    canonical form of random trees with ``exp`` 40x slower. Numbers fold.
    """

    nargs = 1

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return Min(x, EXP_CAP)
        return None

    def _eval_is_real(self):
        return self.args[0].is_real


class Mms(Function):
    """Min-max scaling over the whole tensor, ``(x - min) / (max - min)``: values in [0, 1].

    A constant tensor has ``max == min``, so ``mms`` of a number is ``0/0 = nan`` (as in torch).
    """

    nargs = 1

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return nan
        return None

    def _eval_is_real(self):
        return True

    def _eval_is_nonnegative(self):
        return True


class Zsn(Function):
    """z-score over the whole tensor, ``(x - mean) / std`` (unbiased std, as ``torch.std``).

    A constant tensor has ``std == 0``, so ``zsn`` of a number is ``0/0 = nan``.
    """

    nargs = 1

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return nan
        return None

    def _eval_is_real(self):
        return True


class Fro(Function):
    """Frobenius norm of the whole (broadcast) operand: one non-negative *scalar* per layer.

    It is treated as positive: a zero norm makes ``div`` produce inf/NaN, which the engine
    rejects as degenerate before any mask is made. ``Fro(0)`` folds to 0; the norm of any other
    number depends on the tensor's shape (``|c| * sqrt(out * in)``) and stays symbolic, with the
    sign dropped (``Fro(-c) = Fro(c)``).
    """

    nargs = 1

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            if x.is_zero:
                return sympy.S.Zero
            if x.is_negative:
                return cls(-x)
        return None

    def _eval_is_real(self):
        return True

    def _eval_is_positive(self):
        return True

    def _eval_is_nonnegative(self):
        return True


class _OverAbsSum(Function):
    """``x`` over an absolute sum of its entries along one axis: the sum depends on the axis's
    length, so for a number only ``f(0) = 0/0 = nan`` folds."""

    nargs = 1

    @classmethod
    def eval(cls, x):
        if x.is_Number and x.is_zero:
            return nan
        return None

    def _eval_is_real(self):
        return True

    def _eval_is_nonnegative(self):
        return self.args[0].is_nonnegative


class Rown(_OverAbsSum):
    """``x / sum_j |x_ij|``: each entry over the absolute sum of its row (extended operator)."""


class Coln(_OverAbsSum):
    """``x / sum_i |x_ij|``: each entry over the absolute sum of its column (extended operator)."""


class Full(Function):
    """``x`` broadcast to ``(out, in)``: the same values, but a whole-tensor statistic over it
    counts ``out*in`` entries. Marks an operand of ``zsn``, ``coln`` or ``div``'s norm whose sympy
    form shows no W or G (so could be the ``(1, in)`` statistic X) but whose tree is ``(out, in)``.
    """

    nargs = 1

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return x  # constants are (out, in) already
        return None

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_is_nonnegative(self):
        return self.args[0].is_nonnegative

    def _eval_is_positive(self):
        return self.args[0].is_positive
