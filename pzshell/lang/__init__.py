"""The metric language: parse, print, JSON, evaluate, simplify, canonical rank key.

docs/language.md describes the language; :mod:`pzshell.lang.ops` is its operator registry.
The pruning engine needs only ``load_metric`` and ``evaluate``; simplification and the
canonical rank key (sympy) are imported only by who asks, from :mod:`pzshell.lang.algebra`.
"""

from .compile import compile_metric, degenerate_reason, evaluate
from .diagnostics import DegenerateMetric, MetricError
from .ops import EXTENDED, OPS, PUBLISHED, TERMINALS, Op
from .parse import load_metric, parse
from .tree import (
    Node,
    from_json,
    from_json_obj,
    load_tree_file,
    save_tree_file,
    to_infix,
    to_json,
    to_json_obj,
    to_latex,
)

__all__ = [
    "EXTENDED",
    "OPS",
    "PUBLISHED",
    "TERMINALS",
    "DegenerateMetric",
    "MetricError",
    "Node",
    "Op",
    "compile_metric",
    "degenerate_reason",
    "evaluate",
    "from_json",
    "from_json_obj",
    "load_metric",
    "load_tree_file",
    "parse",
    "save_tree_file",
    "to_infix",
    "to_json",
    "to_json_obj",
    "to_latex",
]
