"""Where pzshell finds and keeps things: the bottom layer, with no pzshell imports.

* the package's own data (the grammar and the shipped trees), in a checkout or an installed wheel;
* the cache (converted models, search statistics, the fitness database): ``$PZSHELL_CACHE``,
  default ``~/.cache/pzshell``;
* the offline benchmark data: ``$PZSHELL_DATA``, default ``../shared/data`` beside a checkout
  (WikiText-2 raw test and the tokenized validation split; never copied into the repository).
"""

from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent
CHECKOUT = _PKG.parent


def _package_data(name: str) -> Path:
    # Installed wheel: hatch force-includes grammar/ and trees/ as pzshell/_data/<name>.
    installed = _PKG / "_data" / name
    if installed.is_dir():
        return installed
    # Source checkout / editable install: the directories sit beside the package.
    checkout = CHECKOUT / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        f"pzshell data directory '{name}' not found (looked in {installed} "
        f"and {checkout}); the installation is incomplete"
    )


def grammar_path(name: str = "metric.lark") -> Path:
    return _package_data("grammar") / name


def trees_dir() -> Path:
    return _package_data("trees")


def cache_dir() -> Path:
    return Path(os.environ.get("PZSHELL_CACHE", Path.home() / ".cache" / "pzshell"))


def shared_data_dir() -> Path:
    """The offline evaluation/calibration texts (may not exist outside a checkout)."""
    return Path(os.environ.get("PZSHELL_DATA", CHECKOUT.parent / "shared" / "data"))


def wikitext_test() -> Path:
    """WikiText-2 raw test split: the evaluation text of every benchmark."""
    return shared_data_dir() / "wikitext-2-raw" / "wiki.test.raw"


def wikitext_valid() -> Path:
    """WikiText-2 validation split (tokenized form): the calibration text of every benchmark."""
    return shared_data_dir() / "wikitext-2" / "valid.txt"
