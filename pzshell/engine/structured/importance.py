"""Importance: a per-weight score (first/second-order Taylor, Wanda, or any formula of the
metric language) summed over the weights of each unit (KV group, MLP channel).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import PzError
from ...lang import Node, evaluate, load_metric, to_infix
from ..stats import stat_key
from .anatomy import BlockParts, StructuredError
from .statistics import CalibStats

BUILTIN_IMPORTANCE = {
    "taylor": "first-order Taylor |w * g| (g: mean gradient over calibration windows)",
    "taylor_2nd": "|w * g| + 0.5 * w^2 * mean(g_s^2): adds the diagonal second-order term",
    "wanda": "|w| * sqrt(mean x_j^2) (Wanda)",
}


@dataclass(frozen=True)
class Importance:
    """A per-weight importance: a built-in name, or a metric-language tree."""

    name: str
    metric: Node | None = None

    @property
    def needs_gradients(self) -> bool:
        if self.metric is not None:
            return "G" in self.metric.terminals
        return self.name in ("taylor", "taylor_2nd")

    @property
    def needs_activations(self) -> bool:
        if self.metric is not None:
            return "X" in self.metric.terminals
        return self.name == "wanda"

    @property
    def label(self) -> str:
        return self.name if self.metric is None else f"metric {to_infix(self.metric)}"


def parse_importance(spec: str | Node) -> Importance:
    """``taylor``, ``taylor_2nd``, ``wanda``, or any formula / JSON tree / shipped tree name."""
    if isinstance(spec, Node):
        return Importance(to_infix(spec), spec)
    if spec in BUILTIN_IMPORTANCE:
        return Importance(spec)
    try:
        tree = load_metric(spec)
    except PzError as e:
        raise StructuredError(
            f"importance method '{spec}' is neither one of {', '.join(BUILTIN_IMPORTANCE)} nor "
            f"a metric formula or tree: {e}"
        ) from None
    if "S" in tree.terminals:
        raise StructuredError(
            f"importance metric {to_infix(tree)} reads S, SparseGPT's column curvature, which "
            f"structured pruning does not compute (it collects no Hessian): use W, G and X"
        )
    return Importance(to_infix(tree), tree)


def weight_scores(
    imp: Importance,
    weight: torch.Tensor,
    *,
    grad_mean: torch.Tensor | None = None,
    grad_sq_mean: torch.Tensor | None = None,
    G: torch.Tensor | None = None,
    X: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pure: the per-weight importance of one linear, fp32, shape of ``weight``."""
    w = weight.detach().float()
    if imp.metric is not None:
        # the degenerate-metric check of the prune path: NaN/inf or constant scores are refused
        return evaluate(imp.metric, w, G=G, X=X)
    if imp.name == "wanda":
        return w.abs() * torch.sqrt(X.float().reshape(1, -1))
    first = (w * grad_mean.float()).abs()
    if imp.name == "taylor":
        return first
    return first + 0.5 * w * w * grad_sq_mean.float()


def attention_group_scores(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, head_dim: int
) -> torch.Tensor:
    """Pure: per KV group, the sum of the per-weight scores of its q/k/v rows and o columns.

    Query head ``h`` reads KV head ``h // group_size`` (transformers' ``repeat_kv``), so group
    ``g`` owns the ``group_size * head_dim`` consecutive rows of ``q_proj`` starting at
    ``g * group_size * head_dim``.
    """
    n_kv = k.shape[0] // head_dim
    per_q = q.sum(1).reshape(n_kv, -1).sum(1)
    per_k = k.sum(1).reshape(n_kv, -1).sum(1)
    per_v = v.sum(1).reshape(n_kv, -1).sum(1)
    per_o = o.sum(0).reshape(n_kv, -1).sum(1)
    return per_q + per_k + per_v + per_o


def mlp_channel_scores(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """Pure: per intermediate channel, the scores of its gate/up rows and down column."""
    return gate.sum(1) + up.sum(1) + down.sum(0)


def unit_importance(
    parts: list[BlockParts], imp: Importance, stats: CalibStats
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block: (importance of each KV group, importance of each MLP channel), fp64."""
    out = []
    for p in parts:
        scores = {}
        for name, lin in p.linears().items():
            key = stat_key(name, p.index)
            kw = {}
            if imp.needs_gradients:
                if key not in stats.grad_mean:
                    raise StructuredError(f"no gradient statistics for {key}")
                kw["grad_mean"] = stats.grad_mean[key]
                kw["grad_sq_mean"] = stats.grad_sq_mean[key]
                if imp.metric is not None:
                    kw["G"] = stats.G(key)
            if imp.needs_activations:
                if key not in stats.x_sq:
                    raise StructuredError(f"no activation statistics for {key}")
                kw["X"] = stats.x_sq[key]
            w = lin.weight.data
            for k in ("grad_mean", "grad_sq_mean", "G", "X"):
                if k in kw:
                    kw[k] = kw[k].to(w.device)
            s = weight_scores(imp, w, **kw)
            if not torch.isfinite(s).all():
                raise StructuredError(
                    f"importance {imp.label} is not finite at block {p.index} {name}"
                )
            scores[name.split(".")[1]] = s
        attn = (
            attention_group_scores(
                scores["q_proj"], scores["k_proj"], scores["v_proj"], scores["o_proj"], p.head_dim
            )
            if p.k is not None
            else torch.zeros(0)
        )
        mlp = (
            mlp_channel_scores(scores["gate_proj"], scores["up_proj"], scores["down_proj"])
            if p.gate is not None
            else torch.zeros(0)
        )
        out.append((attn.double().cpu(), mlp.double().cpu()))
    return out
