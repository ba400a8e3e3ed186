"""GQA-aware structured pruning: units, importance, allocation and surgery.

Units (what is removed together):

* **attention**: a KV group, one key/value head and the ``q:kv`` query heads that read it
  (rows of ``q_proj``/``k_proj``/``v_proj``, the matching columns of ``o_proj``), so the
  query-to-key/value head ratio of grouped-query attention never changes;
* **mlp**: an intermediate channel (a row of ``gate_proj`` and ``up_proj``, a column of
  ``down_proj``);
* **depth**: a block left with no attention group and no MLP channel is an identity map and can
  be removed from the model.

Importance is any per-weight score (first/second-order Taylor, Wanda, or a formula of the metric
language) summed over the weights of a unit. Allocation picks the units to remove: *global*
ranks every unit of the model by importance per parameter (a fractional knapsack), *layer-wise*
gives each block its own budget from a block importance (how much a block changes its input)
and splits it between attention and MLP by a fixed ``A:M`` share. Surgery builds new, smaller
``nn.Linear`` modules, so the pruned model really is smaller and faster.

Everything here is a function of tensors or modules; the driver that loads data, evaluates and
saves lives in :mod:`pzshell.structured_job`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PzError
from ..lang import Node, evaluate, load_metric, to_infix
from ..models.arch import decoder_blocks
from .events import ProgressFn, emit

ATTN, MLP = 0, 1
KIND_NAMES = ("attention", "mlp")
STRATEGIES = ("global", "inverse", "uniform")
LAYER_IMPORTANCE = ("cosine", "angular")


class StructuredError(PzError):
    pass


# ------------------------------------------------------------------------------------------------
# Empty modules: what a block's attention / MLP becomes when all of its units are removed
# ------------------------------------------------------------------------------------------------


class EmptyAttention(nn.Module):
    """Attention with no KV group left: contributes nothing (or its output bias) to the residual.

    Returns ``(output, None)`` like the transformers attention modules.
    """

    def __init__(self, hidden_size: int, bias: torch.Tensor | None = None, layer_idx: int = 0):
        super().__init__()
        self.hidden_size = hidden_size
        self.layer_idx = layer_idx
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        cache = kwargs.get("past_key_values", kwargs.get("past_key_value"))
        if cache is not None and hasattr(cache, "update"):
            # keep the KV cache's length right for this layer (the model reads its length from
            # layer 0): zero heads, one column per new token
            b, t = hidden_states.shape[:2]
            empty = hidden_states.new_zeros(b, 0, t, 1)
            cache.update(empty, empty, self.layer_idx)
        out = torch.zeros_like(hidden_states)
        if self.bias is not None:
            out = out + self.bias
        return out, None


class EmptyMLP(nn.Module):
    """An MLP with no intermediate channel left: adds nothing (or its output bias)."""

    def __init__(self, hidden_size: int, bias: torch.Tensor | None = None):
        super().__init__()
        self.hidden_size = hidden_size
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        return out + self.bias if self.bias is not None else out


# ------------------------------------------------------------------------------------------------
# Block anatomy
# ------------------------------------------------------------------------------------------------

_ATTN_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP_NAMES = ("gate_proj", "up_proj", "down_proj")


@dataclass
class BlockParts:
    """The prunable pieces of one decoder block (``None`` where a part is already empty)."""

    index: int
    block: nn.Module
    attn: nn.Module
    mlp: nn.Module
    head_dim: int
    hidden_size: int
    q: nn.Linear | None = None
    k: nn.Linear | None = None
    v: nn.Linear | None = None
    o: nn.Linear | None = None
    gate: nn.Linear | None = None
    up: nn.Linear | None = None
    down: nn.Linear | None = None

    @property
    def kv_heads(self) -> int:
        return 0 if self.k is None else self.k.out_features // self.head_dim

    @property
    def q_heads(self) -> int:
        return 0 if self.q is None else self.q.out_features // self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads per KV head (0 for an empty attention)."""
        return self.q_heads // self.kv_heads if self.kv_heads else 0

    @property
    def intermediate(self) -> int:
        return 0 if self.gate is None else self.gate.out_features

    def n_units(self, kind: int) -> int:
        return self.kv_heads if kind == ATTN else self.intermediate

    def unit_cost(self, kind: int) -> int:
        """Parameters removed with one unit of ``kind`` (weights and the biases of its rows)."""
        if kind == ATTN:
            if self.k is None:
                return 0
            r, hd = self.group_size, self.head_dim
            cost = r * hd * self.q.in_features + 2 * hd * self.k.in_features
            cost += r * hd * self.o.out_features
            for lin, rows in ((self.q, r * hd), (self.k, hd), (self.v, hd)):
                if lin.bias is not None:
                    cost += rows
            return cost
        if self.gate is None:
            return 0
        cost = self.gate.in_features + self.up.in_features + self.down.out_features
        cost += int(self.gate.bias is not None) + int(self.up.bias is not None)
        return cost

    def linears(self) -> dict[str, nn.Linear]:
        """The prunable linears by their name inside the block (``self_attn.q_proj`` ...)."""
        out = {}
        for prefix, names in (("self_attn", _ATTN_NAMES), ("mlp", _MLP_NAMES)):
            for n in names:
                lin = getattr(self, _SHORT[n])
                if lin is not None:
                    out[f"{prefix}.{n}"] = lin
        return out


_SHORT = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
}  # fmt: skip


def linear_params(lin: nn.Linear) -> int:
    return lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)


def _head_dim(attn: nn.Module, config) -> int:
    hd = getattr(attn, "head_dim", None) or getattr(config, "head_dim", None)
    if not hd:
        hd = config.hidden_size // config.num_attention_heads
    return int(hd)


def block_parts(block: nn.Module, index: int, config) -> BlockParts:
    """Find the attention and MLP pieces of a LLaMA-family block, or raise StructuredError."""
    mt = getattr(config, "model_type", "?")
    attn = getattr(block, "self_attn", None)
    mlp = getattr(block, "mlp", None)
    if attn is None or mlp is None:
        raise StructuredError(
            f"block {index} of this '{mt}' model has no self_attn/mlp: GQA-aware structured "
            f"pruning supports LLaMA-family blocks (llama, mistral, qwen2, qwen3, smollm)"
        )
    hidden = int(config.hidden_size)
    parts = BlockParts(index, block, attn, mlp, _head_dim(attn, config), hidden)
    if not isinstance(attn, EmptyAttention):
        lins = [getattr(attn, n, None) for n in _ATTN_NAMES]
        if not all(isinstance(x, nn.Linear) for x in lins):
            raise StructuredError(
                f"block {index} of this '{mt}' model has no separate q_proj/k_proj/v_proj/o_proj "
                f"linears (fused or non-GQA attention): GQA-aware structured pruning needs "
                f"LLaMA-style attention"
            )
        parts.q, parts.k, parts.v, parts.o = lins
        hd = parts.head_dim
        if (
            parts.k.out_features % hd
            or parts.q.out_features % hd
            or parts.v.out_features != parts.k.out_features
            or parts.o.in_features != parts.q.out_features
            or parts.k.out_features == 0
            or parts.q_heads % parts.kv_heads
        ):
            raise StructuredError(
                f"block {index}: attention shapes q {tuple(parts.q.weight.shape)}, k "
                f"{tuple(parts.k.weight.shape)}, o {tuple(parts.o.weight.shape)} are not grouped-"
                f"query attention with head_dim {hd}"
            )
    if not isinstance(mlp, EmptyMLP):
        lins = [getattr(mlp, n, None) for n in _MLP_NAMES]
        if not all(isinstance(x, nn.Linear) for x in lins):
            raise StructuredError(
                f"block {index} of this '{mt}' model has no gate_proj/up_proj/down_proj MLP: "
                f"structured pruning needs a LLaMA-style gated MLP"
            )
        parts.gate, parts.up, parts.down = lins
    return parts


def model_parts(model: nn.Module) -> list[BlockParts]:
    blocks = decoder_blocks(model)
    return [block_parts(b, i, model.config) for i, b in enumerate(blocks)]


def prunable_params(parts: list[BlockParts]) -> int:
    """Parameters of the block linears (weights and biases): the population the ratio counts."""
    return sum(linear_params(lin) for p in parts for lin in p.linears().values())


def model_params(model: nn.Module) -> int:
    """All parameters, a tied tensor counted once."""
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------
# Calibration statistics: gradients (first and second moments), activations, block distances
# ------------------------------------------------------------------------------------------------


@dataclass
class CalibStats:
    """Statistics of the dense model over calibration windows, keyed ``"{block}.{linear}"``.

    ``grad_mean``: mean over windows of dL/dw; ``grad_sq_mean``: mean of (dL/dw)^2 (the diagonal
    Fisher, the usual stand-in for the Hessian diagonal); ``x_sq``: mean over tokens of x_j^2 of
    each linear's input (``(1, in)``, the ``X`` of the metric language); ``block_cosine`` /
    ``block_angular``: per block the mean over tokens of ``1 - cos(h_in, h_out)`` and of
    ``arccos(cos(h_in, h_out)) / pi``.
    """

    nsamples: int
    tokens: int
    grad_mean: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_sq_mean: dict[str, torch.Tensor] = field(default_factory=dict)
    x_sq: dict[str, torch.Tensor] = field(default_factory=dict)
    block_cosine: list[float] = field(default_factory=list)
    block_angular: list[float] = field(default_factory=list)

    def block_importance(self, kind: str = "cosine") -> list[float]:
        if kind not in LAYER_IMPORTANCE:
            raise StructuredError(
                f"unknown layer importance '{kind}'; choose from {', '.join(LAYER_IMPORTANCE)}"
            )
        return list(self.block_cosine if kind == "cosine" else self.block_angular)

    def G(self, key: str, scale: float = 100.0) -> torch.Tensor:
        """The metric language's gradient statistic ``sqrt(sum_s (scale * g_s)^2)``."""
        return scale * torch.sqrt(self.grad_sq_mean[key] * self.nsamples)


def collect_stats(
    model: nn.Module,
    calib_ids: torch.Tensor,
    *,
    gradients: bool = True,
    activations: bool = True,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
) -> CalibStats:
    """One pass over the calibration windows of the (dense) model, with hooks.

    With ``gradients``, every window gets its own forward and backward pass (per-sample
    gradients: the second moment needs them); otherwise windows go through in batches without
    autograd. Only block linear weights ever require grad.
    """
    parts = model_parts(model)
    blocks = [p.block for p in parts]
    lins = {f"{p.index}.{n}": lin for p in parts for n, lin in p.linears().items()}
    n = calib_ids.shape[0]
    if n < 1:
        raise StructuredError("structured pruning needs at least one calibration window")
    stats = CalibStats(nsamples=n, tokens=int(calib_ids.numel()))
    dev = next(model.parameters()).device
    sq = {
        k: torch.zeros(lin.in_features, dtype=torch.float32, device=dev) for k, lin in lins.items()
    }
    n_tok = dict.fromkeys(lins, 0)
    dist = torch.zeros(len(blocks), 2, dtype=torch.float64)
    dist_count = [0] * len(blocks)
    block_in: dict[int, torch.Tensor] = {}
    handles = []

    def lin_hook(key):
        def hook(module, args, output):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sq[key] += (x * x).sum(0)
            n_tok[key] += x.shape[0]

        return hook

    def pre_hook(i):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            block_in[i] = h.detach()

        return hook

    def post_hook(i):
        def hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            h_in = block_in.pop(i).float()
            cos = F.cosine_similarity(h_in, out.detach().float(), dim=-1).clamp(-1.0, 1.0)
            dist[i, 0] += float((1.0 - cos).sum())
            dist[i, 1] += float((torch.arccos(cos) / math.pi).sum())
            dist_count[i] += cos.numel()

        return hook

    for i, b in enumerate(blocks):
        handles.append(b.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
        handles.append(b.register_forward_hook(post_hook(i), with_kwargs=True))
    if activations:
        for k, lin in lins.items():
            handles.append(lin.register_forward_hook(lin_hook(k)))
    saved = {p: p.requires_grad for p in model.parameters()}
    g_sum: dict[str, torch.Tensor] = {}
    g_sq: dict[str, torch.Tensor] = {}
    try:
        if gradients:
            for p in model.parameters():
                p.requires_grad_(False)
            for lin in lins.values():
                lin.weight.requires_grad_(True)
            g_sum = {
                k: torch.zeros_like(lin.weight, dtype=torch.float32) for k, lin in lins.items()
            }
            g_sq = {k: torch.zeros_like(lin.weight, dtype=torch.float32) for k, lin in lins.items()}
            for s in range(n):
                ids = calib_ids[s : s + 1].to(dev)
                with torch.enable_grad():
                    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                    loss.backward()
                for k, lin in lins.items():
                    g = lin.weight.grad
                    if g is not None:
                        g = g.float()
                        g_sum[k] += g
                        g_sq[k].addcmul_(g, g)
                        lin.weight.grad = None
                emit(progress, "stats", s + 1, n, f"window {s + 1} (forward+backward)")
        else:
            with torch.no_grad():
                for start in range(0, n, batch_size):
                    ids = calib_ids[start : start + batch_size].to(dev)
                    model(input_ids=ids, use_cache=False)
                    done = min(start + batch_size, n)
                    emit(progress, "stats", done, n, f"window {done}")
    finally:
        for h in handles:
            h.remove()
        for p, flag in saved.items():
            p.requires_grad_(flag)
            p.grad = None
    stats.grad_mean = {k: v.div_(n) for k, v in g_sum.items()}
    stats.grad_sq_mean = {k: v.div_(n) for k, v in g_sq.items()}
    if activations:
        stats.x_sq = {k: (v / max(n_tok[k], 1)).reshape(1, -1) for k, v in sq.items()}
    cnt = torch.tensor([max(c, 1) for c in dist_count], dtype=torch.float64)
    stats.block_cosine = (dist[:, 0] / cnt).tolist()
    stats.block_angular = (dist[:, 1] / cnt).tolist()
    return stats


# ------------------------------------------------------------------------------------------------
# Importance
# ------------------------------------------------------------------------------------------------

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
            f"--importance_method '{spec}' is neither one of {', '.join(BUILTIN_IMPORTANCE)} nor "
            f"a metric formula or tree: {e}"
        ) from None
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
        return evaluate(imp.metric, w, G=G, X=X, check=False)
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
            key = f"{p.index}.{name}"
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
                scores["q_proj"],
                scores["k_proj"],
                scores["v_proj"],
                scores["o_proj"],
                p.head_dim,
            )  # fmt: skip
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


# ------------------------------------------------------------------------------------------------
# The unit table and allocation
# ------------------------------------------------------------------------------------------------


@dataclass
class UnitTable:
    """Every prunable unit of the model, struct-of-arrays (``kind``: 0 attention, 1 mlp)."""

    block: torch.Tensor  # long
    kind: torch.Tensor  # long
    index: torch.Tensor  # long
    importance: torch.Tensor  # float64
    cost: torch.Tensor  # long
    kept: torch.Tensor  # bool

    def __len__(self) -> int:
        return self.block.numel()

    @classmethod
    def build(
        cls, parts: list[BlockParts], importance: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> UnitTable:
        cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("b", "k", "i", "imp", "c")}
        for p, scores in zip(parts, importance, strict=True):
            for kind in (ATTN, MLP):
                n = p.n_units(kind)
                if n == 0:
                    continue
                s = scores[kind]
                if s.numel() != n:
                    raise StructuredError(
                        f"block {p.index}: {s.numel()} {KIND_NAMES[kind]} scores for {n} units"
                    )
                cols["b"].append(torch.full((n,), p.index, dtype=torch.long))
                cols["k"].append(torch.full((n,), kind, dtype=torch.long))
                cols["i"].append(torch.arange(n))
                cols["imp"].append(s.double())
                cols["c"].append(torch.full((n,), p.unit_cost(kind), dtype=torch.long))
        cat = {k: (torch.cat(v) if v else torch.zeros(0)) for k, v in cols.items()}
        return cls(
            cat["b"].long(), cat["k"].long(), cat["i"].long(), cat["imp"].double(),
            cat["c"].long(), torch.ones(cat["b"].numel(), dtype=torch.bool),
        )  # fmt: skip

    def select(self, block: int, kind: int) -> torch.Tensor:
        return (self.block == block) & (self.kind == kind)

    def keep_indices(self, block: int, kind: int) -> list[int]:
        sel = self.select(block, kind) & self.kept
        return sorted(self.index[sel].tolist())

    def removed_cost(self) -> int:
        return int(self.cost[~self.kept].sum())

    def rows(self):
        """Dict rows for the CSV table (block, kind, unit, importance, cost, kept)."""
        for b, k, i, imp, c, kept in zip(
            self.block.tolist(), self.kind.tolist(), self.index.tolist(),
            self.importance.tolist(), self.cost.tolist(), self.kept.tolist(), strict=True,
        ):  # fmt: skip
            yield {
                "block": b, "kind": KIND_NAMES[k], "unit": i, "importance": imp, "cost": c,
                "kept": int(kept),
            }  # fmt: skip


def parse_distribution(text: str) -> tuple[float, float]:
    """``"A:M"`` (e.g. ``2:8``, ``0:10``, ``0.3:9.7``): the attention and MLP shares."""
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        a, m = float(parts[0]), float(parts[1])
    except ValueError:
        raise StructuredError(
            f"--pruning_distribution '{text}' does not parse: expected A:M with two non-negative "
            f"numbers, e.g. 2:8 (20% of the removed parameters from attention, 80% from MLP)"
        ) from None
    if not (math.isfinite(a) and math.isfinite(m)) or a < 0 or m < 0 or a + m <= 0:
        raise StructuredError(
            f"--pruning_distribution '{text}': both shares must be non-negative and not both 0"
        )
    return a / (a + m), m / (a + m)


def check_ratio(ratio: float) -> None:
    if not (isinstance(ratio, (int, float)) and 0 < ratio < 1):
        raise StructuredError(f"--pruning_ratio must be in (0, 1), got {ratio}")


def frozen_blocks(block_importance: list[float], n: int) -> list[int]:
    """The ``n`` most important blocks (never pruned)."""
    nb = len(block_importance)
    if n < 0:
        raise StructuredError(f"--freeze_top_n_layers must be >= 0, got {n}")
    if n >= nb:
        raise StructuredError(
            f"--freeze_top_n_layers {n} freezes every block (the model has {nb}): nothing left "
            f"to prune; use at most {nb - 1}"
        )
    order = sorted(range(nb), key=lambda i: (-block_importance[i], i))
    return sorted(order[:n])


@dataclass
class Plan:
    """Which units to keep, and how the budget was spread."""

    table: UnitTable
    strategy: str
    ratio: float
    params_before: int  # prunable (block linear) parameters
    frozen: list[int]
    distribution: tuple[float, float] | None = None
    block_importance: list[float] | None = None

    @property
    def params_removed(self) -> int:
        return self.table.removed_cost()

    @property
    def params_after(self) -> int:
        return self.params_before - self.params_removed

    @property
    def achieved_ratio(self) -> float:
        return self.params_removed / max(self.params_before, 1)

    def blocks(self, parts: list[BlockParts]) -> list[dict]:
        """Per block: units kept and removed, planned removal fraction."""
        out = []
        for p in parts:
            row = {"block": p.index, "frozen": p.index in self.frozen}
            total = sum(linear_params(lin) for lin in p.linears().values())
            removed = 0
            for kind, key in ((ATTN, "kv_groups"), (MLP, "intermediate")):
                sel = self.table.select(p.index, kind)
                kept = int((sel & self.table.kept).sum())
                row[f"{key}_before"] = p.n_units(kind)
                row[f"{key}_kept"] = kept
                removed += int(self.table.cost[sel & ~self.table.kept].sum())
            row["q_heads_kept"] = row["kv_groups_kept"] * p.group_size
            row["removed_fraction"] = removed / max(total, 1)
            if self.block_importance is not None:
                row["block_importance"] = self.block_importance[p.index]
            out.append(row)
        return out


def allocate_global(
    table: UnitTable, params_before: int, ratio: float, frozen: list[int] = ()
) -> torch.Tensor:
    """Fractional knapsack: remove the units with the lowest importance per parameter until
    the removed parameters are closest to ``ratio * params_before``; returns the kept mask."""
    check_ratio(ratio)
    target = ratio * params_before
    kept = torch.ones(len(table), dtype=torch.bool)
    cand = ~torch.isin(table.block, torch.tensor(list(frozen), dtype=torch.long))
    idx = torch.nonzero(cand).flatten()
    if idx.numel() == 0 or float(table.cost[idx].sum()) < target:
        raise StructuredError(
            f"cannot remove {ratio:.0%} of the block parameters: the unfrozen blocks hold only "
            f"{float(table.cost[idx].sum()) / max(params_before, 1):.1%}"
        )
    score = table.importance[idx] / table.cost[idx].double()
    # stable order: by score, ties by (block, kind, index) as already laid out in the table
    order = idx[torch.sort(score, stable=True).indices]
    cum = torch.cumsum(table.cost[order].double(), 0)
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), cum])
    n_remove = int(torch.argmin((cum - target).abs()))
    kept[order[:n_remove]] = False
    return kept


def block_weights(
    block_importance: list[float], strategy: str, frozen: list[int], alpha: float = 1.0
) -> list[float]:
    """Relative pruning weight per block: ``uniform`` 1, ``inverse`` 1 / (normalized
    importance)^alpha (important blocks pruned less); frozen blocks 0."""
    nb = len(block_importance)
    active = [i for i in range(nb) if i not in frozen]
    if strategy == "uniform":
        return [0.0 if i in frozen else 1.0 for i in range(nb)]
    if strategy != "inverse":
        raise StructuredError(f"unknown strategy '{strategy}'; choose from {', '.join(STRATEGIES)}")
    imp = [max(float(block_importance[i]), 0.0) for i in range(nb)]
    total = sum(imp[i] for i in active) or 1.0
    eps = 1e-6
    return [0.0 if i in frozen else 1.0 / (imp[i] / total + eps) ** alpha for i in range(nb)]


def waterfill(base: list[float], caps: list[float], budget: float) -> list[float]:
    """Pure: ``x_i = min(cap_i, c * base_i)`` with ``c`` chosen so that ``sum x_i = budget``."""
    avail = sum(c for b, c in zip(base, caps, strict=True) if b > 0)
    if budget <= 0:
        return [0.0] * len(base)
    if budget > avail * (1 + 1e-12):
        raise ValueError(budget, avail)
    lo, hi = 0.0, 1.0

    def total(c: float) -> float:
        return sum(min(cap, c * b) for b, cap in zip(base, caps, strict=True))

    while total(hi) < budget and hi < 1e300:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if total(mid) < budget:
            lo = mid
        else:
            hi = mid
    return [min(cap, hi * b) for b, cap in zip(base, caps, strict=True)]


def round_units(targets: list[float], unit_costs: list[int], available: list[int]) -> list[int]:
    """Pure: whole unit counts per block whose total cost is closest to ``sum(targets)``:
    floors first, then one more unit to the largest remainders while that gets closer."""
    counts = []
    for t, c, a in zip(targets, unit_costs, available, strict=True):
        counts.append(min(a, int(math.floor(t / c + 1e-9))) if c > 0 else 0)
    left = sum(targets) - sum(n * c for n, c in zip(counts, unit_costs, strict=True))
    frac = [
        (t / c - n if c > 0 else -1.0, i)
        for i, (t, c, n) in enumerate(zip(targets, unit_costs, counts, strict=True))
    ]
    for f, i in sorted(frac, key=lambda x: (-x[0], x[1])):
        if f <= 0 or counts[i] >= available[i]:
            continue
        if left >= unit_costs[i] / 2:
            counts[i] += 1
            left -= unit_costs[i]
    return counts


def allocate_layerwise(
    table: UnitTable,
    parts: list[BlockParts],
    block_importance: list[float],
    ratio: float,
    distribution: tuple[float, float],
    strategy: str = "inverse",
    frozen: list[int] = (),
    alpha: float = 1.0,
) -> torch.Tensor:
    """Each block gets a budget proportional to its weight (``inverse``: less important blocks
    lose more), split between attention and MLP by ``distribution``; inside a block the least
    important units go. Returns the kept mask."""
    check_ratio(ratio)
    params_before = prunable_params(parts)
    w = block_weights(block_importance, strategy, list(frozen), alpha)
    kept = torch.ones(len(table), dtype=torch.bool)
    carry = 0.0  # attention is removed in coarse units: its rounding error goes to the MLP
    for kind, share in zip((ATTN, MLP), distribution, strict=True):
        budget = ratio * params_before * share
        if budget <= 0:
            continue
        budget = max(budget + carry, 0.0)
        caps = [float(p.n_units(kind) * p.unit_cost(kind)) for p in parts]
        base = [w[p.index] * caps[p.index] for p in parts]
        try:
            targets = waterfill(base, caps, budget)
        except ValueError:
            avail = sum(c for b, c in zip(base, caps, strict=True) if b > 0)
            raise StructuredError(
                f"the distribution gives {KIND_NAMES[kind]} {share:.0%} of the {ratio:.0%} to "
                f"remove ({budget / params_before:.1%} of the block parameters) but the unfrozen "
                f"{KIND_NAMES[kind]} holds only {avail / params_before:.1%}; lower the ratio or "
                f"change --pruning_distribution"
            ) from None
        counts = round_units(
            targets, [p.unit_cost(kind) for p in parts], [p.n_units(kind) for p in parts]
        )
        for p, c in zip(parts, counts, strict=True):
            if c == 0:
                continue
            sel = torch.nonzero(table.select(p.index, kind)).flatten()
            order = sel[torch.sort(table.importance[sel], stable=True).indices]
            kept[order[:c]] = False
        carry = budget - sum(c * p.unit_cost(kind) for p, c in zip(parts, counts, strict=True))
    return kept


def check_feasible(
    parts: list[BlockParts],
    ratio: float,
    strategy: str = "global",
    distribution: str | tuple[float, float] | None = None,
    freeze_top_n: int = 0,
) -> None:
    """Fail early (before any statistics are computed) when no choice of frozen blocks could
    meet the budget: the allocation itself checks again, exactly."""
    check_ratio(ratio)
    total = prunable_params(parts)
    n_active = len(parts) - freeze_top_n
    if n_active < 1:
        frozen_blocks([0.0] * len(parts), freeze_top_n)  # raises the clear error
    kinds = [(ATTN, 1.0), (MLP, 1.0)]
    if strategy != "global":
        dist = distribution if isinstance(distribution, tuple) else None
        dist = dist or parse_distribution(distribution if distribution is not None else "2:8")
        kinds = list(zip((ATTN, MLP), dist, strict=True))
    need_total = 0.0
    for kind, share in kinds:
        caps = sorted((p.n_units(kind) * p.unit_cost(kind) for p in parts), reverse=True)
        best = sum(caps[:n_active])
        need = ratio * total * share if strategy != "global" else 0.0
        need_total += best
        if need > best:
            raise StructuredError(
                f"the distribution gives {KIND_NAMES[kind]} {share:.0%} of the {ratio:.0%} to "
                f"remove ({need / total:.1%} of the block parameters) but the unfrozen "
                f"{KIND_NAMES[kind]} holds only {best / total:.1%}; lower the ratio or change "
                f"--pruning_distribution"
            )
    if strategy == "global" and ratio * total > need_total:
        raise StructuredError(
            f"cannot remove {ratio:.0%} of the block parameters: the unfrozen blocks hold only "
            f"{need_total / total:.1%}"
        )


def make_plan(
    parts: list[BlockParts],
    importance: list[tuple[torch.Tensor, torch.Tensor]],
    ratio: float,
    *,
    strategy: str = "global",
    distribution: str | tuple[float, float] | None = None,
    block_importance: list[float] | None = None,
    freeze_top_n: int = 0,
    alpha: float = 1.0,
) -> Plan:
    """Build the unit table and decide what to keep."""
    check_ratio(ratio)
    if strategy not in STRATEGIES:
        raise StructuredError(
            f"unknown --pruning_strategy '{strategy}'; choose from {', '.join(STRATEGIES)}"
        )
    table = UnitTable.build(parts, importance)
    total = prunable_params(parts)
    if block_importance is None:
        if freeze_top_n or strategy == "inverse":
            raise StructuredError("block importance is needed to freeze or weight blocks")
        block_importance = [0.0] * len(parts)
    frozen = frozen_blocks(block_importance, freeze_top_n) if freeze_top_n else []
    dist = None
    if strategy == "global":
        if distribution is not None:
            raise StructuredError(
                "--pruning_distribution applies to layer-wise allocation "
                "(--pruning_strategy inverse or uniform); global allocation balances attention "
                "and MLP by importance per parameter"
            )
        table.kept = allocate_global(table, total, ratio, frozen)
    else:
        dist = (
            parse_distribution(distribution if distribution is not None else "2:8")
            if not isinstance(distribution, tuple)
            else distribution
        )
        table.kept = allocate_layerwise(
            table, parts, block_importance, ratio, dist, strategy, frozen, alpha
        )
    return Plan(table, strategy, ratio, total, frozen, dist, list(block_importance))


# ------------------------------------------------------------------------------------------------
# Surgery
# ------------------------------------------------------------------------------------------------


def slice_linear(
    lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
) -> nn.Linear:
    """Pure: a new, smaller ``nn.Linear`` with the given output rows / input columns."""
    w = lin.weight.data
    b = lin.bias.data if lin.bias is not None else None
    if rows is not None:
        rows = rows.to(w.device)
        w = w.index_select(0, rows)
        b = b.index_select(0, rows) if b is not None else None
    if cols is not None:
        w = w.index_select(1, cols.to(w.device))
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    new.weight.requires_grad_(lin.weight.requires_grad)
    return new


def group_rows(groups: list[int], rows_per_group: int) -> torch.Tensor:
    if not groups:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(g * rows_per_group, (g + 1) * rows_per_group) for g in groups])


def prune_attention(parts: BlockParts, keep: list[int]) -> nn.Module:
    """Keep the KV groups ``keep`` of the block's attention; returns the module now in place."""
    attn = parts.attn
    if parts.k is None:
        return attn
    if not keep:
        o_bias = parts.o.bias.data if parts.o.bias is not None else None
        empty = EmptyAttention(parts.hidden_size, o_bias, getattr(attn, "layer_idx", 0))
        empty.to(device=parts.o.weight.device, dtype=parts.o.weight.dtype)
        parts.block.self_attn = empty
        return empty
    keep = sorted(keep)
    hd, r = parts.head_dim, parts.group_size
    q_rows = group_rows(keep, r * hd)
    kv_rows = group_rows(keep, hd)
    attn.q_proj = slice_linear(parts.q, rows=q_rows)
    attn.k_proj = slice_linear(parts.k, rows=kv_rows)
    attn.v_proj = slice_linear(parts.v, rows=kv_rows)
    attn.o_proj = slice_linear(parts.o, cols=q_rows)
    # transformers' LlamaAttention reshapes with -1 heads and reads only num_key_value_groups
    # (unchanged: the q:kv ratio is kept); older versions and other families keep head counts
    # as module attributes, so those are updated where present.
    n_kv, n_q = len(keep), len(keep) * r
    for attr, val in (
        ("num_heads", n_q), ("num_attention_heads", n_q), ("num_key_value_heads", n_kv),
    ):  # fmt: skip
        if isinstance(getattr(attn, attr, None), int):
            setattr(attn, attr, val)
    if isinstance(getattr(attn, "num_key_value_groups", None), int):
        attn.num_key_value_groups = r
    return attn


def prune_mlp(parts: BlockParts, keep: list[int]) -> nn.Module:
    """Keep the intermediate channels ``keep`` of the block's MLP."""
    mlp = parts.mlp
    if parts.gate is None:
        return mlp
    if not keep:
        bias = parts.down.bias.data if parts.down.bias is not None else None
        empty = EmptyMLP(parts.hidden_size, bias)
        empty.to(device=parts.down.weight.device, dtype=parts.down.weight.dtype)
        parts.block.mlp = empty
        return empty
    idx = torch.tensor(sorted(keep), dtype=torch.long)
    mlp.gate_proj = slice_linear(parts.gate, rows=idx)
    mlp.up_proj = slice_linear(parts.up, rows=idx)
    mlp.down_proj = slice_linear(parts.down, cols=idx)
    if isinstance(getattr(mlp, "intermediate_size", None), int):
        mlp.intermediate_size = len(keep)
    return mlp


def is_empty_block(block: nn.Module) -> bool:
    return isinstance(getattr(block, "self_attn", None), EmptyAttention) and isinstance(
        getattr(block, "mlp", None), EmptyMLP
    )


def remove_blocks(model: nn.Module, indices: list[int]) -> list[int]:
    """Remove decoder blocks (depth pruning); returns the removed indices. Layer indices used by
    the KV cache and ``config.num_hidden_layers`` / ``layer_types`` follow."""
    blocks = decoder_blocks(model)
    drop = set(indices)
    if len(drop) >= len(blocks):
        raise StructuredError("depth pruning would remove every block of the model")
    keep = [b for i, b in enumerate(blocks) if i not in drop]
    blocks_parent_path = _parent_of_blocks(model)
    parent, attr = blocks_parent_path
    setattr(parent, attr, nn.ModuleList(keep))
    for j, b in enumerate(keep):
        attn = getattr(b, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = j
        if hasattr(b, "layer_idx"):
            b.layer_idx = j
    cfg = model.config
    cfg.num_hidden_layers = len(keep)
    lt = getattr(cfg, "layer_types", None)
    if isinstance(lt, (list, tuple)) and len(lt) == len(blocks):
        cfg.layer_types = [t for i, t in enumerate(lt) if i not in drop]
    return sorted(drop)


def _parent_of_blocks(model: nn.Module) -> tuple[nn.Module, str]:
    from ..models.arch import block_list_path

    path = block_list_path(model)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    return parent, attr


@dataclass
class SurgeryReport:
    removed_blocks: list[int]
    source_blocks: list[int]  # for every remaining block, its index before pruning
    params_before: int
    params_after: int
    model_params_before: int
    model_params_after: int


@torch.no_grad()
def apply_plan(model: nn.Module, plan: Plan, *, remove_empty_layers: bool = False) -> SurgeryReport:
    """Shrink the model in place to the plan's kept units (and drop empty blocks if asked)."""
    parts = model_parts(model)
    before = prunable_params(parts)
    if before != plan.params_before:
        raise StructuredError("the plan was made for another model (parameter counts differ)")
    model_before = model_params(model)
    for p in parts:
        prune_attention(p, plan.table.keep_indices(p.index, ATTN))
        prune_mlp(p, plan.table.keep_indices(p.index, MLP))
    blocks = decoder_blocks(model)
    removed = []
    if remove_empty_layers:
        empty = [i for i, b in enumerate(blocks) if is_empty_block(b)]
        if empty:
            removed = remove_blocks(model, empty)
    source = [i for i in range(len(blocks)) if i not in set(removed)]
    after = prunable_params(model_parts(model))
    if after != plan.params_after:
        raise StructuredError(
            f"internal error: surgery left {after} block parameters, the plan says "
            f"{plan.params_after}"
        )
    return SurgeryReport(removed, source, before, after, model_before, model_params(model))


def structure_of(model: nn.Module) -> list[dict]:
    """Per block shapes: what a stock config cannot describe."""
    out = []
    for p in model_parts(model):
        row = {
            "q_heads": p.q_heads,
            "kv_heads": p.kv_heads,
            "head_dim": p.head_dim,
            "intermediate_size": p.intermediate,
        }
        if isinstance(p.attn, EmptyAttention):
            row["attention_bias"] = p.attn.bias is not None
        if isinstance(p.mlp, EmptyMLP):
            row["mlp_bias"] = p.mlp.bias is not None
        out.append(row)
    return out


@torch.no_grad()
def reshape_to_structure(model: nn.Module, structure: list[dict]) -> None:
    """Give a freshly built stock model the recorded per-block shapes (the values are
    placeholders, to be overwritten by the saved state dict)."""
    parts = model_parts(model)
    if len(parts) != len(structure):
        raise StructuredError(
            f"the structure file describes {len(structure)} blocks, the config {len(parts)}"
        )
    for p, s in zip(parts, structure, strict=True):
        if p.head_dim != s["head_dim"] or (
            p.kv_heads and s["kv_heads"] and p.group_size != s["q_heads"] // s["kv_heads"]
        ):
            raise StructuredError(f"block {p.index}: the structure file does not fit the config")
        kv = int(s["kv_heads"])
        if kv > p.kv_heads or s["intermediate_size"] > p.intermediate:
            raise StructuredError(f"block {p.index}: the structure is larger than the config")
        prune_attention(p, list(range(kv)))
        if kv == 0 and not s.get("attention_bias"):
            p.block.self_attn.bias = None
        prune_mlp(p, list(range(int(s["intermediate_size"]))))
        if s["intermediate_size"] == 0 and not s.get("mlp_bias"):
            p.block.mlp.bias = None


__all__ = [
    "ATTN",
    "BUILTIN_IMPORTANCE",
    "KIND_NAMES",
    "LAYER_IMPORTANCE",
    "MLP",
    "STRATEGIES",
    "BlockParts",
    "CalibStats",
    "EmptyAttention",
    "EmptyMLP",
    "Importance",
    "Plan",
    "StructuredError",
    "SurgeryReport",
    "UnitTable",
    "allocate_global",
    "allocate_layerwise",
    "apply_plan",
    "attention_group_scores",
    "block_parts",
    "block_weights",
    "check_feasible",
    "check_ratio",
    "collect_stats",
    "frozen_blocks",
    "is_empty_block",
    "make_plan",
    "mlp_channel_scores",
    "model_params",
    "model_parts",
    "parse_distribution",
    "parse_importance",
    "prunable_params",
    "prune_attention",
    "prune_mlp",
    "remove_blocks",
    "reshape_to_structure",
    "round_units",
    "slice_linear",
    "structure_of",
    "unit_importance",
    "waterfill",
    "weight_scores",
]
