"""Locate the package's data (grammar and shipped trees) in a checkout or an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    # Installed wheel: hatch force-includes grammar/ and trees/ as pzshell/_data/<name>.
    installed = _PKG / "_data" / name
    if installed.is_dir():
        return installed
    # Source checkout / editable install: the directories sit beside the package.
    checkout = _PKG.parent / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        f"pzshell data directory '{name}' not found (looked in {installed} "
        f"and {checkout}); the installation is incomplete"
    )


def grammar_path(name: str = "metric.lark") -> Path:
    return _data_dir("grammar") / name


def trees_dir() -> Path:
    return _data_dir("trees")
