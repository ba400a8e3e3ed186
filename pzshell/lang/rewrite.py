"""The simplifier: apply the rules of :mod:`pzshell.lang.rules` bottom-up to a fixpoint.

The simplified tree scores the same weights with the same values (up to fp32 rounding, see each
rule's ``exact``); :func:`explain` lists the rewrites made, for the command line and the editor.
Results are cached per (immutable) node.
"""

from __future__ import annotations

from functools import lru_cache

from .ops import OPS
from .rules import RULES, Rule, row_shaped
from .tree import Node, to_infix

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


__all__ = ["explain", "rewrite_once", "simplify"]
