"""Save and reload structurally pruned models, and write the run's tables and plot.

A pruned model has per-block shapes (heads, KV groups, MLP width, empty attention or MLP) that a
stock ``LlamaConfig`` cannot describe, so ``from_pretrained`` cannot rebuild it. We save it with
``save_pretrained`` (config with the new ``num_hidden_layers``, safetensors weights, tokenizer)
plus :data:`STRUCTURE_FILE`, the per-block shapes. :func:`load_structured` builds the stock model
from the config, applies the recorded shapes with the same surgery code that pruned it, then
loads the state dict strictly: one call gives back exactly the saved model.
``pzshell.models.load_model(DIR)`` (and so every ``--model DIR``) goes through it when the
directory has a structure file.
"""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import torch
from torch import nn

from ..errors import PzError
from .structured import KIND_NAMES, Plan, StructuredError, reshape_to_structure, structure_of

STRUCTURE_FILE = "pzshell_structure.json"
FORMAT = "pzshell-structured/1"


def is_structured_dir(path: str | Path) -> bool:
    return (Path(path) / STRUCTURE_FILE).is_file()


def save_structured(
    model: nn.Module,
    tokenizer,
    directory: str | Path,
    *,
    removed_blocks: list[int] | None = None,
    source_blocks: list[int] | None = None,
) -> Path:
    """``save_pretrained`` plus the per-block shapes; returns the directory."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d)
    if tokenizer is not None:
        tokenizer.save_pretrained(d)
    doc = {
        "format": FORMAT,
        "model_type": getattr(model.config, "model_type", None),
        "num_hidden_layers": len(structure_of(model)),
        "removed_blocks": list(removed_blocks or []),
        "source_blocks": list(source_blocks) if source_blocks is not None else None,
        "blocks": structure_of(model),
    }
    (d / STRUCTURE_FILE).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return d


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


def save_model(model: nn.Module, tokenizer, directory: str | Path) -> Path:
    """Save any model so that ``load_model(directory)`` gives it back: with the structure file
    when it was structurally pruned, plain ``save_pretrained`` otherwise."""
    if has_custom_structure(model):
        return save_structured(model, tokenizer, directory)
    d = Path(directory)
    model.save_pretrained(d)
    if tokenizer is not None:
        tokenizer.save_pretrained(d)
    stale = d / STRUCTURE_FILE
    if stale.exists():  # the directory held a pruned model before
        stale.unlink()
    return d


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
    raise StructuredError(f"{d}: no model.safetensors (or index, or pytorch_model.bin) found")


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
        raise StructuredError(f"{d / STRUCTURE_FILE}: cannot read ({e})") from None
    if doc.get("format") != FORMAT or not isinstance(doc.get("blocks"), list):
        raise StructuredError(f"{d / STRUCTURE_FILE}: not a {FORMAT} structure file")
    try:
        config = AutoConfig.from_pretrained(d)
    except (OSError, ValueError) as e:
        raise StructuredError(f"{d}: cannot read config.json ({e})") from None
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
        raise StructuredError(
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


# ------------------------------------------------------------------------------------------------
# Run outputs
# ------------------------------------------------------------------------------------------------


def write_units_csv(plan: Plan, path: str | Path) -> None:
    """One row per unit: block, kind, unit, importance, cost, kept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["block", "kind", "unit", "importance", "cost", "kept"])
        w.writeheader()
        for row in plan.table.rows():
            row["importance"] = f"{row['importance']:.6g}"
            w.writerow(row)


def plot_kept(blocks: list[dict], path: str | Path, title: str = "") -> None:
    """Bar chart per block of the fraction of KV groups and MLP channels kept (matplotlib Agg);
    removed blocks are marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x = [b["block"] for b in blocks]
    attn = [b["kv_groups_kept"] / max(b["kv_groups_before"], 1) for b in blocks]
    mlp = [b["intermediate_kept"] / max(b["intermediate_before"], 1) for b in blocks]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(blocks) + 2), 3.6), dpi=110)
    width = 0.4
    ax.bar([i - width / 2 for i in x], attn, width, label="attention: KV groups kept")
    ax.bar([i + width / 2 for i in x], mlp, width, label="MLP: channels kept")
    for b in blocks:
        if b.get("removed"):
            ax.axvspan(b["block"] - 0.5, b["block"] + 0.5, color="red", alpha=0.12, lw=0)
        if b.get("frozen"):
            ax.text(b["block"], 1.02, "*", ha="center", va="bottom", fontsize=9)
    ax.set_xlabel("block (red: removed, *: frozen)")
    ax.set_ylabel("fraction kept")
    ax.set_ylim(0, 1.12)
    ax.set_xlim(-0.7, (max(x) if x else 0) + 0.7)
    if len(x) <= 40:
        ax.set_xticks(x)
        ax.tick_params(axis="x", labelsize=7)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def kind_summary(plan: Plan) -> dict:
    """Parameters removed per kind (attention / mlp), for reports."""
    out = {}
    t = plan.table
    for k, name in enumerate(KIND_NAMES):
        sel = t.kind == k
        out[name] = {
            "units": int(sel.sum()),
            "units_removed": int((sel & ~t.kept).sum()),
            "params": int(t.cost[sel].sum()),
            "params_removed": int(t.cost[sel & ~t.kept].sum()),
        }
    return out


__all__ = [
    "FORMAT",
    "STRUCTURE_FILE",
    "has_custom_structure",
    "save_model",
    "is_structured_dir",
    "kind_summary",
    "load_structured",
    "plot_kept",
    "save_structured",
    "write_units_csv",
]
