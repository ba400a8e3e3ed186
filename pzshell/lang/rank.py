"""The canonical rank form: does a formula prune the same weights as another?

Masks depend only on the order of the scores inside a comparison group, so strictly increasing
maps of the whole metric do not matter. :func:`canonical` simplifies the tree
(:mod:`pzshell.lang.rewrite`), converts it to sympy (:func:`to_sympy`, through the registry's
sympy forms in :mod:`pzshell.lang.symfuncs`), strips such maps from the root
(:func:`rank_form`) and hashes the rest: equal keys mean equal masks (in exact arithmetic; see
:func:`canonical`). sympy is imported only when a key is asked for.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .diagnostics import MetricError
from .ops import OPS
from .rewrite import simplify
from .rules import row_shaped
from .tree import Node, to_infix

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
    if expr.is_Number:  # every constant ties every weight: one rank form for all of them
        import sympy

        return sympy.S.Zero, 1
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
    "SYMPY_MAX_SIZE",
    "CanonicalForm",
    "canonical",
    "canonical_signs",
    "equivalent_known",
    "rank_form",
    "to_sympy",
]
