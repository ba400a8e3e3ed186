"""The metric language: parse, print, JSON, evaluate, simplify, canonical rank key.

The pruning engine needs only ``load_metric`` and ``evaluate``; algebra (sympy) is imported
lazily by :mod:`pzshell.lang.algebra`.
"""

from .compile import compile_metric, degenerate_reason, evaluate
from .errors import DegenerateMetric, MetricError
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
)  # fmt: skip

__all__ = [
    "EXTENDED", "OPS", "PUBLISHED", "TERMINALS", "DegenerateMetric", "MetricError", "Node", "Op",
    "compile_metric", "degenerate_reason", "evaluate", "from_json", "from_json_obj",
    "load_metric", "load_tree_file", "parse", "save_tree_file", "to_infix", "to_json",
    "to_json_obj", "to_latex",
]  # fmt: skip
