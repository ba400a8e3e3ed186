"""Loading a damaged model is an error naming the file and what is wrong, never a traceback or a
silently half-random model: truncated / random GGUF and safetensors files, a config.json whose
sizes disagree with the weights."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from pzshell.cli import main
from pzshell.errors import PzError
from pzshell.models import load_model
from pzshell.models.load import build_tiny, smollm2_gguf_path


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny") / "good"
    lm = build_tiny()
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def copy_of(saved_tiny, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(saved_tiny, d)
    return d


def _error(spec) -> str:
    with pytest.raises(PzError) as e:
        load_model(str(spec), device="cpu")
    return str(e.value)


def test_the_saved_tiny_model_loads(saved_tiny):
    assert load_model(str(saved_tiny), device="cpu").model.config.num_hidden_layers == 2


def test_truncated_safetensors(copy_of):
    f = copy_of / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    msg = _error(copy_of)
    assert str(f) in msg and "truncated" in msg


@pytest.mark.parametrize("data", [b"", os.urandom(5000), b"\x10\x00\x00\x00\x00\x00\x00\x00{x"])
def test_random_or_empty_safetensors(copy_of, data):
    f = copy_of / "model.safetensors"
    f.write_bytes(data)
    msg = _error(copy_of)
    assert str(f) in msg and any(w in msg for w in ("not a safetensors file", "truncated"))


def test_structured_dir_with_truncated_weights(tiny, tmp_path):
    from pzshell.models.structure import keep_mlp_channels, save_structured

    keep_mlp_channels(tiny.model.model.layers[0], list(range(10)), 64)
    d = tmp_path / "pruned"
    save_structured(tiny.model, tiny.tokenizer, d)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    msg = _error(d)
    assert str(f) in msg and "truncated" in msg


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("hidden_size", 96, "another shape"),
        ("intermediate_size", 100, "another shape"),
        ("num_hidden_layers", 3, "missing from the weights"),  # was: a random third block, rc 0
        ("num_hidden_layers", 1, "not in the model"),  # was: block 1 silently dropped
    ],
)
def test_config_that_disagrees_with_the_weights(copy_of, field, value, words):
    cfg = json.loads((copy_of / "config.json").read_text())
    cfg[field] = value
    (copy_of / "config.json").write_text(json.dumps(cfg))
    msg = _error(copy_of)
    assert str(copy_of) in msg and "config.json does not match the weights" in msg
    assert words in msg


def test_unreadable_config_json(copy_of):
    (copy_of / "config.json").write_text("{not json")
    msg = _error(copy_of)
    assert str(copy_of) in msg and "config.json" in msg


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "not a GGUF file"),
        (os.urandom(1000), "not a GGUF file"),
        (b"GGUF" + os.urandom(200), "GGUF"),  # magic, then garbage (was: struct.error)
        (b"GGUF\x03\x00\x00\x00" + b"\x01" * 12, "GGUF"),
    ],
)
def test_garbage_gguf(tmp_path, data, words):
    f = tmp_path / "bad.gguf"
    f.write_bytes(data)
    msg = _error(f)
    assert str(f) in msg and words in msg


@pytest.mark.parametrize("size", [10, 100_000, 3_000_000])
def test_truncated_real_gguf(tmp_path, size):
    """A copy of the shipped SmolLM2 GGUF cut short: inside the header, or in the tensor data
    (was: 'cannot reshape array of size ... into shape ...')."""
    src = smollm2_gguf_path()
    f = tmp_path / "cut.gguf"
    with open(src, "rb") as r:
        f.write_bytes(r.read(size))
    msg = _error(f)
    assert str(f) in msg and "truncated GGUF file" in msg


def test_cli_names_the_damaged_file(copy_of, capsys):
    f = copy_of / "model.safetensors"
    f.write_bytes(os.urandom(3000))
    assert main(["eval", "--model", str(copy_of), "--eval", "none", "--tasks", "pzshell_mc"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "Traceback" not in err
