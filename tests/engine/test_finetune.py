"""Recovery fine-tuning: LoRA merged back in place, full fine-tuning, sparsity preservation."""

from __future__ import annotations

import pytest
import torch

from pzshell.engine.finetune import (
    FinetuneError,
    block_sparsity,
    default_target_modules,
    full_finetune,
    lora_finetune,
)
from pzshell.engine.prune import PruneConfig, prune_model
from pzshell.models import load_model, sparsity_report

from ..conftest import zero_pattern


@pytest.fixture
def pruned_tiny():
    lm = load_model("tiny", device="cpu")
    prune_model(lm.model, PruneConfig(method="magnitude", sparsity_ratio=0.5, sparsity_type="2:4"))
    return lm


def _windows(n: int = 6, seqlen: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # a learnable pattern (repeated short phrase) so the loss must go down
    base = torch.randint(0, 200, (8,), generator=g)
    return base.repeat(n, seqlen // 8 + 1)[:, :seqlen].clone()


def test_default_targets_are_block_linears(pruned_tiny):
    assert default_target_modules(pruned_tiny.model) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]


def test_lora_merge_preserves_sparsity_and_learns(pruned_tiny):
    model = pruned_tiny.model
    before = zero_pattern(model)
    head = model.lm_head.weight.detach().clone()
    flags = [p.requires_grad for p in model.parameters()]
    rep = lora_finetune(
        model,
        pruned_tiny.tokenizer,
        _windows(),
        lr=3e-3,
        epochs=3,
        batch_size=2,
        preserve_sparsity=True,
    )
    # a plain transformers model again: no peft wrapper, no LoRA modules left
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not any("lora" in n for n, _ in model.named_modules())
    assert not hasattr(model, "peft_config")
    assert [p.requires_grad for p in model.parameters()] == flags
    # the plain merge is dense; the re-applied mask restores exactly the same zero pattern
    assert rep["sparsity_after_merge"] < 0.5
    assert rep["sparsity_before"] == pytest.approx(0.5)
    assert rep["sparsity_after"] == rep["sparsity_before"] == block_sparsity(model)
    assert all(torch.equal(a, b) for a, b in zip(before, zero_pattern(model), strict=True))
    assert all(r["sparsity"] == 0.5 for r in sparsity_report(model))
    # LoRA stays off the LM head; the loss went down
    assert torch.equal(model.lm_head.weight, head)
    assert rep["loss_last_epoch"] < rep["loss_first_epoch"]
    assert rep["steps"] == 9 and rep["adapted_linears"] == 14 and rep["trainable_params"] > 0


def test_lora_without_preserving_fills_weights_back(pruned_tiny):
    rep = lora_finetune(pruned_tiny.model, pruned_tiny.tokenizer, _windows(4), lr=1e-3)
    assert rep["sparsity_after"] < rep["sparsity_before"]


def test_lora_target_subset(pruned_tiny):
    model = pruned_tiny.model
    mlp = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    rep = lora_finetune(
        model,
        None,
        _windows(2),
        target_modules=["q_proj", "v_proj"],
        lr=1e-3,
        preserve_sparsity=True,
    )
    assert rep["adapted_linears"] == 4
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, mlp)
    with pytest.raises(FinetuneError, match="no decoder-block linear"):
        lora_finetune(model, None, _windows(2), target_modules=["nope"])


def test_full_finetune_preserves_sparsity(pruned_tiny):
    model = pruned_tiny.model
    before = zero_pattern(model)
    events = []
    rep = full_finetune(
        model, None, _windows(), lr=1e-3, epochs=2, preserve_sparsity=True, progress=events.append
    )
    assert all(torch.equal(a, b) for a, b in zip(before, zero_pattern(model), strict=True))
    assert rep["sparsity_after"] == rep["sparsity_before"]
    assert rep["loss_last_epoch"] < rep["loss_first_epoch"]
    assert events[-1].stage == "finetune" and events[-1].done == events[-1].total == 12


def test_bad_inputs(pruned_tiny):
    with pytest.raises(FinetuneError, match="token windows"):
        lora_finetune(pruned_tiny.model, None, torch.zeros(5, dtype=torch.long))
    with pytest.raises(FinetuneError, match="epochs"):
        full_finetune(pruned_tiny.model, None, _windows(2), epochs=0)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft uses a deprecated HF property
def test_mask_aware_lora_trains_exactly_the_merged_masked_model(pruned_tiny):
    """The function trained (mask-aware LoRA) equals the model left after merge + mask."""
    from peft import LoraConfig, get_peft_model

    from pzshell.engine.finetune import _make_mask_aware, apply_masks, record_masks

    model = pruned_tiny.model
    masks = record_masks(model)
    ids = _windows(2)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=list(masks))
    peft_model = get_peft_model(model, cfg)
    modules = dict(model.named_modules())
    g = torch.Generator().manual_seed(0)
    for path in masks:
        lora = modules[path]
        lora.lora_B["default"].weight.data = torch.randn(
            lora.lora_B["default"].weight.shape, generator=g
        )  # peft starts B at zero; a nonzero update makes the check meaningful
        _make_mask_aware(lora, masks[path])
    with torch.no_grad():
        trained = peft_model(input_ids=ids).logits
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        dense_merge = merged(input_ids=ids).logits
    apply_masks(merged, masks)
    with torch.no_grad():
        masked_merge = merged(input_ids=ids).logits
    assert torch.allclose(trained, masked_merge, atol=1e-4)
    assert not torch.allclose(trained, dense_merge, atol=1e-2)
    assert block_sparsity(merged) == 0.5


def test_lora_is_reproducible_from_its_seed():
    """peft draws the LoRA A matrices from torch's generator: the seed must fix them, and the
    caller's generator state must be left as it was."""
    torch.manual_seed(123)
    untouched = torch.rand(4)
    outs = []
    for seed in (0, 0, 1):
        lm = load_model("tiny", device="cpu")
        prune_model(lm.model, PruneConfig(method="magnitude", sparsity_ratio=0.5))
        torch.manual_seed(123)
        lora_finetune(
            lm.model, lm.tokenizer, _windows(3), lr=3e-3, seed=seed, preserve_sparsity=True
        )
        assert torch.equal(torch.rand(4), untouched)
        outs.append(lm.model.model.layers[0].mlp.up_proj.weight.detach().clone())
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])
