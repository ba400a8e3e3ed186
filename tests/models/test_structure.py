"""The structurally pruned model's format (pzshell.models.structure), below the engine: a model
shrunk by hand with its two operations saves and reloads exactly, without the engine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pzshell.models import decoder_blocks, load_model
from pzshell.models.structure import (
    STRUCTURE_FILE,
    EmptyAttention,
    EmptyMLP,
    StructureError,
    has_custom_structure,
    keep_attention_groups,
    keep_mlp_channels,
    load_structured,
    reshape_to_structure,
    save_model,
    structure_of,
)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def shrink(model) -> None:
    """Block 0: one of two KV groups, no MLP; block 1: no attention, 40 MLP channels."""
    b0, b1 = decoder_blocks(model)
    keep_attention_groups(b0, [1], 16, 64)
    keep_mlp_channels(b0, [], 64)
    keep_attention_groups(b1, [], 16, 64)
    keep_mlp_channels(b1, list(range(0, 80, 2)), 64)


def test_structure_of_a_shrunk_model(tiny):
    assert not has_custom_structure(tiny.model)
    shrink(tiny.model)
    b0, b1 = decoder_blocks(tiny.model)
    assert isinstance(b0.mlp, EmptyMLP) and isinstance(b1.self_attn, EmptyAttention)
    assert b0.self_attn.q_proj.weight.shape == (32, 64) and b0.self_attn.o_proj.in_features == 32
    assert structure_of(tiny.model) == [
        {"q_heads": 2, "kv_heads": 1, "head_dim": 16, "intermediate_size": 0, "mlp_bias": False},
        {
            "q_heads": 0,
            "kv_heads": 0,
            "head_dim": 16,
            "intermediate_size": 40,
            "attention_bias": False,
        },
    ]
    assert has_custom_structure(tiny.model)


def test_save_and_load_exactly(tiny, tmp_path):
    shrink(tiny.model)
    ids = torch.randint(0, 257, (2, 12), generator=torch.Generator().manual_seed(0))
    want = logits(tiny.model, ids)
    save_model(tiny.model, tiny.tokenizer, tmp_path / "m")
    doc = json.loads((tmp_path / "m" / STRUCTURE_FILE).read_text())
    assert doc["format"] == "pzshell-structured/1" and doc["num_hidden_layers"] == 2
    model, tok = load_structured(tmp_path / "m")
    assert tok is not None and torch.equal(logits(model, ids), want)
    lm = load_model(str(tmp_path / "m"), device="cpu")
    assert "structurally pruned" in lm.source and torch.equal(logits(lm.model, ids), want)


def test_reshape_rejects_a_structure_that_does_not_fit(tiny):
    blocks = structure_of(tiny.model)
    with pytest.raises(StructureError, match="describes 1 blocks"):
        reshape_to_structure(tiny.model, blocks[:1])
    bigger = [dict(b, intermediate_size=b["intermediate_size"] + 1) for b in blocks]
    with pytest.raises(StructureError, match="larger than the config"):
        reshape_to_structure(tiny.model, bigger)


def test_loading_a_pruned_model_needs_no_engine(tiny, tmp_path):
    shrink(tiny.model)
    save_model(tiny.model, tiny.tokenizer, tmp_path / "m")
    code = (
        "import sys; from pzshell.models import load_model; "
        f"load_model({str(tmp_path / 'm')!r}, device='cpu'); "
        "print(sorted(m for m in sys.modules if m.startswith('pzshell.engine')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
