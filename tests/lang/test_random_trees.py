"""GP-style random trees (Pruner-Zero's random_tree, with an explicit RNG)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pzshell.lang.ops import EXTENDED, OPS, PUBLISHED
from pzshell.lang.random_trees import ramped_half_and_half, random_tree


def test_depth_bounds_and_determinism():
    for method in ("grow", "full"):
        a = [random_tree(random.Random(3), 5, method) for _ in range(1)]
        b = [random_tree(random.Random(3), 5, method) for _ in range(1)]
        assert a == b
        rng = random.Random(0)
        for _ in range(200):
            t = random_tree(rng, 5, method)
            assert 3 <= t.depth <= 5  # the reference's MIN_DEPTH=2 / MAX_DEPTH=4, counted in levels


def test_full_trees_put_leaves_only_at_the_bottom():
    rng = random.Random(1)
    for _ in range(50):
        t = random_tree(rng, 4, "full")
        paths = [p for p, n in t.walk() if not n.children]
        assert {p.count(".") + 1 for p in paths} == {3}  # every leaf at level 4


def test_operator_and_terminal_choice():
    rng = random.Random(2)
    seen = Counter()
    for _ in range(300):
        t = random_tree(rng, 5, "grow", p_const=0.3)
        seen.update(n.data if not n.is_const else "const" for _, n in t.walk())
    assert set(PUBLISHED) <= set(seen) and not set(EXTENDED) & set(seen)
    assert {"W", "G", "X", "const"} <= set(seen)
    t = random_tree(random.Random(0), 6, "full", ops=("rown", "mul"), terminals=("X",))
    assert {n.data for _, n in t.walk()} <= {"rown", "mul", "X"}
    t = random_tree(random.Random(0), 1)
    assert t.data in ("W", "G", "X")


def test_bad_arguments():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="method"):
        random_tree(rng, 3, "half")
    with pytest.raises(ValueError, match="unknown operators"):
        random_tree(rng, 3, ops=("foo",))
    with pytest.raises(ValueError, match="max_depth"):
        random_tree(rng, 0)


def test_ramped_half_and_half():
    pop = ramped_half_and_half(random.Random(4), 40, 6, ops=tuple(OPS))
    assert len(pop) == 40
    depths = Counter(t.depth for t in pop)
    assert max(depths) == 6 and min(depths) <= 3
