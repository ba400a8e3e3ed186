"""Perplexity: the chunked LM head and loss give the model's own forward's value."""

from __future__ import annotations

import copy
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from pzshell.evaluate.perplexity import perplexity

# the module (the package re-exports the function under the module's name)
ppl_mod = importlib.import_module("pzshell.evaluate.perplexity")


def _windows(lm, n: int, seqlen: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, lm.model.config.vocab_size, (n, seqlen), generator=g)


def _reference(model, windows) -> float:
    """exp(mean NLL) straight from the model's logits, written out here."""
    with torch.no_grad():
        logits = model(input_ids=windows, use_cache=False).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    return math.exp(float(nll))


@pytest.mark.parametrize("chunk", [1, 5, 63, 64, 1000])
def test_chunked_head_and_loss_equal_the_full_logits(tiny, chunk):
    w = _windows(tiny, 3, 64)  # 63 predicted positions: chunks that divide it, and not
    with torch.no_grad():
        full = ppl_mod._nll_sum_full(tiny.model, w)
        chunked = ppl_mod._nll_sum_chunked(tiny.model, w, chunk)
    assert chunked == pytest.approx(full, rel=1e-6)


def test_perplexity_takes_the_chunked_path_for_a_plain_head_and_agrees(tiny, monkeypatch):
    w = _windows(tiny, 4, 32)
    assert ppl_mod._plain_head(tiny.model)
    calls = []
    chunked = ppl_mod._nll_sum_chunked
    monkeypatch.setattr(
        ppl_mod,
        "_nll_sum_chunked",
        lambda m, ids, **kw: calls.append(ids.shape) or chunked(m, ids, **kw),
    )
    res = perplexity(tiny.model, w, batch_size=3)
    assert calls == [(3, 32), (1, 32)]
    assert res.ppl == pytest.approx(_reference(tiny.model, w), rel=1e-6)
    assert (res.windows, res.predicted) == (4, 4 * 31)


def test_other_heads_take_the_models_own_forward(tiny, monkeypatch):
    model = copy.deepcopy(tiny.model)
    model.config.final_logit_softcapping = 30.0  # a head that is not the plain projection
    assert not ppl_mod._plain_head(model)
    model.config.final_logit_softcapping = None
    model.config.model_type = "gemma2"
    assert not ppl_mod._plain_head(model)
    monkeypatch.setattr(ppl_mod, "_nll_sum_chunked", None)  # would fail if taken
    w = _windows(tiny, 2, 32)
    assert perplexity(model, w).ppl == pytest.approx(_reference(model, w), rel=1e-6)


@pytest.mark.smollm2
def test_chunked_perplexity_on_smollm2_equals_the_full_logits(smollm2_lm):
    w = _windows(smollm2_lm, 2, 256)
    with torch.no_grad():
        full = ppl_mod._nll_sum_full(smollm2_lm.model, w)
    assert ppl_mod._plain_head(smollm2_lm.model)
    assert perplexity(smollm2_lm.model, w, batch_size=2).nll * w[:, 1:].numel() == pytest.approx(
        full, rel=1e-6
    )


def test_skipped_tokens_are_read_but_not_scored(tiny):
    """``skip``: the perplexity over the other tokens only, each window's mean over its own
    counted tokens; the skipped tokens still condition the ones after them."""
    w = _windows(tiny, 3, 32)
    skip = torch.zeros_like(w, dtype=torch.bool)
    skip[0, 5:9] = skip[2, 20:] = True
    skip[1, 0] = True  # the first token is never predicted: skipping it changes nothing
    with torch.no_grad():
        logits = tiny.model(input_ids=w, use_cache=False).logits[:, :-1]
    nll = F.cross_entropy(logits.transpose(1, 2), w[:, 1:], reduction="none")  # (3, 31)
    keep = ~skip[:, 1:]
    want = math.exp(float(nll[keep].mean()))
    batched = perplexity(tiny.model, w, batch_size=3, skip=skip)
    assert batched.ppl == pytest.approx(want, rel=1e-5)
    assert batched.predicted == int(keep.sum()) == 3 * 31 - 4 - 12
    one = perplexity(tiny.model, w, skip=skip)  # window by window
    assert one.ppl == pytest.approx(want, rel=1e-5)
    for k in range(3):
        assert one.window_nll[k] == pytest.approx(float(nll[k][keep[k]].mean()), rel=1e-5)
    assert perplexity(tiny.model, w, skip=torch.zeros_like(skip)).ppl == pytest.approx(
        perplexity(tiny.model, w).ppl, rel=1e-6
    )
    with pytest.raises(ValueError, match="skip has shape"):
        perplexity(tiny.model, w, skip=skip[:, :10])


@pytest.mark.parametrize("lm_name", ["tiny", "smollm2"])
def test_placeholder_tokens_mark_every_token_of_each_occurrence(lm_name, request):
    """WikiText's ``<unk>`` at a line start and after a space: exactly its tokens are marked,
    across window boundaries too; other text, and an empty piece list, mark nothing."""
    from pzshell.evaluate.perplexity import placeholder_tokens

    if lm_name == "smollm2":
        request.applymarker(pytest.mark.smollm2)
    lm = request.getfixturevalue("tiny" if lm_name == "tiny" else "smollm2_lm")
    tok = lm.tokenizer
    text = "<unk> is a <unk> lobster , unknown <unk>\n<unk> = unk > < here\n the end ."
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    n = ids.numel() - ids.numel() % 4
    windows = ids[:n].reshape(4, -1)  # occurrences may straddle two windows' boundary
    assert "<unk> = unk > < here" in tok.decode(windows.reshape(-1).tolist())
    marked = placeholder_tokens(windows, tok, "<unk>")
    assert marked.shape == windows.shape and marked.dtype == torch.bool
    flat, m = windows.reshape(-1), marked.reshape(-1)
    assert tok.decode(flat[m].tolist()).replace(" ", "") == "<unk>" * 4
    rest = tok.decode(flat[~m].tolist())
    assert "<unk>" not in rest and "unknown" in rest and "unk > <" in rest
    assert not placeholder_tokens(windows, tok, "").any()
    assert torch.equal(
        placeholder_tokens(windows, tok, "<unk>, lobster"),
        marked | (placeholder_tokens(windows, tok, "lobster")),
    )
