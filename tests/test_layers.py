"""The layers in pyproject.toml's import-linter contracts hold, and a wrong import breaks them.

The second test copies the package, adds one import that runs the wrong way (the engine reaching
up into the terminal app) and runs the real ``lint-imports`` on the copy: it must fail, naming
the import, so the contracts are known to bite and not only to pass."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def linter() -> Path:
    if not LINT.exists():
        pytest.fail(f"{LINT} is missing: install the dev extra (pip install -e '.[dev]')")
    return LINT


def test_the_layers_hold(linter):
    r = lint(ROOT, ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pzshell layers KEPT" in r.stdout
    assert "domain code never imports a user interface KEPT" in r.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        ("engine/masks.py", "from ..tui import app as _wrong", "pzshell layers BROKEN"),
        ("lang/tree.py", "from ..engine import stats as _wrong", "pzshell layers BROKEN"),
        ("jobs/specs.py", "import rich as _wrong", "never imports a user interface BROKEN"),
    ],
)
def test_a_wrong_import_fails(linter, tmp_path, module, line, broken):
    shutil.copytree(
        ROOT / "pzshell", tmp_path / "pzshell", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "pzshell" / module
    target.write_text(target.read_text() + f"\n{line}\n")
    r = lint(tmp_path, tmp_path)
    assert r.returncode != 0, r.stdout + r.stderr
    assert broken in r.stdout, r.stdout
