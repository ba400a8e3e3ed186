"""Tree -> torch: evaluate a metric on one weight matrix's statistics, in fp32.

Semantics follow the published Pruner-Zero code exactly: constants are tensors the shape of the
weight, binary operators broadcast both operands first, ``div`` divides by the norm of the
broadcast second operand.
"""

from __future__ import annotations

from collections import Counter

import torch

from .diagnostics import DegenerateMetric, MetricError
from .ops import COLUMN_TERMINALS, OPS
from .tree import Node, to_infix


def evaluate(
    node: Node,
    W: torch.Tensor,
    G: torch.Tensor | None = None,
    X: torch.Tensor | None = None,
    S: torch.Tensor | None = None,
    *,
    rows: torch.Tensor | None = None,
    check: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Scores of shape ``W.shape`` (fp32): a weight with a smaller score is pruned first.

    ``dtype`` exists for tests and analysis (float64 separates fp32 rounding from real ties);
    the engine always scores in fp32, as the reference code does.

    ``W`` may be the signed weight; the terminal ``W`` is always its absolute value. Raises
    :class:`DegenerateMetric` (when ``check``) if the scores are NaN/inf or constant, and
    :class:`MetricError` if the metric needs a statistic that was not given.

    ``rows`` (indices into ``W``'s rows): only those rows' scores, shape ``(len(rows), in)``, the
    values of ``evaluate(...)[rows]``. Operators whose result for a row depends on that row alone
    (elementwise ones, ``rown``) are computed on the rows only; an operator that reads other rows
    (``coln``, ``mms``, ``zsn``, ``div``) gets its operands on the whole matrix and its result is
    then cut to the rows. ``check`` looks at the returned scores. A subtree that occurs twice is
    computed once.
    """
    shape = W.shape
    if W.dim() != 2:
        raise MetricError(f"W must be a matrix (out, in), got shape {tuple(shape)}")
    raw: dict[str, torch.Tensor] = {"W": W.detach()}
    column = (1, shape[1])
    for name, t, want in (("G", G, shape), ("X", X, column), ("S", S, column)):
        if t is None:
            continue
        t = t.detach()
        if name in COLUMN_TERMINALS:
            t = t.reshape(1, -1)
        if tuple(t.shape) != tuple(want):
            raise MetricError(
                f"statistic {name} has shape {tuple(t.shape)} but the weight has shape "
                f"{tuple(shape)}: expected {tuple(want)}"
            )
        raw[name] = t
    missing = node.terminals - raw.keys()
    if missing:
        raise MetricError(
            f"metric {to_infix(node)} needs {', '.join(sorted(missing))} but "
            f"{'it was' if len(missing) == 1 else 'they were'} not computed"
        )
    if rows is not None:
        rows = torch.as_tensor(rows, dtype=torch.long, device=W.device)
    # leaves, and subtrees that occur more than once, are computed once
    counts = Counter(sub for _, sub in node.walk())
    keep = {sub for sub, c in counts.items() if c > 1 or not sub.is_op}
    memo: dict[tuple[Node, bool], torch.Tensor] = {}

    def leaf(name: str, cut: bool) -> torch.Tensor:
        t = raw[name]
        if cut and name not in COLUMN_TERMINALS:  # X and S are (1, in): every row's
            t = t[rows]
        t = t.to(device=W.device, dtype=dtype)
        return t.abs() if name == "W" else t

    def ev(n: Node, cut: bool) -> torch.Tensor:
        key = (n, cut)
        if key in memo:
            return memo[key]
        if n.is_terminal:
            out = leaf(n.data, cut)
        elif n.is_const:
            size = (len(rows), shape[1]) if cut else shape
            out = torch.tensor(n.value, dtype=dtype, device=W.device).expand(size)
        else:
            op = OPS[n.data]
            local = op.elementwise or op.row_local
            args = [ev(c, cut and local) for c in n.children]
            if len(args) == 2:
                args = list(torch.broadcast_tensors(*args))
            out = op.torch_fn(*args)
            if cut and not local and out.shape[0] != 1:
                out = out[rows]
        if n in keep:
            memo[key] = out
        return out

    with torch.no_grad():
        scores = ev(node, rows is not None)
        want = shape if rows is None else (len(rows), shape[1])
        if scores.shape != want:
            scores = scores.expand(want)
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
    """A callable ``f(W, G=None, X=None, S=None) -> scores`` for the tree (closure over
    ``evaluate``)."""

    def metric(W, G=None, X=None, S=None, *, check: bool = True):
        return evaluate(node, W, G, X, S, check=check)

    metric.tree = node  # type: ignore[attr-defined]
    metric.terminals = node.terminals  # type: ignore[attr-defined]
    return metric
