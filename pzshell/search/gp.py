"""Genetic operators on metric trees: pure functions of trees and an explicit RNG."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from ..lang.ops import OPS, PUBLISHED_TERMINALS
from ..lang.random_trees import random_tree
from ..lang.tree import Node


def subtrees(node: Node) -> list[tuple[tuple[int, ...], Node]]:
    """Every subtree with its path (child indices from the root), pre-order."""
    out: list[tuple[tuple[int, ...], Node]] = []

    def go(n: Node, path: tuple[int, ...]) -> None:
        out.append((path, n))
        for i, c in enumerate(n.children):
            go(c, (*path, i))

    go(node, ())
    return out


def replace_at(node: Node, path: tuple[int, ...], new: Node) -> Node:
    if not path:
        return new
    i = path[0]
    kids = list(node.children)
    kids[i] = replace_at(kids[i], path[1:], new)
    return Node(node.data, tuple(kids))


def crossover(rng: random.Random, a: Node, b: Node) -> Node:
    """Subtree crossover: a random subtree of ``a`` replaced by a random subtree of ``b``."""
    path, _ = rng.choice(subtrees(a))
    _, donor = rng.choice(subtrees(b))
    return replace_at(a, path, donor)


def subtree_mutation(
    rng: random.Random,
    a: Node,
    max_depth: int,
    ops: Sequence[str],
    p_const: float = 0.0,
    terminals: Sequence[str] = PUBLISHED_TERMINALS,
) -> Node:
    """Replace a random subtree by a fresh random ("grow") tree of depth <= 3."""
    path, _ = rng.choice(subtrees(a))
    room = max(1, min(3, max_depth - len(path)))
    fresh = random_tree(rng, room, "grow", ops, terminals, p_const, min_depth=1)
    return replace_at(a, path, fresh)


def constant_mutation(rng: random.Random, a: Node) -> Node:
    """Tune one ephemeral constant: scale it by ``exp(N(0, 0.5))`` (its sign is kept), rounded to
    3 significant digits so that near-equal constants share one pruning rule. A tree without
    constants is returned unchanged."""
    consts = [(p, n) for p, n in subtrees(a) if n.is_const]
    if not consts:
        return a
    path, n = rng.choice(consts)
    value = n.value * math.exp(rng.gauss(0.0, 0.5))
    if value == 0 or not math.isfinite(value):
        value = rng.choice((-1.0, 1.0)) * 0.5
    return replace_at(a, path, Node.const(float(f"{value:.3g}")))


def point_mutation(
    rng: random.Random, a: Node, ops: Sequence[str], terminals: Sequence[str] = PUBLISHED_TERMINALS
) -> Node:
    """Change one node to another of the same arity (operator) or another leaf of
    ``terminals``."""
    path, n = rng.choice(subtrees(a))
    if n.is_op:
        same = [o for o in ops if OPS[o].arity == OPS[n.data].arity and o != n.data]
        if not same:
            return a
        return replace_at(a, path, Node(rng.choice(same), n.children))
    others = [t for t in terminals if t != n.data]
    if not others:
        return a
    return replace_at(a, path, Node(rng.choice(others)))


def mutate(
    rng: random.Random,
    a: Node,
    max_depth: int,
    ops: Sequence[str],
    p_const: float = 0.0,
    terminals: Sequence[str] = PUBLISHED_TERMINALS,
) -> Node:
    """Subtree or point mutation; a tree with constants has its constants tuned a third of the
    time (:func:`constant_mutation`)."""
    if a.has_constants and rng.random() < 1 / 3:
        return constant_mutation(rng, a)
    if rng.random() < 0.5:
        return subtree_mutation(rng, a, max_depth, ops, p_const, terminals)
    return point_mutation(rng, a, ops, terminals)


def tournament(rng: random.Random, pool: Sequence, k: int, key) -> object:
    """The best (smallest ``key``) of ``k`` members drawn with replacement."""
    picks = [pool[rng.randrange(len(pool))] for _ in range(max(1, k))]
    return min(picks, key=key)
