"""The allocation search with the metric fixed (``pzshell search --allocation search``), on
``tiny``; one short run on SmolLM2."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest

from pzshell.cli import main
from pzshell.engine.alloc_formula import AllocationFormulaError, parse_allocation
from pzshell.lang import load_metric
from pzshell.search import Evaluator
from pzshell.search.alloc_search import (
    LOG_NAME,
    AllocationSearch,
    AllocationSearchSettings,
    mutate,
    random_tree,
    render,
    size,
)
from pzshell.search.settings import SearchError

from .test_search import FIT


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PZSHELL_CACHE", str(tmp_path / "cache"))


def test_formula_trees_render_to_the_allocation_language_and_mutate_within_it():
    rng = random.Random(0)
    texts = set()
    for _ in range(300):
        t = random_tree(rng, 3)
        for _ in range(3):
            t = mutate(t, rng)
        text = render(t)
        texts.add(text)
        try:  # parses; a refusal is only ever the language's own (no statistic used)
            f = parse_allocation(text)
            assert f.terms <= {"D", "A", "L"}
        except AllocationFormulaError as e:
            assert "uses no block statistic" in str(e)
        assert size(t) >= 1
    assert len(texts) > 150  # the generator explores, it does not repeat one formula
    assert render(("*", ("+", ("D",), ("c", 1.0)), ("sqrt", ("A",)))) == "(D + 1) * sqrt(A)"


def test_settings_refuse_what_an_allocation_search_cannot_do():
    with pytest.raises(SearchError, match="2:4 fixes every block"):
        AllocationSearchSettings(fitness=dataclasses.replace(FIT, sparsity_type="2:4"))
    with pytest.raises(SearchError, match="must be uniform"):
        AllocationSearchSettings(fitness=dataclasses.replace(FIT, allocation="owl"))
    with pytest.raises(SearchError, match="--metric 'W \\*\\* '"):
        AllocationSearchSettings(metric="W ** ", fitness=FIT)
    with pytest.raises(SearchError, match="lambda"):
        AllocationSearchSettings(fitness=FIT, lambdas=(0.6,))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import os

    old = os.environ.get("PZSHELL_CACHE")
    os.environ["PZSHELL_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        out = tmp_path_factory.mktemp("alloc") / "run"
        # tiny has two blocks: spread maps any formula onto 2 ratio sets per lambda
        s = AllocationSearchSettings(fitness=FIT, budget=8, final_top=1, seed=1)
        events = []
        search = AllocationSearch(s, out, on_event=events.append)
        summary = search.run()
        yield search, summary, events, out
    finally:
        if old is None:
            os.environ.pop("PZSHELL_CACHE", None)
        else:
            os.environ["PZSHELL_CACHE"] = old


def test_search_screens_logs_and_prunes_the_best_for_real(run):
    search, summary, events, out = run
    recs = [json.loads(x) for x in (out / LOG_NAME).read_text().splitlines()]
    assert len(recs) == summary["screened"] + summary["ratio_hits"] + summary["refused"]
    assert summary["screened"] == 8 and not summary["stopped"] and not summary["exhausted"]
    assert [r["i"] for r in recs] == list(range(1, len(recs) + 1))
    # the baselines come first: uniform, then OWL as published
    assert (recs[0]["formula"], recs[1]["formula"], recs[1]["lambda"]) == ("uniform", "D", 0.08)
    scored = [r for r in recs if r["reason"] is None and not r.get("hit")]
    # the model-wide sparsity is exactly the target under every allocation
    sizes = search.sizes
    for r in scored:
        ratios = r["ratios"]["0.5 unstructured"]
        total = sum(x * n for x, n in zip(ratios, sizes, strict=True)) / sum(sizes)
        assert total == pytest.approx(0.5, abs=1e-3)
        assert all(0 <= x <= 0.99 for x in ratios)
    # the best screened is the minimum of the scored ones, and events reported it
    best = min(scored[1:], key=lambda r: r["fitness"])
    assert summary["best_screened"]["fitness"] == best["fitness"]
    assert events[-1].best_fitness <= best["fitness"]
    # finals: uniform, OWL and the best searched, by the real layer-sequential prune
    finals = {(f["formula"], f["lambda"]): f for f in summary["finals"]}
    assert ("uniform", 0.0) in finals and ("D", 0.08) in finals and len(finals) >= 3
    assert all(math.isfinite(f["final"]) and f["reason"] is None for f in finals.values())
    # with sequential statistics Wanda's one-shot uniform masks are its real prune's: the
    # uniform baseline's screening fitness equals its final
    assert finals[("uniform", 0.0)]["final"] == summary["baseline_uniform"]
    assert summary["best"]["final"] == min(f["final"] for f in finals.values())
    assert json.loads((out / "best.json").read_text()) == summary["best"]


def test_the_uniform_baseline_is_the_metric_search_fitness(run):
    search, summary, _, _ = run
    full = search.ev.run(load_metric("W * sqrt(X)"), None)
    assert full["settings"]["0.5 unstructured"]["full"] == summary["baseline_uniform"]


def test_equal_ratios_are_one_candidate_and_bad_formulas_are_scored_and_logged(run):
    search = run[0]
    seen: dict = {}
    first = search._screen("D", 0.08, seen)
    seen[first["_key"]] = first
    for same in ("2 * D + 1", "zsn(D)", "D * 3 - 7"):  # spread is affine-invariant
        rec = search._screen(same, 0.08, seen)
        assert rec["hit"] == "D @ 0.08" and rec["fitness"] == first["fitness"]
    other = search._screen("D", 0.16, seen)
    assert other.get("hit") is None and other["_key"] != first["_key"]
    const = search._screen("L - L + 1", 0.08, seen)
    assert math.isinf(const["fitness"]) and "same value" in const["reason"]
    nan = search._screen("1 / L", 0.08, seen)  # L = 0 for the first block
    assert math.isinf(nan["fitness"]) and "not finite for block 0" in nan["reason"]


def test_a_search_ends_when_no_new_allocation_is_reachable(run, tmp_path):
    search = run[0]
    s = AllocationSearchSettings(fitness=FIT, budget=1000, final_top=0, lambdas=(0.04, 0.08))
    summary = AllocationSearch(s, tmp_path / "r", evaluator=search.ev).run()
    # two blocks, two spreads: uniform and two directions per spread, nothing more
    assert summary["exhausted"] and summary["screened"] == 5
    assert summary["ratio_hits"] > 0


def test_a_used_directory_is_refused_before_any_work(run, tmp_path):
    _, _, _, out = run
    with pytest.raises(SearchError, match="already holds an allocation search"):
        AllocationSearch(AllocationSearchSettings(fitness=FIT), out)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SearchError, match="cannot use"):
        AllocationSearch(AllocationSearchSettings(fitness=FIT), f)


def test_cli_allocation_search(tmp_path, capsys):
    out = tmp_path / "a"
    flags = ["--nsamples", "4", "--grad_samples", "2", "--seqlen", "64"]
    flags += ["--heldout_windows", "2", "--heldout_seqlen", "64", "--cheap_windows", "0"]
    code = main(
        [
            "search",
            "--model",
            "tiny",
            "--allocation",
            "search",
            "--budget",
            "5",
            "--out",
            str(out),
            *flags,
        ]
    )
    text = " ".join(capsys.readouterr().err.split())
    assert code == 0, text
    assert "5/5 screened" in text and "final (real prune) uniform" in text
    assert (
        "Prune with: pzshell prune --model tiny --sparsity_ratio 0.5 --metric 'W * sqrt(X)' "
        "--allocation" in text
    )
    assert "stopped at" not in text  # the budget ran out, as asked
    summary = json.loads((out / "summary.json").read_text())
    assert summary["screened"] == 5 and summary["metric"] == "W * sqrt(X)"
    # tiny has two blocks and few distinct allocations: a larger budget ends early, and says why
    code = main(
        ["search", "--model", "tiny", "--allocation", "search", "--budget", "200"]
        + ["--out", str(tmp_path / "b"), *flags]
    )
    text = " ".join(capsys.readouterr().err.split())
    assert code == 0, text
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["exhausted"] and summary["screened"] < 200
    assert f"stopped at {summary['screened']}/200 screened: 500 mutations in a row" in text


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--allocation", "search", "--sparsity_type", "2:4"], "2:4 fixes every block"),
        (["--allocation", "search", "--metric", "W +"], "--metric 'W +'"),
        (["--allocation", "search", "--workers", "2"], "drop --workers"),
        (["--metric", "W"], "give it with --allocation search"),
        (["--allocation", "search", "--owl_lambda", "0.1"], "drop --owl_lambda"),
        (["--owl_lambda", "0.1"], "with --allocation uniform it would change nothing"),
    ],
)
def test_cli_allocation_search_refusals(tmp_path, capsys, flags, match):
    code = main(["search", "--model", "tiny", "--out", str(tmp_path / "x"), *flags])
    assert code == 2
    captured = capsys.readouterr()
    assert match in " ".join((captured.err + captured.out).split())
    assert not (tmp_path / "x").exists()


@pytest.mark.smollm2
def test_allocation_search_on_smollm2(tmp_path):
    fit = dataclasses.replace(
        FIT,
        model="smollm2",
        nsamples=2,
        grad_samples=1,
        seqlen=64,
        heldout_windows=1,
        heldout_seqlen=128,
        cheap_windows=0,
    )
    s = AllocationSearchSettings(fitness=fit, budget=4, final_top=1)
    ev = Evaluator(fit, threads=2)
    summary = AllocationSearch(s, tmp_path / "run", evaluator=ev).run()
    assert summary["screened"] == 4
    assert len(summary["block_terms"]["D"]) == 30  # SmolLM2-135M's decoder blocks
    finals = {f["formula"]: f["final"] for f in summary["finals"]}
    assert set(finals) >= {"uniform", "D"}
    assert all(5 < v < 1000 for v in finals.values())
    assert finals["uniform"] == summary["baseline_uniform"]
