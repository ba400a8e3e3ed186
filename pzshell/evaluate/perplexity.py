"""Perplexity over non-overlapping windows: ``ppl = exp(mean token NLL)``.

Every window of ``seqlen`` tokens predicts its last ``seqlen - 1`` tokens from the ones before
them; the NLL is averaged over all predicted tokens of all windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..progress import ProgressFn, emit


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float  # mean token negative log-likelihood (nats)
    windows: int
    seqlen: int
    tokens: int  # tokens in the evaluated windows (windows * seqlen)
    predicted: int  # tokens whose NLL was averaged


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    windows: torch.Tensor,
    *,
    batch_size: int = 1,
    progress: ProgressFn | None = None,
) -> PerplexityResult:
    dev = next(model.parameters()).device
    total_nll = 0.0
    count = 0
    n = windows.shape[0]
    for start in range(0, n, batch_size):
        ids = windows[start : start + batch_size].to(dev)
        logits = model(input_ids=ids, use_cache=False).logits
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            ids[:, 1:].reshape(-1),
            reduction="sum",
        )
        total_nll += float(loss)
        count += ids[:, 1:].numel()
        del logits
        emit(progress, "eval", min(start + batch_size, n), n, "perplexity")
    nll = total_nll / max(count, 1)
    return PerplexityResult(math.exp(nll), nll, n, windows.shape[1], windows.numel(), count)
