"""The model fingerprint that results carry: any change to the weights or the tokenizer shows."""

from __future__ import annotations

import torch

from pzshell.models import build_tiny, token_fingerprint, tokenizer_fingerprint


def test_fingerprint_is_stable_and_sees_a_change_deep_in_any_tensor():
    lm = build_tiny()
    first = lm.fingerprint()
    assert first == lm.fingerprint() == build_tiny().fingerprint()  # same seed, same weights
    # one weight far from the start of a tensor the old hash never sampled (values 64 on, and
    # a parameter that is not every 16th): the sampled stride covers the whole tensor
    name, p = list(lm.model.named_parameters())[3]
    flat = p.data.view(-1)
    stride = max(1, flat.numel() // 4096)
    with torch.no_grad():
        flat[stride * (flat.numel() // stride // 2)] += 1.0
    assert lm.fingerprint() != first, name


def test_fingerprint_includes_the_tokenizer():
    lm = build_tiny()
    before, tok = lm.fingerprint(), tokenizer_fingerprint(lm.tokenizer)
    lm.tokenizer.add_tokens(["<pzshell-new-token>"])
    assert tokenizer_fingerprint(lm.tokenizer) != tok
    assert lm.fingerprint() != before


def test_token_fingerprint_names_the_tokens():
    a = torch.arange(64).view(2, 32)
    assert token_fingerprint(a) == token_fingerprint(a.clone().to(torch.int32))
    b = a.clone()
    b[1, 31] = 0
    assert token_fingerprint(a) != token_fingerprint(b)
