"""The structurally pruned model: its modules, its per-block shapes and its directory format.

Structured pruning (:mod:`pzshell.engine.structured`) leaves blocks whose shapes a stock
``LlamaConfig`` cannot describe: fewer KV groups (with their ``q:kv`` query heads), a narrower
MLP, or no attention / MLP at all (:class:`EmptyAttention`, :class:`EmptyMLP`). This module holds
what *loading* such a model needs, below the engine:

* the empty modules and the two shrinking operations (:func:`keep_attention_groups`,
  :func:`keep_mlp_channels`), which the engine's surgery also uses, so one piece of code both
  prunes a model and rebuilds a saved one;
* :func:`structure_of` (per-block shapes) and :func:`reshape_to_structure`;
* the directory format: ``save_pretrained`` (config with the new ``num_hidden_layers``,
  safetensors weights, tokenizer) plus :data:`STRUCTURE_FILE`, the per-block shapes.
  :func:`load_structured` builds the stock model from the config, applies the recorded shapes,
  then loads the state dict strictly: one call gives back exactly the saved model.
  ``pzshell.models.load_model(DIR)`` goes through it when the directory has a structure file.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

from .. import atomic
from ..errors import PzError
from .arch import decoder_blocks

STRUCTURE_FILE = "pzshell_structure.json"
FORMAT = "pzshell-structured/1"

ATTN_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")


class StructureError(PzError):
    """A model or a model directory whose block structure cannot be read or rebuilt."""


# ------------------------------------------------------------------------------------------------
# Empty modules: what a block's attention / MLP becomes when all of its units are removed
# ------------------------------------------------------------------------------------------------


class EmptyAttention(nn.Module):
    """Attention with no KV group left: contributes nothing (or its output bias) to the residual.

    Returns ``(output, None)`` like the transformers attention modules.
    """

    def __init__(self, hidden_size: int, bias: torch.Tensor | None = None, layer_idx: int = 0):
        super().__init__()
        self.hidden_size = hidden_size
        self.layer_idx = layer_idx
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        cache = kwargs.get("past_key_values", kwargs.get("past_key_value"))
        if cache is not None and hasattr(cache, "update"):
            # keep the KV cache's length right for this layer (the model reads its length from
            # layer 0): zero heads, one column per new token
            b, t = hidden_states.shape[:2]
            empty = hidden_states.new_zeros(b, 0, t, 1)
            cache.update(empty, empty, self.layer_idx)
        out = torch.zeros_like(hidden_states)
        if self.bias is not None:
            out = out + self.bias
        return out, None


class EmptyMLP(nn.Module):
    """An MLP with no intermediate channel left: adds nothing (or its output bias)."""

    def __init__(self, hidden_size: int, bias: torch.Tensor | None = None):
        super().__init__()
        self.hidden_size = hidden_size
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        return out + self.bias if self.bias is not None else out


# ------------------------------------------------------------------------------------------------
# Shrinking a block: keep some KV groups / MLP channels
# ------------------------------------------------------------------------------------------------


def head_dim_of(attn: nn.Module, config) -> int:
    """The attention head width: the module's, the config's, or hidden size / heads."""
    hd = getattr(attn, "head_dim", None) or getattr(config, "head_dim", None)
    if not hd:
        hd = config.hidden_size // config.num_attention_heads
    return int(hd)


def slice_linear(
    lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
) -> nn.Linear:
    """Pure: a new, smaller ``nn.Linear`` with the given output rows / input columns."""
    w = lin.weight.data
    b = lin.bias.data if lin.bias is not None else None
    if rows is not None:
        rows = rows.to(w.device)
        w = w.index_select(0, rows)
        b = b.index_select(0, rows) if b is not None else None
    if cols is not None:
        w = w.index_select(1, cols.to(w.device))
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    new.weight.requires_grad_(lin.weight.requires_grad)
    return new


def group_rows(groups: list[int], rows_per_group: int) -> torch.Tensor:
    """The row indices of whole groups of ``rows_per_group`` consecutive rows."""
    if not groups:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(g * rows_per_group, (g + 1) * rows_per_group) for g in groups])


def keep_attention_groups(
    block: nn.Module, keep: list[int], head_dim: int, hidden_size: int
) -> nn.Module:
    """Keep the KV groups ``keep`` of ``block.self_attn`` (a LLaMA-style attention with
    ``q_proj``/``k_proj``/``v_proj``/``o_proj``); no group left: an :class:`EmptyAttention`
    with ``o_proj``'s bias. Returns the module now in place."""
    attn = block.self_attn
    if isinstance(attn, EmptyAttention):
        return attn
    q, k, v, o = (getattr(attn, n) for n in ATTN_LINEARS)
    if not keep:
        o_bias = o.bias.data if o.bias is not None else None
        empty = EmptyAttention(hidden_size, o_bias, getattr(attn, "layer_idx", 0))
        empty.to(device=o.weight.device, dtype=o.weight.dtype)
        block.self_attn = empty
        return empty
    keep = sorted(keep)
    r = (q.out_features // head_dim) // (k.out_features // head_dim)  # query heads per KV head
    q_rows = group_rows(keep, r * head_dim)
    kv_rows = group_rows(keep, head_dim)
    attn.q_proj = slice_linear(q, rows=q_rows)
    attn.k_proj = slice_linear(k, rows=kv_rows)
    attn.v_proj = slice_linear(v, rows=kv_rows)
    attn.o_proj = slice_linear(o, cols=q_rows)
    # transformers' LlamaAttention reshapes with -1 heads and reads only num_key_value_groups
    # (unchanged: the q:kv ratio is kept); older versions and other families keep head counts
    # as module attributes, so those are updated where present.
    n_kv, n_q = len(keep), len(keep) * r
    heads = {"num_heads": n_q, "num_attention_heads": n_q, "num_key_value_heads": n_kv}
    for attr, val in heads.items():
        if isinstance(getattr(attn, attr, None), int):
            setattr(attn, attr, val)
    if isinstance(getattr(attn, "num_key_value_groups", None), int):
        attn.num_key_value_groups = r
    return attn


def keep_mlp_channels(block: nn.Module, keep: list[int], hidden_size: int) -> nn.Module:
    """Keep the intermediate channels ``keep`` of ``block.mlp`` (a gated MLP); none left: an
    :class:`EmptyMLP` with ``down_proj``'s bias. Returns the module now in place."""
    mlp = block.mlp
    if isinstance(mlp, EmptyMLP):
        return mlp
    gate, up, down = (getattr(mlp, n) for n in MLP_LINEARS)
    if not keep:
        bias = down.bias.data if down.bias is not None else None
        empty = EmptyMLP(hidden_size, bias)
        empty.to(device=down.weight.device, dtype=down.weight.dtype)
        block.mlp = empty
        return empty
    idx = torch.tensor(sorted(keep), dtype=torch.long)
    mlp.gate_proj = slice_linear(gate, rows=idx)
    mlp.up_proj = slice_linear(up, rows=idx)
    mlp.down_proj = slice_linear(down, cols=idx)
    if isinstance(getattr(mlp, "intermediate_size", None), int):
        mlp.intermediate_size = len(keep)
    return mlp


# ------------------------------------------------------------------------------------------------
# Per-block shapes
# ------------------------------------------------------------------------------------------------


def _linears(module: nn.Module, names: tuple[str, ...], what: str, index: int, config):
    lins = [getattr(module, n, None) for n in names]
    if not all(isinstance(x, nn.Linear) for x in lins):
        mt = getattr(config, "model_type", "?")
        raise StructureError(
            f"block {index} of this '{mt}' model has no {'/'.join(names)} {what}: "
            f"GQA-aware structured pruning needs LLaMA-style blocks"
        )
    return lins


def block_shape(block: nn.Module, index: int, config) -> dict:
    """The shapes of one LLaMA-family block: ``q_heads``, ``kv_heads``, ``head_dim``,
    ``intermediate_size`` (0 for an empty part), and for an empty part whether it has a bias."""
    attn = getattr(block, "self_attn", None)
    mlp = getattr(block, "mlp", None)
    if attn is None or mlp is None:
        mt = getattr(config, "model_type", "?")
        raise StructureError(
            f"block {index} of this '{mt}' model has no self_attn/mlp: GQA-aware structured "
            f"pruning supports LLaMA-family blocks (llama, mistral, qwen2, qwen3, smollm)"
        )
    hd = head_dim_of(attn, config)
    row = {"q_heads": 0, "kv_heads": 0, "head_dim": hd, "intermediate_size": 0}
    if isinstance(attn, EmptyAttention):
        row["attention_bias"] = attn.bias is not None
    else:
        q, k, _, _ = _linears(attn, ATTN_LINEARS, "linears", index, config)
        row["q_heads"], row["kv_heads"] = q.out_features // hd, k.out_features // hd
    if isinstance(mlp, EmptyMLP):
        row["mlp_bias"] = mlp.bias is not None
    else:
        row["intermediate_size"] = _linears(mlp, MLP_LINEARS, "MLP", index, config)[0].out_features
    return row


def structure_of(model: nn.Module) -> list[dict]:
    """Per block shapes: what a stock config cannot describe."""
    return [block_shape(b, i, model.config) for i, b in enumerate(decoder_blocks(model))]


@torch.no_grad()
def reshape_to_structure(model: nn.Module, structure: list[dict]) -> None:
    """Give a freshly built stock model the recorded per-block shapes (the values are
    placeholders, to be overwritten by the saved state dict)."""
    blocks = decoder_blocks(model)
    if len(blocks) != len(structure):
        raise StructureError(
            f"the structure file describes {len(structure)} blocks, the config {len(blocks)}"
        )
    hidden = int(model.config.hidden_size)
    for i, (block, s) in enumerate(zip(blocks, structure, strict=True)):
        have = block_shape(block, i, model.config)
        group = have["q_heads"] // have["kv_heads"] if have["kv_heads"] else 0
        if have["head_dim"] != s["head_dim"] or (
            have["kv_heads"] and s["kv_heads"] and group != s["q_heads"] // s["kv_heads"]
        ):
            raise StructureError(f"block {i}: the structure file does not fit the config")
        kv = int(s["kv_heads"])
        if kv > have["kv_heads"] or s["intermediate_size"] > have["intermediate_size"]:
            raise StructureError(f"block {i}: the structure is larger than the config")
        keep_attention_groups(block, list(range(kv)), have["head_dim"], hidden)
        if kv == 0 and not s.get("attention_bias"):
            block.self_attn.bias = None
        keep_mlp_channels(block, list(range(int(s["intermediate_size"]))), hidden)
        if s["intermediate_size"] == 0 and not s.get("mlp_bias"):
            block.mlp.bias = None


def has_custom_structure(model: nn.Module) -> bool:
    """True when some block's shapes differ from what the model's config describes (so
    ``save_pretrained`` alone would not reload)."""
    cfg = model.config
    try:
        blocks = structure_of(model)
    except PzError:  # not a LLaMA-family model: never structurally pruned by us
        return False
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    want = {
        "q_heads": cfg.num_attention_heads,
        "kv_heads": getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
        "head_dim": hd,
        "intermediate_size": cfg.intermediate_size,
    }
    return any(any(b[k] != v for k, v in want.items()) or len(b) > 4 for b in blocks)


# ------------------------------------------------------------------------------------------------
# The model directory
# ------------------------------------------------------------------------------------------------


def is_structured_dir(path: str | Path) -> bool:
    return (Path(path) / STRUCTURE_FILE).is_file()


def check_model_target(path: str | Path, flag: str = "model directory") -> None:
    """A model directory is written whole under a temporary name and then renamed onto
    ``path``, replacing what was there: refuse (before any work) a ``path`` that is a file or a
    non-empty directory that holds no saved model, so that no one's other files are replaced."""
    d = Path(path)
    if d.is_file():
        raise PzError(f"{flag} {d}: a file of that name exists; give a directory")
    if d.is_dir() and any(d.iterdir()) and not (d / "config.json").is_file():
        raise PzError(
            f"{flag} {d}: the directory exists and holds other files, not a saved model; a model "
            f"directory is replaced whole, so give a new or empty directory"
        )


def save_model(
    model: nn.Module,
    tokenizer,
    directory: str | Path,
    *,
    structured: bool | None = None,
    removed_blocks: list[int] | None = None,
    source_blocks: list[int] | None = None,
    notes: dict[str, object] | None = None,
) -> Path:
    """Save any model so that ``load_model(directory)`` gives it back: ``save_pretrained`` (model
    and tokenizer), the structure file when it was structurally pruned (``structured=None``: when
    its shapes differ from its config), and ``notes`` (file name -> JSON object, e.g. how the
    model was made). The directory is written whole under a temporary name beside it and renamed
    into place: a failed write (full disk, file-size limit, kill) leaves the previous directory,
    or none, never a half-saved model."""
    d = Path(directory)
    check_model_target(d)
    if structured is None:
        structured = has_custom_structure(model)
    with atomic.writing_dir(d) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if structured:
            blocks = structure_of(model)
            doc = {
                "format": FORMAT,
                "model_type": getattr(model.config, "model_type", None),
                "num_hidden_layers": len(blocks),
                "removed_blocks": list(removed_blocks or []),
                "source_blocks": list(source_blocks) if source_blocks is not None else None,
                "blocks": blocks,
            }
            atomic.write_json(tmp / STRUCTURE_FILE, doc)
        for name, obj in (notes or {}).items():
            atomic.write_json(tmp / name, obj)
    return d


def save_structured(model: nn.Module, tokenizer, directory: str | Path, **kw) -> Path:
    """:func:`save_model` with the structure file always written."""
    return save_model(model, tokenizer, directory, structured=True, **kw)


def _state_dict_files(d: Path) -> list[Path]:
    single = d / "model.safetensors"
    if single.is_file():
        return [single]
    index = d / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [d / n for n in names]
    bins = sorted(d.glob("pytorch_model*.bin"))
    if bins:
        return bins
    raise StructureError(f"{d}: no model.safetensors (or index, or pytorch_model.bin) found")


def _read_state_dict(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    sd: dict[str, torch.Tensor] = {}
    for f in _state_dict_files(d):
        if f.suffix == ".safetensors":
            sd.update(load_file(str(f)))
        else:
            sd.update(torch.load(f, map_location="cpu", weights_only=True))
    return sd


def load_structured(directory: str | Path, *, dtype: torch.dtype | None = None):
    """Rebuild a model saved by :func:`save_structured`; returns ``(model, tokenizer)``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    d = Path(directory)
    try:
        doc = json.loads((d / STRUCTURE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise StructureError(f"{d / STRUCTURE_FILE}: cannot read ({e})") from None
    if doc.get("format") != FORMAT or not isinstance(doc.get("blocks"), list):
        raise StructureError(f"{d / STRUCTURE_FILE}: not a {FORMAT} structure file")
    try:
        config = AutoConfig.from_pretrained(d)
    except (OSError, ValueError) as e:
        raise StructureError(f"{d}: cannot read config.json ({e})") from None
    if dtype is None:
        dtype = getattr(config, "dtype", None) or torch.float32
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
    with _skip_init():  # every value is overwritten by the state dict below
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    reshape_to_structure(model, doc["blocks"])
    sd = _read_state_dict(d)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = set(_tied_keys(model))
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise StructureError(
            f"{d}: the saved weights do not fit the recorded structure (missing "
            f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
            f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    if tied:
        model.tie_weights()
    model.to(dtype=dtype)
    model.eval()
    try:
        tok = AutoTokenizer.from_pretrained(d)
    except (OSError, ValueError):
        tok = None
    return model, tok


def _skip_init():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialize (slower, same result)
        return contextlib.nullcontext()
    return no_init_weights()


def _tied_keys(model: nn.Module) -> list[str]:
    """State-dict keys that ``save_pretrained`` leaves out because they are tied."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return []
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return list(keys.keys() if isinstance(keys, dict) else keys)


__all__ = [
    "ATTN_LINEARS",
    "FORMAT",
    "MLP_LINEARS",
    "STRUCTURE_FILE",
    "EmptyAttention",
    "EmptyMLP",
    "StructureError",
    "block_shape",
    "group_rows",
    "has_custom_structure",
    "head_dim_of",
    "is_structured_dir",
    "keep_attention_groups",
    "keep_mlp_channels",
    "load_structured",
    "reshape_to_structure",
    "save_model",
    "save_structured",
    "slice_linear",
    "structure_of",
]
