"""Tree -> torch: evaluate a metric on one weight matrix's statistics, in fp32.

Semantics follow the published Pruner-Zero code exactly: constants are tensors the shape of the
weight, binary operators broadcast both operands first, ``div`` divides by the norm of the
broadcast second operand.
"""

from __future__ import annotations

import torch

from .diagnostics import DegenerateMetric, MetricError
from .ops import OPS
from .tree import Node, to_infix


def evaluate(
    node: Node,
    W: torch.Tensor,
    G: torch.Tensor | None = None,
    X: torch.Tensor | None = None,
    *,
    check: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Scores of shape ``W.shape`` (fp32): a weight with a smaller score is pruned first.

    ``dtype`` exists for tests and analysis (float64 separates fp32 rounding from real ties);
    the engine always scores in fp32, as the reference code does.

    ``W`` may be the signed weight; the terminal ``W`` is always its absolute value. Raises
    :class:`DegenerateMetric` (when ``check``) if the scores are NaN/inf or constant, and
    :class:`MetricError` if the metric needs a statistic that was not given.
    """
    shape = W.shape
    if W.dim() != 2:
        raise MetricError(f"W must be a matrix (out, in), got shape {tuple(shape)}")
    leaves: dict[str, torch.Tensor] = {"W": W.detach().to(dtype).abs()}
    for name, t, want in (("G", G, shape), ("X", X, (1, shape[1]))):
        if t is None:
            continue
        t = t.detach().to(device=W.device, dtype=dtype)
        if name == "X":
            t = t.reshape(1, -1)
        if tuple(t.shape) != tuple(want):
            raise MetricError(
                f"statistic {name} has shape {tuple(t.shape)} but the weight has shape "
                f"{tuple(shape)}: expected {tuple(want)}"
            )
        leaves[name] = t
    missing = node.terminals - leaves.keys()
    if missing:
        raise MetricError(
            f"metric {to_infix(node)} needs {', '.join(sorted(missing))} but "
            f"{'it was' if len(missing) == 1 else 'they were'} not computed"
        )
    consts: dict[str, torch.Tensor] = {}

    def ev(n: Node) -> torch.Tensor:
        if n.is_terminal:
            return leaves[n.data]
        if n.is_const:
            if n.data not in consts:
                consts[n.data] = torch.tensor(n.value, dtype=dtype, device=W.device).expand(shape)
            return consts[n.data]
        args = [ev(c) for c in n.children]
        if len(args) == 2:
            args = list(torch.broadcast_tensors(*args))
        return OPS[n.data].torch_fn(*args)

    with torch.no_grad():
        scores = ev(node)
        if scores.shape != shape:
            scores = scores.expand(shape)
        if check:
            reason = degenerate_reason(scores)
            if reason:
                raise DegenerateMetric(f"metric {to_infix(node)} is degenerate: {reason}")
    return scores


def degenerate_reason(scores: torch.Tensor) -> str | None:
    """Why these scores cannot rank weights, or None if they can."""
    n_nan = int(torch.isnan(scores).sum())
    if n_nan:
        return f"{n_nan} of {scores.numel()} scores are NaN"
    n_inf = int(torch.isinf(scores).sum())
    if n_inf:
        return f"{n_inf} of {scores.numel()} scores are infinite"
    if scores.numel() > 1 and bool((scores == scores.reshape(-1)[0]).all()):
        return f"all scores equal {scores.reshape(-1)[0].item():g} (no ranking information)"
    return None


def compile_metric(node: Node):
    """A callable ``f(W, G=None, X=None) -> scores`` for the tree (closure over ``evaluate``)."""

    def metric(W, G=None, X=None, *, check: bool = True):
        return evaluate(node, W, G, X, check=check)

    metric.tree = node  # type: ignore[attr-defined]
    metric.terminals = node.terminals  # type: ignore[attr-defined]
    return metric
