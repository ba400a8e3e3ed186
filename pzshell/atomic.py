"""Every file pzshell writes goes through here: a temporary name in the same directory, fsync,
then an atomic rename, so a full disk, a file-size limit or a kill leaves the previous file (or
nothing), never a truncated one. A file's directory must exist (a typo in a path is an error, not
a new directory); :func:`writing_dir` creates the parents of the directory it writes. Bottom
layer: no pzshell imports."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp make private (0600/0700) entries; what we write gets the usual permissions
_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()


class WriteFailed(OSError):
    """A write that did not happen (full disk, file-size limit, ...): ``filename`` is the path
    that was to be written, which is as it was before."""

    def __str__(self) -> str:
        return (
            f"could not write {self.filename} ({self.strerror}); what was there before is unchanged"
        )


def _failed(e: BaseException, path: Path) -> BaseException:
    """What to raise when writing ``path`` failed with ``e``: the failure of an OS call or of a
    library's writer (``torch.save``, ``save_pretrained``, safetensors) as a :class:`WriteFailed`
    naming ``path``; pzshell's own errors and interrupts unchanged."""
    if isinstance(e, WriteFailed) or not isinstance(e, Exception):
        return e
    if isinstance(e, OSError):
        return WriteFailed(e.errno, e.strerror or str(e), str(path))
    if type(e).__module__.split(".")[0] == "pzshell":
        return e
    return WriteFailed(None, f"{type(e).__name__}: {e}", str(path))


def why_not_writable(path: str | Path, *, is_dir: bool) -> str | None:
    """Why a file (``is_dir=False``) or directory cannot be written at ``path``, or None.

    Checked before long work starts. The nearest existing ancestor must be a directory in which
    a file can really be created: a probe file is made and removed (permission bits say nothing
    to root, and nothing about a read-only mount or a full disk).
    """
    path = Path(path)
    if path.exists():
        if is_dir and not path.is_dir():
            return f"{path} is a file, not a directory"
        if not is_dir and path.is_dir():
            return f"{path} is a directory; give a file name"
    base = path if is_dir else path.parent
    p = base
    while not p.exists() and p.parent != p:
        p = p.parent
    if not p.is_dir():
        return f"{p} is a file, not a directory"
    try:
        fd, probe = tempfile.mkstemp(prefix=".pzshell-probe.", dir=p)
    except OSError as e:
        return f"cannot write in {p} ({e.strerror or e})"
    os.close(fd)
    os.unlink(probe)
    return None


def write_bytes(path: str | Path, data: bytes) -> None:
    with writing_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


@contextlib.contextmanager
def writing_file(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` for a writer that wants a file name (``torch.save``,
    ``savefig``); renamed onto ``path`` only if the block finishes."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent
    )
    os.fchmod(fd, _FILE_MODE)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        err = _failed(e, path)
        if err is e:
            raise
        raise err from e


@contextlib.contextmanager
def writing_dir(path: str | Path) -> Iterator[Path]:
    """Yields a temporary directory beside ``path``; on success it replaces ``path`` whole (an
    existing directory of that name is removed only after the new one is complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, _DIR_MODE)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            os.chmod(f, _FILE_MODE if f.is_file() else _DIR_MODE)
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        err = _failed(e, path)
        if err is e:
            raise
        raise err from e
