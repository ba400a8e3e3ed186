"""The one atomic writer: a failed write (file-size limit, full disk, exception) leaves the
previous file or directory, never a half-written one; checks of output paths really probe."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap

import pytest

from pzshell import atomic


def _leftovers(d) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def test_write_json_replaces_whole(tmp_path):
    p = tmp_path / "r.json"
    atomic.write_json(p, {"a": 1})
    atomic.write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert _leftovers(tmp_path) == []
    assert oct(p.stat().st_mode & 0o777) != oct(0o600)  # the usual permissions, not mkstemp's


def test_a_failing_writer_keeps_the_old_file_and_dir(tmp_path):
    p = tmp_path / "g.pth"
    p.write_bytes(b"old")
    with (
        pytest.raises(atomic.WriteFailed, match="RuntimeError: disk full"),
        atomic.writing_file(p) as tmp,
    ):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert p.read_bytes() == b"old" and _leftovers(tmp_path) == []

    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    with pytest.raises(atomic.WriteFailed, match="unchanged"), atomic.writing_dir(d) as tmp:
        (tmp / "config.json").write_text('{"new": 1}')
        raise RuntimeError("disk full")
    assert sorted(x.name for x in d.iterdir()) == ["config.json"]
    assert (d / "config.json").read_text() == "{}"
    assert _leftovers(tmp_path) == []


def test_writing_dir_replaces_the_directory_whole(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "stale.bin").write_text("x")
    with atomic.writing_dir(d) as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(x.name for x in d.iterdir()) == ["config.json"]
    assert _leftovers(tmp_path) == []


def test_file_size_limit_leaves_the_previous_file(tmp_path):
    """A real RLIMIT_FSIZE fault in a child process (Python ignores SIGXFSZ: writes fail with
    EFBIG, as on a full disk)."""
    p = tmp_path / "results.json"
    atomic.write_json(p, {"ppl": 1.0})
    before = p.read_bytes()
    code = textwrap.dedent(
        f"""
        from pzshell import atomic
        atomic.write_json({str(p)!r}, {{"ppl": 2.0, "pad": "x" * 100000}})
        """
    )

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run(
        [sys.executable, "-c", code], preexec_fn=limit, capture_output=True, text=True, env=env
    )
    assert r.returncode == 1 and "File too large" in r.stderr
    assert p.read_bytes() == before
    assert _leftovers(tmp_path) == []  # the temporary file was removed


def test_why_not_writable(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    assert atomic.why_not_writable(tmp_path / "new" / "deeper", is_dir=True) is None
    assert atomic.why_not_writable(tmp_path / "out.pth", is_dir=False) is None
    assert "is a file, not a directory" in atomic.why_not_writable(f, is_dir=True)
    assert "is a file, not a directory" in atomic.why_not_writable(f / "sub", is_dir=True)
    assert "is a directory" in atomic.why_not_writable(tmp_path, is_dir=False)
    assert _leftovers(tmp_path) == []  # the probe is removed


def test_a_read_only_directory_is_found_by_probing(readonly_dir):
    why = atomic.why_not_writable(readonly_dir / "run", is_dir=True)
    assert why is not None and "cannot write in" in why
