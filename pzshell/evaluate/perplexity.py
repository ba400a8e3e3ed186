"""Perplexity over non-overlapping windows: ``ppl = exp(mean token NLL)``.

Every window of ``seqlen`` tokens predicts its last ``seqlen - 1`` tokens from the ones before
them; the NLL is averaged over all predicted tokens of all windows.

For the decoder families whose logits are the LM head applied to the decoder's last hidden
state and nothing else (Llama, Mistral, Qwen2/3: :data:`PLAIN_HEAD`), the head and the loss run
on :data:`HEAD_CHUNK` positions at a time instead of materialising every window's logits over
the whole vocabulary (a 2x1024-token batch of SmolLM2 is 400 MB of logits, copied once more for
the loss): the same perplexity to float rounding, ~1.4 s less per search candidate on 2 CPU
cores (``bench/search_profile.py``). Other models take the model's own forward.
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
    # each window's mean token NLL, in order (measured one window at a time, batch_size 1;
    # empty otherwise): what a paired comparison of two models on the same windows needs
    window_nll: tuple[float, ...] = ()


# model types whose forward is ``lm_head(decoder(ids).last_hidden_state)``, no logit scaling
PLAIN_HEAD = frozenset({"llama", "mistral", "qwen2", "qwen3"})
HEAD_CHUNK = 256  # positions per LM-head and loss call


def _plain_head(model: torch.nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    return (
        getattr(cfg, "model_type", None) in PLAIN_HEAD
        and getattr(cfg, "final_logit_softcapping", None) is None
        and getattr(cfg, "logit_scale", None) is None
        and hasattr(model, "get_decoder")
        and model.get_output_embeddings() is not None
    )


def logits_nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed NLL of ``targets`` (``(batch, positions)``) under aligned ``logits``."""
    return float(
        F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum"
        )
    )


def head_nll_sum(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = HEAD_CHUNK
) -> float:
    """:func:`logits_nll_sum` of ``head(hidden)``, ``chunk`` positions at a time (never every
    logit at once)."""
    return sum(
        logits_nll_sum(head(hidden[:, a : a + chunk]), targets[:, a : a + chunk])
        for a in range(0, hidden.shape[1], chunk)
    )


def _nll_sum_full(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """Summed NLL of every predicted token, from the model's own forward (every logit at once)."""
    return logits_nll_sum(model(input_ids=ids, use_cache=False).logits[:, :-1], ids[:, 1:])


def _nll_sum_chunked(model: torch.nn.Module, ids: torch.Tensor, chunk: int = HEAD_CHUNK) -> float:
    """The same sum, the LM head and the loss ``chunk`` positions at a time."""
    hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
    return head_nll_sum(model.get_output_embeddings(), hidden, ids[:, 1:], chunk)


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
    nll_sum = _nll_sum_chunked if _plain_head(model) else _nll_sum_full
    per_window = []
    for start in range(0, n, batch_size):
        ids = windows[start : start + batch_size].to(dev)
        part = nll_sum(model, ids)
        total_nll += part
        count += ids[:, 1:].numel()
        if batch_size == 1:
            per_window.append(part / max(ids[:, 1:].numel(), 1))
        emit(progress, "eval", min(start + batch_size, n), n, "perplexity")
    nll = total_nll / max(count, 1)
    return PerplexityResult(
        math.exp(nll), nll, n, windows.shape[1], windows.numel(), count, tuple(per_window)
    )
