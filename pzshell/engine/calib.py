"""The layer-sequential calibration pass of the prune driver: capture the inputs of the first
decoder block, run one block at a time over them, and collect a block's input statistics with
the statistics core's :class:`~.stats.StatsCollector`."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..models.arch import decoder_blocks
from .stats import InputStats, StatsCollector


class _Stop(Exception):
    pass


def _to(obj, device: torch.device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def block_device(block: nn.Module) -> torch.device:
    return next(block.parameters()).device


@dataclass
class Chunk:
    """The hidden states entering a block for a batch of windows, plus the keyword arguments the
    model passed to its first block (attention mask, rotary embeddings, ...), captured by a hook
    so that new transformers versions keep working."""

    hidden: torch.Tensor
    kwargs: dict


@torch.no_grad()
def capture_block_inputs(model: nn.Module, ids: torch.Tensor, batch_size: int = 8) -> list[Chunk]:
    blocks = decoder_blocks(model)
    chunks: list[Chunk] = []
    current: dict = {}

    def pre_hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        kw.pop("past_key_values", None)
        kw.pop("past_key_value", None)
        kw["use_cache"] = False
        current["chunk"] = Chunk(hidden.detach(), kw)
        raise _Stop

    handle = blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
    dev = next(model.parameters()).device
    try:
        for start in range(0, ids.shape[0], batch_size):
            batch = ids[start : start + batch_size].to(dev)
            with contextlib.suppress(_Stop):
                model(input_ids=batch, use_cache=False)
            chunks.append(current.pop("chunk"))
    finally:
        handle.remove()
    return chunks


@torch.no_grad()
def run_block(block: nn.Module, chunks: list[Chunk]) -> list[Chunk]:
    """Outputs of ``block`` for every chunk, as the next block's inputs."""
    dev = block_device(block)
    out = []
    for ch in chunks:
        kwargs = _to(ch.kwargs, dev)
        res = block(ch.hidden.to(dev), **kwargs)
        hidden = res[0] if isinstance(res, (tuple, list)) else res
        out.append(Chunk(hidden, ch.kwargs))
    return out


@torch.no_grad()
def run_block_collecting(
    block: nn.Module, linears: dict[str, nn.Linear], chunks: list[Chunk], want_h: bool
) -> dict[str, InputStats]:
    """One pass of ``block`` over the chunks, collecting the input statistics of every linear
    (keyed by its name inside the block); each chunk ends at the last linear's input."""
    dev = block_device(block)
    with StatsCollector(linears, want_h, stop_early=True) as col:
        for ch in chunks:
            with col.chunk():
                block(ch.hidden.to(dev), **_to(ch.kwargs, dev))
    return col.stats
