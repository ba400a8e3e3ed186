"""Allocation: which units to remove. *Global* ranks every unit of the model by importance per
parameter (a fractional knapsack); *layer-wise* gives each block its own budget from a block
importance (how much a block changes its input; ``inverse`` prunes less important blocks more,
``uniform`` all alike) and splits it between attention and MLP by a fixed ``A:M`` share
(water-filling, then whole units). :func:`make_plan` builds the unit table and decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .anatomy import (
    ATTN,
    KIND_NAMES,
    MLP,
    BlockParts,
    StructuredError,
    linear_params,
    prunable_params,
)

STRATEGIES = ("global", "inverse", "uniform")


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
        kept = torch.ones(cat["b"].numel(), dtype=torch.bool)
        return cls(
            cat["b"].long(),
            cat["k"].long(),
            cat["i"].long(),
            cat["imp"].double(),
            cat["c"].long(),
            kept,
        )

    def select(self, block: int, kind: int) -> torch.Tensor:
        return (self.block == block) & (self.kind == kind)

    def keep_indices(self, block: int, kind: int) -> list[int]:
        sel = self.select(block, kind) & self.kept
        return sorted(self.index[sel].tolist())

    def removed_cost(self) -> int:
        return int(self.cost[~self.kept].sum())

    def rows(self):
        """Dict rows for the CSV table (block, kind, unit, importance, cost, kept)."""
        columns = (self.block, self.kind, self.index, self.importance, self.cost, self.kept)
        for b, k, i, imp, c, kept in zip(*(t.tolist() for t in columns), strict=True):
            yield {
                "block": b,
                "kind": KIND_NAMES[k],
                "unit": i,
                "importance": imp,
                "cost": c,
                "kept": int(kept),
            }


def parse_distribution(text: str) -> tuple[float, float]:
    """``"A:M"`` (e.g. ``2:8``, ``0:10``, ``0.3:9.7``): the attention and MLP shares."""
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        a, m = float(parts[0]), float(parts[1])
    except ValueError:
        raise StructuredError(
            f"pruning distribution '{text}' does not parse: expected A:M with two non-negative "
            f"numbers, e.g. 2:8 (20% of the removed parameters from attention, 80% from MLP)"
        ) from None
    if not (math.isfinite(a) and math.isfinite(m)) or a < 0 or m < 0 or a + m <= 0:
        raise StructuredError(
            f"pruning distribution '{text}': both shares must be non-negative and not both 0"
        )
    return a / (a + m), m / (a + m)


def check_ratio(ratio: float) -> None:
    if not (isinstance(ratio, (int, float)) and 0 < ratio < 1):
        raise StructuredError(f"pruning ratio must be in (0, 1), got {ratio}")


def frozen_blocks(block_importance: list[float], n: int) -> list[int]:
    """The ``n`` most important blocks (never pruned)."""
    nb = len(block_importance)
    if n < 0:
        raise StructuredError(f"the number of frozen blocks must be >= 0, got {n}")
    if n >= nb:
        raise StructuredError(
            f"freezing the top {n} blocks freezes every block (the model has {nb}): nothing left "
            f"to prune; freeze at most {nb - 1}"
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
                f"change the pruning distribution"
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
                f"the pruning distribution"
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
            f"unknown pruning strategy '{strategy}'; choose from {', '.join(STRATEGIES)}"
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
                "a pruning distribution applies to layer-wise allocation (strategy inverse or "
                "uniform); global allocation balances attention and MLP by importance per "
                "parameter"
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
