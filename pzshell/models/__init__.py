"""Models: loading (aliases, HF directories, GGUF, hub ids) and architecture adapters."""

from .arch import (
    ArchitectureError,
    block_linears,
    count_block_params,
    decoder_blocks,
    find_linears,
    sparsity_report,
)
from .load import (
    LoadedModel,
    ModelError,
    build_tiny,
    load_model,
    pick_device,
    token_fingerprint,
    tokenizer_fingerprint,
)

__all__ = [
    "ArchitectureError",
    "LoadedModel",
    "ModelError",
    "block_linears",
    "build_tiny",
    "count_block_params",
    "decoder_blocks",
    "find_linears",
    "load_model",
    "pick_device",
    "sparsity_report",
    "token_fingerprint",
    "tokenizer_fingerprint",
]
