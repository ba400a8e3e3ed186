"""Text sources (hub data sets, local files, an embedded default) and token windows.

A *source* is named by a string:

* ``wikitext2`` / ``c4``: through the ``datasets`` package when the hub is reachable (WikiText-2
  raw: test split for evaluation, train for calibration; C4: the first ``en`` validation /
  train shard, as in the Wanda and SparseGPT code);
* a path to a local text file (UTF-8);
* ``builtin`` (the default): text that ships with every CPython, the Python language reference
  topics in ``pydoc_data.topics`` (~700 kB of English prose). Its first 80% is the calibration
  part and the last 20% the evaluation part, so the two never overlap. It needs no network and
  no file, which makes every command runnable on a fresh machine.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import PzError

HUB_SOURCES = ("wikitext2", "c4")
BUILTIN = "builtin"


class DataError(PzError):
    pass


@dataclass(frozen=True)
class Text:
    name: str  # how the source was named, for reports
    text: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8", "replace")).hexdigest()[:16]


def _builtin_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def load_text(source: str, *, role: str = "eval") -> Text:
    """The text of a source; ``role`` is ``"eval"`` or ``"calib"`` (selects split / part)."""
    if role not in ("eval", "calib"):
        raise ValueError(role)
    if source in (BUILTIN, "", None):
        text = _builtin_text()
        cut = int(len(text) * 0.8)
        cut = text.rfind("\n\n", 0, cut) + 2 or cut
        part = text[:cut] if role == "calib" else text[cut:]
        return Text(f"builtin:{role} (pydoc_data topics)", part)
    if source in HUB_SOURCES:
        return Text(f"{source}:{'train' if role == 'calib' else 'test'}", _hub_text(source, role))
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"data source '{source}' is not a file, nor one of {', '.join((BUILTIN, *HUB_SOURCES))}"
        )
    if path.is_dir():
        raise DataError(f"data source '{source}' is a directory; give a text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    return Text(str(path), text)


def _hub_text(name: str, role: str) -> str:
    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError(
            f"'{name}' is loaded from the Hugging Face hub through the 'datasets' package, which "
            f"is not installed (pip install 'pzshell[hub]'); or pass a local text file path"
        ) from None
    try:
        if name == "wikitext2":
            split = "train" if role == "calib" else "test"
            ds = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
            return ("\n\n" if role == "eval" else " ").join(ds["text"])
        shard = (
            "en/c4-train.00000-of-01024.json.gz"
            if role == "calib"
            else "en/c4-validation.00000-of-00008.json.gz"
        )
        ds = load_dataset("allenai/c4", data_files={"x": shard}, split="x")
        texts = ds["text"] if role == "calib" else ds["text"][:1100]
        return "\n\n".join(texts)
    except Exception as e:  # network / hub errors come in many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"could not load '{name}' from the hub ({first}); the hub may be unreachable: "
            f"pass a local text file path instead, or 'builtin'"
        ) from None


_TOKEN_CACHE: dict[tuple[int, str, int], torch.Tensor] = {}


def tokenize(tokenizer, text: Text) -> torch.Tensor:
    """All token ids of the text (1-D), without special tokens (cached per tokenizer+text)."""
    key = (id(tokenizer), text.digest, len(text.text))
    if key not in _TOKEN_CACHE:
        if len(_TOKEN_CACHE) >= 8:
            _TOKEN_CACHE.pop(next(iter(_TOKEN_CACHE)))
        enc = tokenizer(text.text, return_tensors="pt", add_special_tokens=False)
        _TOKEN_CACHE[key] = enc.input_ids[0]
    return _TOKEN_CACHE[key]


def calibration_windows(
    tokenizer, text: Text, nsamples: int, seqlen: int, seed: int = 0
) -> torch.Tensor:
    """``nsamples`` windows of ``seqlen`` tokens at random offsets (seeded) of the whole text,
    shape (n, seqlen); see :func:`sample_windows`."""
    return sample_windows(tokenize(tokenizer, text), nsamples, seqlen, seed, name=text.name)


def sample_windows(
    ids: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0, *, name: str = "text"
) -> torch.Tensor:
    """``nsamples`` windows of ``seqlen`` tokens at random offsets of the 1-D token ids ``ids``.

    Offsets are drawn as in the Wanda/SparseGPT WikiText loaders:
    ``random.seed(seed); i = random.randint(0, len - seqlen - 1)``. The one calibration sampler:
    the prune jobs and the search's fitness both draw through it.
    """
    if nsamples < 1:
        raise DataError(f"nsamples must be at least 1, got {nsamples}")
    if ids.numel() < seqlen + 2:
        raise DataError(
            f"calibration text {name} has {ids.numel()} tokens, fewer than one window "
            f"of {seqlen}; use a longer text or a smaller --seqlen"
        )
    out = torch.empty((nsamples, seqlen), dtype=torch.long)
    for k, i in enumerate(window_offsets(ids.numel(), nsamples, seqlen, seed)):
        out[k] = ids[i : i + seqlen]
    return out


def window_offsets(n_tokens: int, nsamples: int, seqlen: int, seed: int = 0) -> list[int]:
    """The start offsets :func:`sample_windows` draws (``random.seed(seed)``, then
    ``randint(0, n_tokens - seqlen - 1)`` per window): which tokens a calibration touched."""
    rng = random.Random(seed)
    return [rng.randint(0, n_tokens - seqlen - 1) for _ in range(nsamples)]


def eval_windows(
    tokenizer, text: Text, seqlen: int, max_windows: int | None = None
) -> torch.Tensor:
    """Non-overlapping windows of ``seqlen`` tokens from the start, shape (n, seqlen): all of
    them, or exactly ``max_windows`` (a text too short for that many is an error, found before
    any long work since jobs tokenise their evaluation text first)."""
    if max_windows is not None and max_windows < 1:
        raise DataError(f"evaluation windows must be at least 1, got {max_windows}")
    ids = tokenize(tokenizer, text)
    n = ids.numel() // seqlen
    if n == 0:
        raise DataError(
            f"evaluation text {text.name} has {ids.numel()} tokens, fewer than one window of "
            f"{seqlen}"
        )
    if max_windows is not None:
        if n < max_windows:
            raise DataError(
                f"evaluation text {text.name} has {ids.numel()} tokens: {n} window(s) of "
                f"{seqlen}, but {max_windows} were asked for; ask for at most {n} windows, "
                f"shorter windows, or a longer text"
            )
        n = max_windows
    return ids[: n * seqlen].reshape(n, seqlen)


__all__ = [
    "BUILTIN",
    "HUB_SOURCES",
    "DataError",
    "Text",
    "calibration_windows",
    "eval_windows",
    "load_text",
    "sample_windows",
    "tokenize",
    "window_offsets",
]
