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
IGNORE = -100  # a target left out of the loss (F.cross_entropy's default ignore_index)


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
    """Summed NLL of ``targets`` (``(batch, positions)``) under aligned ``logits``; a target
    equal to :data:`IGNORE` adds nothing."""
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


def _nll_sum_full(
    model: torch.nn.Module, ids: torch.Tensor, *, targets: torch.Tensor | None = None
) -> float:
    """Summed NLL of the predicted tokens ``targets`` (default ``ids[:, 1:]``; some may be
    :data:`IGNORE`), from the model's own forward (every logit at once)."""
    targets = ids[:, 1:] if targets is None else targets
    return logits_nll_sum(model(input_ids=ids, use_cache=False).logits[:, :-1], targets)


def _nll_sum_chunked(
    model: torch.nn.Module,
    ids: torch.Tensor,
    chunk: int = HEAD_CHUNK,
    *,
    targets: torch.Tensor | None = None,
) -> float:
    """The same sum, the LM head and the loss ``chunk`` positions at a time."""
    targets = ids[:, 1:] if targets is None else targets
    hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
    return head_nll_sum(model.get_output_embeddings(), hidden, targets, chunk)


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    windows: torch.Tensor,
    *,
    batch_size: int = 1,
    progress: ProgressFn | None = None,
    skip: torch.Tensor | None = None,
) -> PerplexityResult:
    """``skip``: a boolean tensor shaped like ``windows``; a True token is still read as context
    but its own prediction is left out of the mean (a placeholder such as WikiText's ``<unk>``,
    :func:`placeholder_tokens`)."""
    dev = next(model.parameters()).device
    if skip is not None and tuple(skip.shape) != tuple(windows.shape):
        raise ValueError(f"skip has shape {tuple(skip.shape)}, windows {tuple(windows.shape)}")
    total_nll = 0.0
    count = 0
    n = windows.shape[0]
    nll_sum = _nll_sum_chunked if _plain_head(model) else _nll_sum_full
    per_window = []
    for start in range(0, n, batch_size):
        ids = windows[start : start + batch_size].to(dev)
        targets = ids[:, 1:]
        if skip is not None:  # cross_entropy leaves out the targets equal to its ignore_index
            targets = targets.masked_fill(skip[start : start + batch_size, 1:].to(dev), IGNORE)
        part = nll_sum(model, ids, targets=targets)
        counted = int((targets != IGNORE).sum())
        total_nll += part
        count += counted
        if batch_size == 1:
            per_window.append(part / max(counted, 1))
        emit(progress, "eval", min(start + batch_size, n), n, "perplexity")
    nll = total_nll / max(count, 1)
    return PerplexityResult(
        math.exp(nll), nll, n, windows.shape[1], windows.numel(), count, tuple(per_window)
    )


def placeholder_tokens(ids: torch.Tensor, tokenizer, pieces: str) -> torch.Tensor:
    """A boolean tensor shaped like ``ids``: True on every token of each occurrence of the
    comma-separated text ``pieces`` (for example ``<unk>``, WikiText's placeholder for a word
    outside its vocabulary: ``" <unk>"`` is three tokens of SmolLM2's), as the tokenizer writes
    it after a space and at a line start, also where one straddles two consecutive windows.
    Empty ``pieces``: all False."""
    out = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    # one sequence: windows cut from one text in order, so an occurrence may straddle two
    flat_ids, flat = ids.reshape(1, -1), out.view(1, -1)
    for piece in (p.strip() for p in pieces.split(",")):
        if not piece:
            continue
        forms = {
            tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
            for text in (piece, " " + piece)
        }
        for form in forms:
            k = len(form)
            if not k or k > flat_ids.shape[1]:
                continue
            pattern = torch.tensor(form, dtype=flat_ids.dtype, device=ids.device)
            hit = (flat_ids.unfold(1, k, 1) == pattern).all(dim=2)  # (rows, positions - k + 1)
            for j in range(k):
                flat[:, j : j + hit.shape[1]] |= hit
    return out
