"""The shipped metric trees in ``trees/`` (baselines and discovered metrics)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..paths import trees_dir
from .tree import Node, load_tree_file


@lru_cache(maxsize=1)
def _index() -> dict[str, Path]:
    return {p.stem: p for p in sorted(trees_dir().glob("*.json"))}


def shipped_tree_names() -> list[str]:
    return list(_index())


def shipped_tree(name: str) -> Node:
    return load_tree_file(_index()[name])


def shipped_tree_path(name: str) -> Path:
    return _index()[name]
