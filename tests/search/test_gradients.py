"""The G a search scores its candidates with reaches the user: the run directory's grads.pth,
its fingerprint in summary.json, and the `pzshell prune` command the CLI prints for the answer
(G's scale grows with its windows, so a rule with tanh(G) needs the search's own G)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest
import torch

from pzshell.cli import main
from pzshell.cli.search_cmd import prune_command
from pzshell.engine.stats import gradient_fingerprint, load_gradients
from pzshell.search import Search, SearchSettings
from pzshell.search.fitness import Evaluator

from .test_search import FIT as SEARCH_FIT
from .test_search import settings as search_settings

ROOT = Path(__file__).resolve().parents[2]
FIT = dataclasses.replace(SEARCH_FIT, cheap_windows=0)


def settings(**kw) -> SearchSettings:
    base = dict(fitness=FIT, population=4, budget=6, final_top=1)
    return search_settings(**{**base, **kw})


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PZSHELL_CACHE", str(tmp_path / "cache"))


def test_the_run_directory_holds_the_g_every_candidate_was_scored_with(tmp_path):
    out = tmp_path / "run"
    Search(settings(), out, threads=1).run()
    saved = load_gradients(out / "grads.pth")
    ev = Evaluator(dataclasses.replace(FIT, seed=3), threads=1)
    assert saved.keys() == ev.G.keys()
    for k, g in ev.G.items():
        assert saved[k].dtype == torch.float16 and torch.equal(saved[k], g), k
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gradient_file"] == "grads.pth"
    assert summary["gradient_fingerprint"] == gradient_fingerprint(saved)
    assert summary["gradient_windows"] == {
        "calib": "builtin",
        "windows": 2,
        "seqlen": 64,
        "seed": 3,
    }
    # the worker processes score with the same G, and the run directory says so alike
    procs = tmp_path / "procs"
    Search(settings(), procs, backend="processes", workers=2, threads=1).run()
    assert gradient_fingerprint(load_gradients(procs / "grads.pth")) == gradient_fingerprint(saved)


def test_the_printed_prune_command_reads_the_searched_g(tmp_path, capsys):
    """The CLI's own search, then the command it prints, run as printed: the prune reads the
    very G the search scored with (its fingerprint), which a prune that computes its own G from
    the calibration windows does not (4 windows, not the search's 2)."""
    out = tmp_path / "run"
    flags = "--model tiny --nsamples 4 --grad_samples 2 --seqlen 64 --heldout_windows 2"
    flags += " --heldout_seqlen 64 --population 4 --budget 6 --final-top 1 --seed 3"
    assert main(["search", *flags.split(), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    got = capsys.readouterr()
    text = " ".join((got.out + got.err).split())
    s = SearchSettings.from_dict(json.loads((out / "settings.json").read_text())["settings"])
    cmd = prune_command(s, out, "W * tanh(G)")
    assert f"--gradient_path {out / 'grads.pth'}" in cmd
    printed = prune_command(s, out, summary["best"])
    assert f"prune with it: {printed}" in text
    argv = shlex.split(cmd)[1:]  # without "pzshell"
    assert main([*argv, "--eval-windows", "1", "--save", str(tmp_path / "p")]) == 0
    res = json.loads((tmp_path / "p" / "results.json").read_text())
    assert res["gradient_fingerprint"] == summary["gradient_fingerprint"]
    assert (res["metric"], res["seqlen"], res["seed"]) == ("W * tanh(G)", 64, 3)
    own = [a for a in argv if a != "--gradient_path" and not a.endswith("grads.pth")]
    assert main([*own, "--eval-windows", "1", "--save", str(tmp_path / "q")]) == 0
    res_own = json.loads((tmp_path / "q" / "results.json").read_text())
    assert res_own["gradient_fingerprint"] not in (None, summary["gradient_fingerprint"])


def test_prune_command_follows_the_fitness_settings(tmp_path):
    (tmp_path / "grads.pth").write_bytes(b"")
    s = settings(fitness=dataclasses.replace(FIT, sparsity_type="2:4,unstructured"))
    cmd = prune_command(s, tmp_path, "W * sqrt(X)")
    assert "--gradient_path" not in cmd  # the rule reads no G
    assert "--sparsity_type 2:4" in cmd and "--sparsity_ratio" not in cmd
    s = settings(fitness=dataclasses.replace(FIT, reconstruct="iterative", refit=5))
    cmd = prune_command(s, tmp_path, "G * W")
    assert "--method metric+iterative" in cmd and "--refit 5" in cmd
    assert "--sparsity_ratio 0.5" in cmd and "--gradient_path" in cmd
    assert prune_command(s, tmp_path, "-") is None


def test_results_name_the_g_a_prune_read(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short paths: the summary table wraps long ones
    for method, reads in (("wanda", False), ("pruner-zero", True)):
        argv = f"prune --model tiny --method {method} --nsamples 2 --seqlen 32 --eval-windows 1"
        assert main([*argv.split(), "--save", str(tmp_path / method)]) == 0
        res = json.loads((tmp_path / method / "results.json").read_text())
        assert (res["gradient_fingerprint"] is not None) == reads
        got = capsys.readouterr()
        text = " ".join((got.out + got.err).replace("│", " ").split())
        if reads:  # the summary says where G came from, with the fingerprint
            fp = res["gradient_fingerprint"]
            assert f"gradients G computed from the calibration windows (fingerprint {fp})" in text
        else:
            assert "gradients G" not in text
    argv = "prune --model tiny --method pruner-zero --nsamples 2 --seqlen 32 --eval-windows 1"
    argv += " --gradient_path g.pth --save p"
    assert main(argv.split()) == 0  # computed and saved
    fp = json.loads((tmp_path / "p" / "results.json").read_text())["gradient_fingerprint"]
    got = capsys.readouterr()
    text = " ".join((got.out + got.err).replace("│", " ").split())
    assert f"G computed from the calibration windows, saved to g.pth (fingerprint {fp})" in text
    assert main(argv.split()) == 0  # then read back: the same G
    got = capsys.readouterr()
    text = " ".join((got.out + got.err).replace("│", " ").split())
    assert f"gradients G read from g.pth (fingerprint {fp})" in text


def _bench_search():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("bench_search", ROOT / "bench/search.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_the_benchmark_reuses_a_rule_of_g_only_with_the_same_g():
    bench = _bench_search()
    here = {"model_fingerprint": "m", "torch": "t"}
    row = {"model_fingerprint": "m", "versions": {"torch": "t"}, "eval_window_nll": [1.0]}
    wanda = dict(row, method="wanda", metric="W * sqrt(X)", gradient_fingerprint=None)
    assert bench._not_reusable(wanda, here, "g1") == ""  # reads no G
    rule = dict(row, method="metric", formula="W * tanh(G)", gradient_fingerprint="g0")
    assert "its rule reads G" in bench._not_reusable(rule, here, "g1")
    assert bench._not_reusable(dict(rule, gradient_fingerprint="g1"), here, "g1") == ""
    pz = dict(row, method="pruner-zero", metric="abs(W * W) * mms(G)")
    assert "not recorded" in bench._not_reusable(pz, here, "g1")
    assert not bench._reads_g({"method": "metric", "formula": "W * sqrt(X) * rown(W)"})
