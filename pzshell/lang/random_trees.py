"""Random metric trees in the style of Pruner-Zero's genetic programming.

The reference ``GPTree.random_tree(grow, max_depth)`` picks an operator at every node above
``MIN_DEPTH``, a leaf at ``max_depth``, and in between an operator ("full") or a fair coin
between leaf and operator ("grow"). This module does the same with an explicit
:class:`random.Random` (so a search is reproducible from its seed) and our depth convention:
``Node.depth`` counts levels, a lone leaf has depth 1, so the reference's ``MAX_DEPTH = 4`` (root
at depth 0) is ``max_depth=5`` here. Optionally some leaves are numeric constants, which the
reference search never generates.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .ops import OPS, PUBLISHED, PUBLISHED_TERMINALS
from .tree import Node

DEFAULT_CONSTANTS: tuple[float, ...] = (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 3.0)


def random_tree(
    rng: random.Random,
    max_depth: int,
    method: str = "grow",
    ops: Sequence[str] = PUBLISHED,
    terminals: Sequence[str] = PUBLISHED_TERMINALS,
    p_const: float = 0.0,
    *,
    min_depth: int | None = None,
    constants: Sequence[float] = DEFAULT_CONSTANTS,
) -> Node:
    """A random tree of depth ``<= max_depth`` (levels; a leaf is depth 1).

    ``method="full"`` puts operators on every level above ``max_depth``; ``"grow"`` chooses
    leaf or operator with equal odds below ``min_depth`` (default: 3 levels, the reference's
    ``MIN_DEPTH = 2``, capped at ``max_depth``). Operators are drawn uniformly from ``ops``
    (both ``sqr`` and ``pow`` by default, as in the reference); a leaf is a constant from
    ``constants`` with probability ``p_const``, else a terminal drawn uniformly.
    """
    if method not in ("grow", "full"):
        raise ValueError(f"method must be 'grow' or 'full', not {method!r}")
    if max_depth < 1:
        raise ValueError("max_depth must be at least 1")
    unknown = [o for o in ops if o not in OPS]
    if unknown or not ops:
        raise ValueError(f"unknown operators {unknown}" if unknown else "ops is empty")
    if not terminals and p_const < 1:
        raise ValueError("terminals is empty")
    lo = min(3 if min_depth is None else min_depth, max_depth)
    ops = list(ops)

    def leaf() -> Node:
        if p_const > 0 and rng.random() < p_const:
            return Node.const(rng.choice(list(constants)))
        return Node(rng.choice(list(terminals)))

    def build(level: int) -> Node:  # level 1 is the root
        if level >= max_depth:
            return leaf()
        if level >= lo and method == "grow" and rng.random() > 0.5:
            return leaf()
        name = rng.choice(ops)
        return Node(name, tuple(build(level + 1) for _ in range(OPS[name].arity)))

    return build(1)


def ramped_half_and_half(
    rng: random.Random,
    n: int,
    max_depth: int,
    ops: Sequence[str] = PUBLISHED,
    terminals: Sequence[str] = PUBLISHED_TERMINALS,
    p_const: float = 0.0,
    *,
    min_depth: int = 2,
) -> list[Node]:
    """An initial GP population: depths ramp from ``min_depth`` to ``max_depth``, half of the
    trees at each depth built with "full", half with "grow" (Koza's standard initialisation)."""
    depths = list(range(min(min_depth, max_depth), max_depth + 1))
    out: list[Node] = []
    for i in range(n):
        depth = depths[i % len(depths)]
        method = "full" if (i // len(depths)) % 2 == 0 else "grow"
        out.append(
            random_tree(rng, depth, method, ops, terminals, p_const, min_depth=min(3, depth))
        )
    return out
