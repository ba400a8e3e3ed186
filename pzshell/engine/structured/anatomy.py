"""The prunable pieces of a LLaMA-family decoder block, their units and parameter counts.

A unit of **attention** is a KV group: one key/value head and the ``q:kv`` query heads that read
it (rows of ``q_proj``/``k_proj``/``v_proj``, the matching columns of ``o_proj``); a unit of the
**MLP** is an intermediate channel (a row of ``gate_proj`` and ``up_proj``, a column of
``down_proj``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ...models.arch import decoder_blocks
from ...models.structure import (
    ATTN_LINEARS,
    MLP_LINEARS,
    EmptyAttention,
    EmptyMLP,
    StructureError,
    head_dim_of,
)

ATTN, MLP = 0, 1
KIND_NAMES = ("attention", "mlp")


class StructuredError(StructureError):
    """A structured-pruning setting or model that cannot be pruned as asked."""


_SHORT = dict(
    zip(ATTN_LINEARS + MLP_LINEARS, ("q", "k", "v", "o", "gate", "up", "down"), strict=True)
)


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
        for prefix, names in (("self_attn", ATTN_LINEARS), ("mlp", MLP_LINEARS)):
            for n in names:
                lin = getattr(self, _SHORT[n])
                if lin is not None:
                    out[f"{prefix}.{n}"] = lin
        return out


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
    parts = BlockParts(index, block, attn, mlp, head_dim_of(attn, config), hidden)
    if not isinstance(attn, EmptyAttention):
        lins = [getattr(attn, n, None) for n in ATTN_LINEARS]
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
        lins = [getattr(mlp, n, None) for n in MLP_LINEARS]
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


def linear_params(lin: nn.Linear) -> int:
    return lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)


def prunable_params(parts: list[BlockParts]) -> int:
    """Parameters of the block linears (weights and biases): the population the ratio counts."""
    return sum(linear_params(lin) for p in parts for lin in p.linears().values())


def model_params(model: nn.Module) -> int:
    """All parameters, a tied tensor counted once."""
    return sum(p.numel() for p in model.parameters())
