"""Fixtures and hypothesis strategies for the metric-language tests."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from pzshell.lang import Node
from pzshell.lang.ops import OPS, PUBLISHED

# Tests must stay fast on a shared 2-core machine; CI may raise the budget with
# HYPOTHESIS_PROFILE=thorough.
settings.register_profile(
    "lang", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "lang"))


constants = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, 0.001, 100.0]),
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False).map(lambda v: round(v, 3)),
).map(Node.const)
leaves = st.one_of(st.sampled_from([Node("W"), Node("G"), Node("X")]), constants)


def trees(max_leaves: int = 12, ops: tuple[str, ...] | None = None, leaf=leaves):
    """Random trees over ``ops`` (all operators by default), shrinking towards small trees."""
    names = tuple(OPS) if ops is None else ops
    unary = tuple(n for n in names if OPS[n].arity == 1)
    binary = tuple(n for n in names if OPS[n].arity == 2)

    def extend(children):
        return st.one_of(
            st.tuples(st.sampled_from(unary), children).map(lambda t: Node(t[0], (t[1],))),
            st.tuples(st.sampled_from(binary), children, children).map(
                lambda t: Node(t[0], (t[1], t[2]))
            ),
        )

    return st.recursive(leaf, extend, max_leaves=max_leaves)


published_trees = trees(ops=PUBLISHED)


def make_inputs(seed: int, out: int = 8, inp: int = 32, dtype=torch.float32):
    """Signed W (evaluate takes |w|), non-negative G and X, from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g, dtype=torch.float64)
    G = torch.rand(out, inp, generator=g, dtype=torch.float64) * 2
    X = torch.rand(1, inp, generator=g, dtype=torch.float64) + 0.05
    return W.to(dtype), G.to(dtype), X.to(dtype)


@pytest.fixture
def inputs():
    return make_inputs(0)
