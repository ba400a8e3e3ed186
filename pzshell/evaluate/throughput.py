"""Forward throughput: tokens per second of a plain forward pass (no loss, no cache)."""

from __future__ import annotations

import time

import torch


@torch.no_grad()
def forward_tokens_per_second(
    model: torch.nn.Module, windows: torch.Tensor, *, repeats: int = 2, warmup: int = 1
) -> float:
    """Best of ``repeats`` timed passes over ``windows`` (one window per forward), after
    ``warmup`` untimed forwards; the best pass is the least disturbed by other processes."""
    dev = next(model.parameters()).device
    ids = windows.to(dev)
    for i in range(warmup):
        model(input_ids=ids[i % ids.shape[0] : i % ids.shape[0] + 1], use_cache=False)
    best = float("inf")
    for _ in range(max(1, repeats)):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        for k in range(ids.shape[0]):
            model(input_ids=ids[k : k + 1], use_cache=False)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        best = min(best, time.perf_counter() - t)
    return ids.numel() / best
