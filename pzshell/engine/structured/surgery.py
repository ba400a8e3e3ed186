"""Surgery: build new, smaller ``nn.Linear`` modules for the kept units (so the pruned model
really is smaller and faster), empty an attention or MLP with no unit left, and remove empty
blocks (depth pruning). The shrinking itself is the model format's
(:mod:`pzshell.models.structure`), so a saved model is rebuilt by the very same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...models.arch import block_list_path, decoder_blocks
from ...models.structure import (
    EmptyAttention,
    EmptyMLP,
    keep_attention_groups,
    keep_mlp_channels,
)
from .allocation import Plan
from .anatomy import (
    ATTN,
    MLP,
    BlockParts,
    StructuredError,
    model_params,
    model_parts,
    prunable_params,
)


def prune_attention(parts: BlockParts, keep: list[int]) -> nn.Module:
    """Keep the KV groups ``keep`` of the block's attention (all of a group's ``q:kv`` query
    heads go with it); returns the module now in place (:class:`EmptyAttention` if none)."""
    if parts.k is None:
        return parts.attn
    return keep_attention_groups(parts.block, keep, parts.head_dim, parts.hidden_size)


def prune_mlp(parts: BlockParts, keep: list[int]) -> nn.Module:
    """Keep the intermediate channels ``keep`` of the block's MLP (:class:`EmptyMLP` if none)."""
    if parts.gate is None:
        return parts.mlp
    return keep_mlp_channels(parts.block, keep, parts.hidden_size)


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
    parent, attr = _parent_of_blocks(model)
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
