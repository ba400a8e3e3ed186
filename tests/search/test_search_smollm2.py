"""The GP search on the real default model, SmolLM2-135M (kept short: runs in CI)."""

from __future__ import annotations

import json
import math

import pytest

from pzshell.engine.stats import gradient_fingerprint, load_gradients
from pzshell.lang import load_metric
from pzshell.lang.algebra import canonical
from pzshell.search import FitnessSettings, Search, SearchSettings
from pzshell.search.cache import FitnessCache
from pzshell.search.runlog import RunLog

pytestmark = pytest.mark.smollm2


def test_short_search_on_smollm2(tmp_path):
    fit = FitnessSettings(
        model="smollm2",
        nsamples=2,
        grad_samples=1,
        seqlen=64,
        heldout_windows=1,
        heldout_seqlen=128,
        cheap_windows=0,
    )
    s = SearchSettings(
        fitness=fit,
        population=4,
        budget=6,
        batch=2,
        seed=0,
        final_top=1,
        seed_formulas=("W*sqrt(X)",),
    )
    out = tmp_path / "run"
    fin = Search(s, out, threads=2, cache=FitnessCache(tmp_path / "fit.sqlite")).run()
    assert fin.evaluations == 6 and not fin.stopped
    recs, warnings = RunLog(out).read()
    assert not warnings
    screened = [r for r in recs if r["stage"] != "final"]
    keys = [r["canonical"] for r in screened]
    assert len(keys) == len(set(keys)) == 6  # six distinct pruning rules, each screened once
    # every one went through the proxy stage on the real model (a finite mean log error < 0)
    assert all(r["stage"] == "degenerate" or r["proxy"] < 0 for r in screened)
    evaluated = [r for r in screened if r["stage"] == "full"]
    keys = [r["canonical"] for r in evaluated]
    # the seeded Wanda rule (and the shipped known metrics) were evaluated on the real model:
    # 50% unstructured SmolLM2 keeps a finite held-out perplexity far below a broken model's
    wanda = canonical(load_metric("W*sqrt(X)")).key
    w = next(r for r in evaluated if r["canonical"] == wanda)
    assert math.isfinite(w["fitness"]) and 5 < w["fitness"] < 1000
    # the best candidate was re-run with the full layer-sequential prune
    finals = [r for r in recs if r["stage"] == "final"]
    assert len(finals) == 1 and math.isfinite(finals[0]["fitness"])
    best = load_metric(out / "best.json")
    assert canonical(best).key in keys
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluations"] == 6 and summary["best"]
    # the G every candidate was scored with, for the user's prune: SmolLM2's 210 linears
    grads = load_gradients(out / "grads.pth")
    assert len(grads) == 210 and gradient_fingerprint(grads) == summary["gradient_fingerprint"]
    assert summary["gradient_windows"]["windows"] == 1


def test_iterative_fitness_on_smollm2(tmp_path, monkeypatch):
    """--reconstruct iterative on the real model: the proxy (gradient-weighted error after
    SparseGPT's loop, on sampled rows) and the full stage (every linear through the loop) rank
    magnitude, far worse than Wanda inside SparseGPT's loop, below Wanda."""
    from pzshell.search import Evaluator

    monkeypatch.setenv("PZSHELL_CACHE", str(tmp_path / "cache"))
    fit = FitnessSettings(
        model="smollm2",
        nsamples=4,
        grad_samples=2,
        seqlen=128,
        heldout_windows=1,
        heldout_seqlen=256,
        proxy_rows=16,
        reconstruct="iterative",
    )
    ev = Evaluator(fit, threads=2)
    wanda, magnitude = load_metric("W*sqrt(X)"), load_metric("W")
    sw, sm = ev.screen(wanda), ev.screen(magnitude)
    assert sw["reason"] is None and sm["reason"] is None
    assert sw["proxy"] < sm["proxy"] < 0
    fw, fm = ev.run(wanda, None), ev.run(magnitude, None)
    assert 5 < fw["full"] < fm["full"] < 10_000
