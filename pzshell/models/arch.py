"""Architecture adapters: find decoder blocks and their linear layers without assumptions about
forward signatures (block inputs are captured with hooks by the engine)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PzError

# Paths to the ModuleList of decoder blocks, tried in order. LLaMA family (LLaMA 1/2/3, Mistral,
# Qwen2, TinyLlama, SmolLM, Gemma, Phi-3): model.layers; OPT: model.decoder.layers.
_BLOCK_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers")

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "opt", "gemma", "phi3", "smollm3")


class ArchitectureError(PzError):
    pass


def _get(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def block_list_path(model: nn.Module) -> str:
    n_layers = getattr(model.config, "num_hidden_layers", None)
    for path in _BLOCK_PATHS:
        blocks = _get(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return path
    # Generic fallback: the ModuleList whose length is the configured number of layers.
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and n_layers and len(mod) == n_layers:
            return name
    mt = getattr(model.config, "model_type", type(model).__name__)
    raise ArchitectureError(
        f"unsupported architecture '{mt}': no list of decoder blocks found "
        f"(supported: {', '.join(SUPPORTED)})"
    )


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    return _get(model, block_list_path(model))


def find_linears(module: nn.Module) -> dict[str, nn.Linear]:
    """All ``nn.Linear`` inside a block, by their dotted name (``self_attn.q_proj``)."""
    return {name: m for name, m in module.named_modules() if isinstance(m, nn.Linear)}


def block_linears(model: nn.Module) -> list[dict[str, nn.Linear]]:
    return [find_linears(b) for b in decoder_blocks(model)]


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def count_block_params(model: nn.Module) -> tuple[int, int]:
    """(zeros, total) over the block Linear weights: the population sparsity is counted over."""
    zeros = total = 0
    for layer in block_linears(model):
        for lin in layer.values():
            w = lin.weight.data
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros, total


def sparsity_report(model: nn.Module) -> list[dict]:
    """Per block and per linear: zeros / numel."""
    rows = []
    for i, layer in enumerate(block_linears(model)):
        for name, lin in layer.items():
            w = lin.weight.data
            rows.append(
                {
                    "block": i,
                    "linear": name,
                    "shape": list(w.shape),
                    "sparsity": float((w == 0).sum()) / w.numel(),
                }
            )
    return rows
