"""Allocation formulas: a block's share of the sparsity typed as a formula over per-block
statistics, so that an allocation can be written, saved and compared like a metric.

Terms (one value per decoder block, from one pass over the *dense* model, see
:func:`pzshell.engine.layer_ratios.block_statistics`):

* ``D``: the block's outlier ratio, the percentage of its Wanda scores ``|W| * sqrt(X)`` above
  ``M`` times their mean (OWL's statistic; ``--owl_m``);
* ``A``: the angular distance between the block's input and output hidden states, the mean over
  calibration tokens of ``arccos(cos(h_in, h_out)) / pi`` (0: the block changes nothing);
* ``L``: the block's depth, ``index / (blocks - 1)`` (0 for the first block, 1 for the last).

A formula is written with these names, numbers, ``+ - * / ^`` (or ``**``) and the metric
language's one-operand functions (``log``, ``sqrt``, ``exp``, ``abs``, ``tanh``, ``sqr``,
``mms``, ``zsn``; ``mms`` and ``zsn`` normalise over the blocks). Its value ``v`` says how much a
block *keeps*: as in OWL, ``v`` is spread linearly onto ``[0, 2*lambda]`` and block ``l`` keeps
``1 - s + v'_l - mean(v')``, so a larger value keeps more weights and the model-wide sparsity stays
``s`` (then :func:`~pzshell.engine.layer_ratios.fit_to_target` clips and redistributes). The
formula ``D`` *is* OWL. A formula that is constant over the blocks, or not finite for one, is
refused before any weight changes.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass

import torch

from ..errors import PzError
from ..lang.ops import OPS

TERMS: dict[str, str] = {
    "D": "outlier ratio (% of Wanda scores above M x the block mean)",
    "A": "angular distance between the block's input and output (0..1)",
    "L": "depth: block index / (blocks - 1)",
}
FUNCTIONS = ("log", "sqrt", "exp", "abs", "tanh", "sqr", "neg", "mms", "zsn")


class AllocationFormulaError(PzError):
    pass


@dataclass(frozen=True)
class AllocationFormula:
    """A parsed allocation formula: ``text`` and its syntax tree."""

    text: str
    tree: ast.expr

    @property
    def terms(self) -> set[str]:
        called = {id(n.func) for n in ast.walk(self.tree) if isinstance(n, ast.Call)}
        return {
            n.id
            for n in ast.walk(self.tree)
            if isinstance(n, ast.Name) and n.id in TERMS and id(n) not in called
        }

    def values(self, stats: dict[str, list[float]]) -> list[float]:
        """The formula on every block: a list as long as the blocks; a clear error when it is
        constant over them or not finite for one (named)."""
        n = len(next(iter(stats.values())))
        env = {k: torch.tensor(v, dtype=torch.float64) for k, v in stats.items()}
        with torch.no_grad():
            out = _eval(self.tree, env, self.text)
        if out.dim() == 0:
            out = out.expand(n)
        bad = [i for i, x in enumerate(out.tolist()) if not math.isfinite(x)]
        if bad:
            raise AllocationFormulaError(
                f"allocation formula '{self.text}' is not finite for block "
                f"{', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''} "
                f"({_describe(stats, bad[0])}); guard it (for example, add a constant to a divisor)"
            )
        vals = out.tolist()
        if n > 1 and max(vals) - min(vals) <= 1e-12 * max(1.0, abs(max(vals))):
            raise AllocationFormulaError(
                f"allocation formula '{self.text}' gives every block the same value "
                f"({vals[0]:g}): it carries no allocation; use --allocation uniform"
            )
        return vals


def is_formula(allocation: str) -> bool:
    return allocation not in ("uniform", "owl")


def parse_allocation(text: str) -> AllocationFormula:
    """Parse ``text``; an :class:`AllocationFormulaError` that says where and what is wrong."""
    src = text.replace("^", "**").strip()
    if not src:
        raise AllocationFormulaError("the allocation formula is empty")
    try:
        tree = ast.parse(src, mode="eval").body
    except SyntaxError as e:
        col = (e.offset or 1) - 1
        raise AllocationFormulaError(
            f"allocation formula '{text}' is not a formula at column {col + 1}:\n  {text}\n  "
            f"{' ' * col}^ (write terms {', '.join(TERMS)}, numbers, + - * / ^ and functions "
            f"such as log(D))"
        ) from None
    _check(tree, text)
    formula = AllocationFormula(text, tree)
    if not formula.terms:
        raise AllocationFormulaError(
            f"allocation formula '{text}' uses no block statistic: it would give every block "
            f"the same sparsity; use one of {', '.join(f'{k} ({v})' for k, v in TERMS.items())}"
        )
    return formula


def spread(values: list[float], sparsity: float, lam: float) -> list[float]:
    """OWL's rule on any per-block values: onto ``[0, 2*lambda]``, then a block keeps
    ``1 - s + v' - mean(v')`` (a larger value keeps more)."""
    v = torch.tensor(values, dtype=torch.float64)
    lo, hi = v.min(), v.max()
    if hi - lo <= 0:
        return [sparsity] * len(values)
    v = (v - lo) / (hi - lo) * (2 * lam)
    keep = v - v.mean() + (1 - sparsity)
    return [float(1 - k) for k in keep]


# ---- the checked subset of Python expressions ----------------------------------------------------
_BIN = {ast.Add: torch.add, ast.Sub: torch.sub, ast.Mult: torch.mul, ast.Div: torch.div}


def _check(node: ast.AST, text: str) -> None:
    called = {id(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and id(n) in called:
            continue  # a function's name: checked with its call
        if isinstance(n, ast.Name):
            if n.id not in TERMS:
                raise AllocationFormulaError(
                    f"allocation formula '{text}': unknown name '{n.id}' at column "
                    f"{n.col_offset + 1}; the terms are "
                    + ", ".join(f"{k} ({v})" for k, v in TERMS.items())
                )
        elif isinstance(n, ast.Call):
            if not isinstance(n.func, ast.Name) or n.func.id not in FUNCTIONS:
                name = n.func.id if isinstance(n.func, ast.Name) else ast.unparse(n.func)
                raise AllocationFormulaError(
                    f"allocation formula '{text}': unknown function '{name}' at column "
                    f"{n.col_offset + 1}; use one of {', '.join(FUNCTIONS)}"
                )
            if len(n.args) != 1 or n.keywords:
                raise AllocationFormulaError(
                    f"allocation formula '{text}': {n.func.id}() takes one operand"
                )
        elif isinstance(n, ast.Constant):
            if not isinstance(n.value, (int, float)) or isinstance(n.value, bool):
                raise AllocationFormulaError(
                    f"allocation formula '{text}': {n.value!r} is not a number"
                )
        elif isinstance(n, ast.BinOp):
            if type(n.op) not in (*_BIN, ast.Pow):
                raise AllocationFormulaError(
                    f"allocation formula '{text}': operator {ast.unparse(n)!r} is not allowed "
                    f"(use + - * / ^)"
                )
        elif isinstance(n, ast.UnaryOp):
            if not isinstance(n.op, (ast.USub, ast.UAdd)):
                raise AllocationFormulaError(f"allocation formula '{text}': only - and + signs")
        elif not isinstance(n, (ast.operator, ast.unaryop, ast.expr_context, ast.Load)):
            raise AllocationFormulaError(
                f"allocation formula '{text}': {type(n).__name__.lower()} is not part of the "
                f"formula language"
            )


def _eval(node: ast.expr, env: dict[str, torch.Tensor], text: str) -> torch.Tensor:
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.Constant):
        return torch.tensor(float(node.value), dtype=torch.float64)
    if isinstance(node, ast.UnaryOp):
        x = _eval(node.operand, env, text)
        return -x if isinstance(node.op, ast.USub) else x
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, env, text), _eval(node.right, env, text)
        if isinstance(node.op, ast.Pow):
            return torch.pow(a, b)
        return _BIN[type(node.op)](a, b)
    if isinstance(node, ast.Call):
        x = _eval(node.args[0], env, text)
        name = node.func.id  # type: ignore[attr-defined]
        if name in ("mms", "zsn") and x.dim() == 0:
            raise AllocationFormulaError(
                f"allocation formula '{text}': {name}() of a number normalises nothing"
            )
        return OPS[name].torch_fn(x)
    raise AllocationFormulaError(f"allocation formula '{text}': cannot evaluate it")


def _describe(stats: dict[str, list[float]], i: int) -> str:
    return ", ".join(f"{k} = {v[i]:.4g}" for k, v in stats.items())
