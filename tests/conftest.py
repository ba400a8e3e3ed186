"""Shared fixtures. Fast tests use the in-memory `tiny` model; tests marked `smollm2` use the
real default model (SmolLM2-135M) and run in CI too."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from pzshell.paths import wikitext_test, wikitext_valid

ROOT = Path(__file__).resolve().parent.parent
WIKI_TEST = wikitext_test()
WIKI_VALID = wikitext_valid()


def shared_texts() -> tuple[str, str]:
    """(calibration, evaluation) text: WikiText-2 from the offline data directory
    (:mod:`pzshell.paths`) when it is there, else builtin."""
    if WIKI_TEST.exists() and WIKI_VALID.exists():
        return str(WIKI_VALID), str(WIKI_TEST)
    return "builtin", "builtin"


def zero_pattern(model) -> list:
    """Which weights of every decoder-block linear are zero (bool tensors, in module order)."""
    import torch

    return [
        m.weight.detach() == 0
        for m in model.model.layers.modules()
        if isinstance(m, torch.nn.Linear)
    ]


@pytest.fixture(scope="session")
def tiny_lm():
    from pzshell.models import load_model

    return load_model("tiny", device="cpu")


@pytest.fixture
def tiny(tiny_lm):
    """A fresh copy of the tiny model (tests may prune it in place)."""
    lm = copy.copy(tiny_lm)
    lm.model = copy.deepcopy(tiny_lm.model)
    return lm


@pytest.fixture(scope="session")
def smollm2_lm():
    from pzshell.models import load_model

    return load_model("smollm2", device="cpu")


@pytest.fixture
def smollm2(smollm2_lm):
    lm = copy.copy(smollm2_lm)
    lm.model = copy.deepcopy(smollm2_lm.model)
    return lm


@pytest.fixture
def readonly_dir(tmp_path):
    """A directory in which nothing can be created, for root too: a read-only tmpfs when this
    process may mount one (root), else a directory without write permission."""
    import os
    import subprocess

    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)], check=False)
    if r.returncode != 0:
        pytest.skip("root, and no read-only mount can be made here")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)
