"""Checking model files before a loader reads them: a GGUF file's header and tensor table, a
safetensors file's header. A truncated or corrupt file is named with what is wrong with it
(``truncated: the tensors need 80,000,000 bytes, the file has 50,000,000``) instead of the
reader's ``struct.error`` or ``cannot reshape array``.

Only the headers are read (a few MB at most); tensor data is never touched.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from ..errors import PzError


class ModelFileError(PzError):
    """A model file that cannot be read: not the format it claims, truncated, or corrupt."""


# ------------------------------------------------------------------------------------------------
# GGUF
# ------------------------------------------------------------------------------------------------

_GGUF_VERSIONS = (2, 3)
_KV_WIDTH = {0: 1, 1: 1, 7: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 10: 8, 11: 8, 12: 8}
_PLAIN_BYTES = {0: 4, 1: 2, 30: 2, 24: 1, 25: 2, 26: 4, 27: 8, 28: 8}  # F32 F16 BF16 I8..I64 F64


class _Truncated(Exception):
    pass


class _Reader:
    def __init__(self, f, size: int):
        self.f, self.size, self.pos = f, size, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise _Truncated
        b = self.f.read(n)
        if len(b) != n:
            raise _Truncated
        self.pos += n
        return b

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def string(self) -> bytes:
        (n,) = self.unpack("<Q")
        return self.take(n)

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Truncated
        self.f.seek(n, 1)
        self.pos += n


def _block_size(ggml_type: int) -> tuple[int, int] | None:
    """(elements per block, bytes per block) of a ggml type, or None if unknown."""
    if ggml_type in _PLAIN_BYTES:
        return 1, _PLAIN_BYTES[ggml_type]
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        return tuple(GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)])
    except (ImportError, ValueError, KeyError):
        return None


def check_gguf(path: str | Path) -> None:
    """Raise :class:`ModelFileError` naming ``path`` if it is not a complete GGUF file: wrong
    magic or version, a header cut short or inconsistent, or tensor data past the end."""
    path = Path(path)
    try:
        size = path.stat().st_size
        f = path.open("rb")
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        r = _Reader(f, size)
        try:
            magic = r.take(4) if size >= 4 else b""
        except _Truncated:
            magic = b""
        if magic != b"GGUF":
            what = "it is empty" if size == 0 else f"it starts with {magic[:4]!r}, not b'GGUF'"
            raise ModelFileError(f"{path}: not a GGUF file ({what})")
        try:
            (version,) = r.unpack("<I")
            if version not in _GGUF_VERSIONS:
                raise ModelFileError(
                    f"{path}: GGUF version {version} is not one this loader reads (2 or 3); "
                    f"the file is corrupt or from an unsupported writer"
                )
            n_tensors, n_kv = r.unpack("<QQ")
            if n_tensors > size or n_kv > size:  # every entry takes at least one byte
                raise ModelFileError(
                    f"{path}: corrupt GGUF header (it claims {n_tensors} tensors and {n_kv} "
                    f"metadata entries in a file of {size:,} bytes)"
                )
            alignment = 32
            for _ in range(n_kv):
                key = r.string()
                (vtype,) = r.unpack("<I")
                if key == b"general.alignment" and vtype in (4, 10):
                    (alignment,) = r.unpack("<I" if vtype == 4 else "<Q")
                    continue
                _skip_value(r, vtype, path)
            tensors = []
            for _ in range(n_tensors):
                name = r.string()
                (n_dims,) = r.unpack("<I")
                if n_dims > 8:
                    raise ModelFileError(
                        f"{path}: corrupt GGUF tensor table ({name[:60]!r} has {n_dims} dims)"
                    )
                dims = r.unpack(f"<{n_dims}Q")
                ggml_type, offset = r.unpack("<IQ")
                tensors.append((name, dims, ggml_type, offset))
        except _Truncated:
            raise ModelFileError(
                f"{path}: truncated GGUF file: it ends ({size:,} bytes) inside its header, "
                f"before the metadata and tensor table are complete"
            ) from None
        if alignment <= 0:
            raise ModelFileError(f"{path}: corrupt GGUF header (alignment {alignment})")
        data_start = (r.pos + alignment - 1) // alignment * alignment
        need, last = data_start, None
        for name, dims, ggml_type, offset in tensors:
            bs = _block_size(ggml_type)
            n = 1
            for d in dims:
                n *= d
            nbytes = n // bs[0] * bs[1] if bs else 0
            end = data_start + offset + nbytes
            if end > need:
                need, last = end, name
        if need > size:
            which = last.decode("utf-8", "replace") if last else "?"
            raise ModelFileError(
                f"{path}: truncated GGUF file: its tensors need {need:,} bytes (up to the end of "
                f"'{which}') but the file has {size:,}; copy or download it again"
            )


def _skip_value(r: _Reader, vtype: int, path: Path) -> None:
    if vtype in _KV_WIDTH:
        r.skip(_KV_WIDTH[vtype])
    elif vtype == 8:
        (n,) = r.unpack("<Q")
        r.skip(n)
    elif vtype == 9:
        etype, count = r.unpack("<IQ")
        if count > r.size:
            raise _Truncated
        if etype in _KV_WIDTH:
            r.skip(count * _KV_WIDTH[etype])
        else:
            for _ in range(count):
                _skip_value(r, etype, path)
    else:
        raise ModelFileError(f"{path}: corrupt GGUF metadata (unknown value type {vtype})")


# ------------------------------------------------------------------------------------------------
# safetensors
# ------------------------------------------------------------------------------------------------

_HEADER_MAX = 100 * 1024 * 1024  # the safetensors format's own limit


def check_safetensors(path: str | Path) -> None:
    """Raise :class:`ModelFileError` naming ``path`` if it is not a complete safetensors file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            raw = f.read(n) if n is not None and 0 < n <= min(_HEADER_MAX, size - 8) else b""
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e.strerror or e})") from None
    if n is None:
        what = "it is empty" if size == 0 else f"it has only {size} bytes"
        raise ModelFileError(f"{path}: not a safetensors file ({what})")
    if n == 0 or n > _HEADER_MAX:
        raise ModelFileError(
            f"{path}: not a safetensors file (its first 8 bytes give a header of {n:,} bytes); "
            f"the file is corrupt or something else"
        )
    if n > size - 8:
        raise ModelFileError(
            f"{path}: truncated safetensors file: its header alone needs {n + 8:,} bytes, the "
            f"file has {size:,}"
        )
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not an object")
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError):
        raise ModelFileError(
            f"{path}: corrupt safetensors file (its header is not the JSON tensor table)"
        ) from None
    if 8 + n + end > size:
        raise ModelFileError(
            f"{path}: truncated safetensors file: its tensors need {8 + n + end:,} bytes, the "
            f"file has {size:,}; save or copy the model again"
        )


def check_model_dir(directory: str | Path) -> None:
    """:func:`check_safetensors` on every weight file of a model directory."""
    for f in sorted(Path(directory).glob("*.safetensors")):
        check_safetensors(f)


__all__ = ["ModelFileError", "check_gguf", "check_model_dir", "check_safetensors"]
