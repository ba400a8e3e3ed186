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
    """Context manager: pre-hooks on a block's (or model's) linears that fill one
    :class:`InputStats` per linear.

    With ``stop_early``, once the first chunk has shown the order in which the linears run, every
    later chunk is cut short at the *last* linear's input (:exc:`StatsComplete`, raised from its
    pre-hook): that linear's product and anything after it (the rest of the block, or the LM head
    of a whole model) feed no statistic. On a LLaMA block this skips ``down_proj``, a quarter of
    the statistics pass's matrix products. The caller runs each chunk under :meth:`chunk`.
    """

    def __init__(self, linears: dict[str, nn.Linear], want_h: bool, stop_early: bool = False):
        self.linears = linears
        self.want_h = want_h
        self.stop_early = stop_early
        self.stats: dict[str, InputStats] = {}
        self.order: list[str] = []  # the linears in the order they ran in the first chunk
        self.last: str | None = None  # known after the first chunk
        self._seen: dict[int, tuple[torch.Tensor, InputStats]] = {}
        self._handles = []

    def _hook(self, name: str):
        def hook(module, args):
            x = args[0]
            if self.last is None and name not in self.order:
                self.order.append(name)
            ptr = x.data_ptr()
            hit = self._seen.get(ptr)
            # the tensor is kept alive in _seen, so an equal pointer means the same input
            if hit is not None and hit[0].shape == x.shape:
                self.stats.setdefault(name, hit[1])
            else:
                st = self.stats.get(name)
                if st is None:
                    st = InputStats(x.shape[-1], self.want_h, x.device)
                    self.stats[name] = st
                st.add(x.detach())
                self._seen[ptr] = (x, st)
            if self.stop_early and name == self.last:
                raise StatsComplete

        return hook

    @contextlib.contextmanager
    def chunk(self):
        """Run one chunk's forward inside this: ends it (early, when possible) and tidies up."""
        with contextlib.suppress(StatsComplete):
            yield
        self.end_chunk()

    def end_chunk(self) -> None:
        self._seen.clear()
        if self.last is None and self.order and len(self.order) == len(self.linears):
            self.last = self.order[-1]

    def __enter__(self):
        for name, lin in self.linears.items():
            self._handles.append(lin.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._seen.clear()
        return False


class StatsComplete(Exception):
    """Raised by :class:`StatsCollector` once every statistic of a chunk is in."""


@torch.no_grad()
def run_block_collecting(
    block: nn.Module, linears: dict[str, nn.Linear], chunks: list[Chunk], want_h: bool
) -> dict[str, InputStats]:
    """One pass of ``block`` over the chunks, collecting input statistics of every linear."""
    dev = block_device(block)
    with StatsCollector(linears, want_h, stop_early=True) as col:
        for ch in chunks:
            with col.chunk():
                block(ch.hidden.to(dev), **_to(ch.kwargs, dev))
    return col.stats
