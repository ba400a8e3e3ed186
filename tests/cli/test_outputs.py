"""Outputs of the model-touching commands: every path and setting is checked before the model
loads, and a failed write (here a real file-size limit) never leaves a half-written results
file, model directory or gradient file."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from pzshell.cli import main

FAST = ["--model", "tiny", "--nsamples", "2", "--seqlen", "32", "--eval-windows", "1"]
# a model that cannot be loaded: an error about it means the checks came after the load
NO_MODEL = ["--model", "/nonexistent/model-dir"]


@pytest.fixture
def afile(tmp_path):
    f = tmp_path / "afile"
    f.write_text("not a directory")
    return f


@pytest.mark.parametrize(
    "argv,says",
    [
        (["prune", "--save", "{f}"], "--save {f}: {f} is a file, not a directory"),
        (["prune", "--save", "{f}/run"], "is a file, not a directory"),
        (["prune", "--save_model", "{f}"], "is a file, not a directory"),
        (["prune", "--save_model", "{d}"], "holds other files, not a saved model"),
        (["grad", "-o", "{f}/g.pth"], "is a file, not a directory"),
        (["grad", "-o", "{t}"], "is a directory; give a file name"),
        (["prune", "--gradient_path", "{t}", "--prune_method", "pruner-zero"], "is a directory"),
        (["eval", "--save", "{f}"], "is a file, not a directory"),
        (["finetune", "--save_model", "{d}"], "holds other files"),
        (["structured", "--save", "{f}"], "is a file, not a directory"),
        (["structured", "--save_model", "{d}"], "holds other files"),
        (["prune", "--eval-windows", "0"], "--eval_windows must be an integer >= 1, got 0"),
        (["prune", "--eval-windows", "-2"], "got -2"),
        (["prune", "--prune_method", "wanda", "--batch_size", "0"], "--batch_size must be"),
        (["prune", "--nsamples", "0"], "--nsamples must be an integer >= 1"),
        (["prune", "--seqlen", "1"], "--seqlen must be an integer >= 2"),
        (["eval", "--eval-windows", "0"], "got 0"),
    ],
)
def test_bad_outputs_and_settings_fail_before_the_model_loads(tmp_path, afile, capsys, argv, says):
    other = tmp_path / "mydata"
    other.mkdir()
    (other / "notes.txt").write_text("precious")

    def fill(s: str) -> str:
        return s.format(f=afile, d=other, t=tmp_path)

    argv = [fill(a) for a in argv]
    if argv[0] == "finetune":
        argv += ["--model", str(tmp_path / "no-such-model")]
    else:
        argv += NO_MODEL
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert fill(says) in err, err
    assert "nonexistent" not in err and "no-such-model" not in err  # the model never loaded
    assert (other / "notes.txt").read_text() == "precious"


def test_a_read_only_output_directory_fails_first(readonly_dir, capsys):
    assert main(["prune", "--save", str(readonly_dir / "run"), *NO_MODEL]) == 2
    assert "cannot write in" in capsys.readouterr().err


def test_an_evaluation_text_too_short_fails_before_the_prune(tmp_path, capsys, monkeypatch):
    import pzshell.jobs.prune_job as prune_job

    def no_prune(*a, **k):
        raise AssertionError("the prune ran before the evaluation text was checked")

    monkeypatch.setattr(prune_job, "prune_model", no_prune)
    text = tmp_path / "short.txt"
    text.write_text("x" * 200)  # the byte tokenizer: 200 tokens, 6 windows of 32
    argv = ["prune", *FAST[:-2], "--prune_method", "wanda", "--eval", str(text)]
    assert main([*argv, "--eval-windows", "8"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "6 window(s) of 32, but 8 were asked for" in err, err
    assert main([*argv, "--eval-seqlen", "256"]) == 2
    assert "fewer than one window of 256" in capsys.readouterr().err


def test_save_model_replaces_a_saved_model_whole(tmp_path):
    from pzshell.models import load_model

    m = tmp_path / "m"
    argv = ["prune", *FAST, "--prune_method", "magnitude", "--save_model", str(m)]
    assert main(argv) == 0
    (m / "stale-extra.bin").write_text("from an older save")
    assert main([*argv[:-2], "--sparsity_ratio", "0.6", "--save_model", str(m)]) == 0
    names = sorted(p.name for p in m.iterdir())
    assert "stale-extra.bin" not in names and "config.json" in names
    assert json.loads((m / "pzshell_prune.json").read_text())["sparsity_ratio"] == 0.6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    load_model(str(m), device="cpu")  # reloads


def _limited(argv: list[str], cwd, limit: int) -> subprocess.CompletedProcess:
    def pre():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PZSHELL_CACHE=str(cwd / "cache"))
    return subprocess.run(
        [sys.executable, "-m", "pzshell", *argv],
        cwd=cwd,
        preexec_fn=pre,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_failed_writes_under_a_file_size_limit_keep_the_previous_outputs(tmp_path):
    """The faults of the review: results.json truncated or emptied, a model directory with only
    its config, a truncated gradient file. Now the previous file stays or none appears, and the
    command ends with a one-line error naming the file (exit 2, no traceback)."""
    run = tmp_path / "run"
    grads = tmp_path / "g.pth"
    prune = ["prune", *FAST, "--prune_method", "magnitude", "--save", str(run)]
    assert main(prune) == 0
    grad = ["grad", "--model", "tiny", "--nsamples", "2", "--seqlen", "32"]
    assert main([*grad, "-o", str(grads)]) == 0
    good_results, good_grads = (run / "results.json").read_bytes(), grads.read_bytes()

    limit = 1500  # below results.json (~3 kB), the tiny model (~430 kB) and G (~200 kB)
    r = _limited([*prune, "--sparsity_ratio", "0.7"], tmp_path, limit)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"could not write {run / 'results.json'} (File too large)" in " ".join(r.stderr.split())
    assert (run / "results.json").read_bytes() == good_results

    model = tmp_path / "model"
    r = _limited([*prune[:-2], "--save_model", str(model)], tmp_path, limit)
    assert r.returncode == 2 and "File too large" in r.stderr, r.stderr
    assert not model.exists()

    r = _limited([*grad, "--seed", "1", "-o", str(grads)], tmp_path, limit)
    # torch.save says only "unexpected pos": the message names the file and what stayed
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"could not write {grads}" in " ".join(r.stderr.split()), r.stderr
    assert grads.read_bytes() == good_grads
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
