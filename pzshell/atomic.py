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


def write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def writing_into(directory: str | Path) -> Iterator[Path]:
    """Yields a temporary directory for a writer that fills a directory (``save_pretrained``); on
    success each file it wrote is renamed into ``directory`` (created if needed), one atomic
    rename per file, leaving other files there alone. On failure nothing in ``directory``
    changes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming.", suffix=".tmp", dir=directory))
    try:
        yield tmp
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        for f in sorted(tmp.rglob("*")):
            dest = directory / f.relative_to(tmp)
            if f.is_dir():
                dest.mkdir(exist_ok=True)
            else:
                os.replace(f, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def writing_dir(path: str | Path) -> Iterator[Path]:
    """Yields a temporary directory beside ``path``; on success it replaces ``path`` whole (an
    existing directory of that name is removed only after the new one is complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
