"""Block-input capture and per-linear input statistics (hooks live here, math stays pure)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..models.arch import decoder_blocks


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


class InputStats:
    """Statistics of one linear layer's inputs, in fp32.

    ``X``: mean over calibration tokens of ``x_j^2`` (shape (1, in)); ``H``: ``2/n sum x x^T``.
    Linears that receive the very same input tensor (q/k/v, gate/up) share one object, so the
    Hessian of a shared input is accumulated once.
    """

    def __init__(self, in_features: int, want_h: bool, device: torch.device):
        self.sq_sum = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.H = (
            torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
            if want_h
            else None
        )
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.sq_sum += (x * x).sum(dim=0)
        if self.H is not None:
            self.H.addmm_(x.T, x)
        self.tokens += x.shape[0]

    @property
    def X(self) -> torch.Tensor:
        return (self.sq_sum / max(self.tokens, 1)).reshape(1, -1)

    def hessian(self) -> torch.Tensor:
        assert self.H is not None
        return self.H * (2.0 / max(self.tokens, 1))


class StatsCollector:
    """Context manager: hooks on a block's linears that fill :class:`InputStats` per linear."""

    def __init__(self, linears: dict[str, nn.Linear], want_h: bool):
        self.linears = linears
        self.want_h = want_h
        self.stats: dict[str, InputStats] = {}
        self._seen: dict[int, tuple[torch.Tensor, InputStats]] = {}
        self._handles = []

    def _hook(self, name: str):
        def hook(module, args, output):
            x = args[0]
            ptr = x.data_ptr()
            hit = self._seen.get(ptr)
            # the tensor is kept alive in _seen, so an equal pointer means the same input
            if hit is not None and hit[0].shape == x.shape:
                self.stats.setdefault(name, hit[1])
                return
            st = self.stats.get(name)
            if st is None:
                st = InputStats(x.shape[-1], self.want_h, x.device)
                self.stats[name] = st
            st.add(x.detach())
            self._seen[ptr] = (x, st)

        return hook

    def end_chunk(self) -> None:
        self._seen.clear()

    def __enter__(self):
        for name, lin in self.linears.items():
            self._handles.append(lin.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._seen.clear()
        return False


@torch.no_grad()
def run_block_collecting(
    block: nn.Module, linears: dict[str, nn.Linear], chunks: list[Chunk], want_h: bool
) -> dict[str, InputStats]:
    """One pass of ``block`` over the chunks, collecting input statistics of every linear."""
    dev = block_device(block)
    with StatsCollector(linears, want_h) as col:
        for ch in chunks:
            block(ch.hidden.to(dev), **_to(ch.kwargs, dev))
            col.end_chunk()
    return col.stats
