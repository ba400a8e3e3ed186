"""The fidelity ladder (proxy, cheap, full), mask-hash equivalence, multi-setting fitness,
constants, parsimony and Pareto survival, restarts and ``--strategy random``, on ``tiny``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random

import pytest
import torch

from pzshell.cli import main
from pzshell.lang import MetricError, evaluate, load_metric
from pzshell.lang.algebra import canonical
from pzshell.lang.tree import from_json_obj
from pzshell.search import Evaluator, Search, SearchError
from pzshell.search.events import CandidateDone
from pzshell.search.fitness import mean_log
from pzshell.search.gp import constant_mutation, mutate
from pzshell.search.ranking import finalists, pareto_records, percentiles, selection_key, sort_key
from pzshell.search.runlog import RunLog

from .test_search import FIT, settings, trajectory


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PZSHELL_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def ev(tmp_path_factory):
    import os

    old = os.environ.get("PZSHELL_CACHE")
    os.environ["PZSHELL_CACHE"] = str(tmp_path_factory.mktemp("evcache"))
    try:
        yield Evaluator(FIT, threads=1)
    finally:
        if old is None:
            os.environ.pop("PZSHELL_CACHE", None)
        else:
            os.environ["PZSHELL_CACHE"] = old


def _interrupt_and_resume(s, out, after: int) -> None:
    """Run ``s`` into ``out``, killed (KeyboardInterrupt) at the ``after``-th candidate, then
    resume it to the end."""
    n = [0]

    def stop_at(ev):
        if isinstance(ev, CandidateDone):
            n[0] += 1
            if n[0] == after:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Search(s, out, threads=1, on_event=stop_at).run()
    Search(s, out, threads=1, resume=True).run()


# ---- the proxy stage ---------------------------------------------------------------------------
def test_proxy_is_the_sampled_rows_relative_output_error(ev):
    tree = load_metric("W*sqrt(X)")
    res = ev.screen(tree)
    assert res["stage"] == "screened" and res["reason"] is None
    # recompute it directly: mean over linears of log(tr(D H D^T) / tr(W H W^T))
    from pzshell.engine.masks import make_mask
    from pzshell.engine.stats import stat_key
    from pzshell.lang import evaluate

    logs = []
    for i, n, _ in ev.linears:
        k = stat_key(n, i)
        W = ev.dense[(i, n)]
        rows = ev.rows[(i, n)]
        s = evaluate(tree, W, X=ev.Xs[ev.pairs[0].label][k])[rows]
        D = W[rows] * make_mask(s, 0.5)
        H = ev.H[k]
        err = float(((D @ H) * D).sum())
        ref = float(((W[rows] @ H) * W[rows]).sum())
        logs.append(math.log(err / ref))
    assert res["proxy"] == pytest.approx(sum(logs) / len(logs), rel=1e-5)
    assert res["proxy"] < 0  # pruning half the weights loses less than all of the output


# ---- the statistics and the windows -------------------------------------------------------------
def test_sequential_statistics_give_wanda_exactly_its_layer_sequential_prune(ev):
    """The default statistics are X as Wanda's layer-sequential prune sees it, so Wanda's one-shot
    masks in the search are that prune's masks: the same held-out perplexity, to the digit."""
    import torch

    from pzshell.engine.prune import PruneConfig, prune_model
    from pzshell.evaluate.perplexity import perplexity
    from pzshell.search.fitness import round_fitness

    p = ev.pairs[0]
    assert ev.settings.statistics == "sequential" and ev.Xs[p.label] is not ev.X
    differs = [k for k in ev.X if not torch.equal(ev.X[k], ev.Xs[p.label][k])]
    assert differs and all(not k.endswith("_layer_0") for k in differs)  # block 0: dense input
    wanda = load_metric("W*sqrt(X)")
    res = ev.run(wanda, None)
    try:
        ev.apply_masks(wanda, p)
        one_shot = {(i, m): lin.weight.detach().clone() for i, m, lin in ev.linears}
        ev.restore()
        prune_model(ev.lm.model, PruneConfig("wanda", p.ratio, p.sparsity_type), ev.calib_ids)
        seq = {(i, m): lin.weight.detach().clone() for i, m, lin in ev.linears}
        n = len(ev.heldout)
        direct = round_fitness(perplexity(ev.lm.model, ev.heldout, batch_size=n).ppl)
    finally:
        ev.restore()
    assert all(torch.equal(one_shot[k], seq[k]) for k in seq)
    assert res["full"] == direct


def test_dense_statistics_are_the_unpruned_models(tmp_path):
    e = Evaluator(dataclasses.replace(FIT, statistics="dense"), threads=1)
    assert all(x is e.X for x in e.Xs.values())


def test_calibration_windows_are_the_prune_jobs_and_held_out_avoids_them():
    import torch

    from pzshell.data import (
        calibration_windows,
        load_text,
        sample_windows,
        tokenize,
        window_offsets,
    )
    from pzshell.models import load_model
    from pzshell.search.fitness import split_calibration

    lm = load_model("tiny")
    text = load_text("builtin", role="calib")
    ids = tokenize(lm.tokenizer, text)
    s = dataclasses.replace(FIT, nsamples=64, seqlen=512, heldout_windows=3, heldout_seqlen=256)
    calib, held, cheap, final = split_calibration(ids, s, text.name)
    assert torch.equal(calib, calibration_windows(lm.tokenizer, text, 64, 512, s.seed))
    # every held-out window is a run of the text that no calibration window touches
    used = torch.zeros(ids.numel(), dtype=torch.bool)
    for o in window_offsets(ids.numel(), 64, 512, s.seed):
        used[o : o + 512] = True
    tail = int(ids.numel() * 0.9)
    # the finals' windows: the held-out ones first, then more, all distinct and clear of the
    # calibration windows
    assert final.shape == (s.final_windows, 256) and torch.equal(final[:3], held)
    assert len({tuple(w.tolist()) for w in final}) == s.final_windows
    for w in final:
        starts = [i for i in range(tail, ids.numel() - 255) if torch.equal(ids[i : i + 256], w)]
        assert starts and not used[starts[0] : starts[0] + 256].any()
    assert torch.equal(cheap.flatten(), held.flatten()[: cheap.numel()])
    # asking for more than the text's last 10% holds gives what it holds (and the held-out
    # windows are still all there)
    _, held2, _, final2 = split_calibration(
        ids, dataclasses.replace(s, final_windows=10_000), text.name
    )
    assert torch.equal(held2, held) and s.final_windows < len(final2) < 10_000
    assert torch.equal(final2[: s.final_windows], final)
    # fewer final windows than held-out ones: the finals use the held-out ones
    few = split_calibration(ids, dataclasses.replace(s, final_windows=1), text.name)[3]
    assert torch.equal(few, held)
    head = dataclasses.replace(s, calib_windows="head")
    calib_h, held_h, _, final_h = split_calibration(ids, head, text.name)
    assert torch.equal(final_h[: len(held_h)], held_h)
    split = max(tail, ids.numel() - 3 * 256)
    assert torch.equal(calib_h, sample_windows(ids[:split], 64, 512, s.seed))  # the first 90%
    assert torch.equal(held_h.flatten(), ids[split : split + held_h.numel()])
    with pytest.raises(Exception, match="too short"):
        split_calibration(ids, dataclasses.replace(s, heldout_windows=10_000), text.name)


def test_proxy_ranks_a_good_rule_above_a_bad_one(ev):
    good = ev.screen(load_metric("W*sqrt(X)"))["proxy"]
    bad = ev.screen(load_metric("-W"))["proxy"]  # prunes the largest weights first
    assert good < bad


def test_column_reading_formulas_screen_as_their_whole_matrix_scores_say(ev):
    # the proxy scores a column-reading formula's sampled rows from whole-matrix operands; its
    # masks equal those of the whole matrix's scores cut to the rows
    local, whole = load_metric("W*sqrt(X)"), load_metric("div(W*sqrt(X), W)")
    # div by the norm of W scales the whole matrix: the same masks
    a, b = ev.screen(local), ev.screen(whole)
    assert a["mask_hash"] == b["mask_hash"] and a["proxy"] == b["proxy"]
    tree = load_metric("sqrt(X) * (W - coln(W) - coln(W))")
    (p,) = ev.pairs
    _, Xs = ev._x_for(tree, p)
    for i, n, _ in ev.linears[:6]:
        W, G, X, S = ev._leaves(tree, i, n, None, Xs)
        cut = evaluate(tree, W, G=G, X=X, S=S)[ev.rows[(i, n)]]
        assert torch.equal(ev._sampled_scores(tree, i, n, Xs), cut)


def test_degenerate_candidate_is_scored_and_explained(ev):
    res = ev.screen(load_metric("log(W - W)"))
    assert res["stage"] == "degenerate" and res["reason"]


# ---- mask-hash equivalence ---------------------------------------------------------------------
def test_equal_masks_hash_equal_though_the_rules_differ(ev):
    a, b = load_metric("W"), load_metric("W*exp(W)")  # increasing in |W|: the same masks
    assert canonical(a).key != canonical(b).key  # the canonical key cannot see it
    assert ev.screen(a)["mask_hash"] == ev.screen(b)["mask_hash"]
    assert ev.screen(load_metric("W*sqrt(X)"))["mask_hash"] != ev.screen(a)["mask_hash"]


def test_search_reuses_the_fitness_of_an_equal_mask(tmp_path):
    s = settings(
        seed_formulas=("W*exp(W)",), population=6, budget=6, final_top=0, strategy="random"
    )
    Search(s, tmp_path / "r", threads=1).run()
    recs = {r["formula"]: r for r in RunLog(tmp_path / "r").read()[0]}
    w, twin = recs["W"], recs["W * exp(W)"]
    assert twin["hit"] == "mask" and twin["equivalent_to"] == w["id"]
    assert twin["fitness"] == w["fitness"] and twin["mask_hash"] == w["mask_hash"]
    assert twin["eval_seconds"] is None  # no perplexity was paid for it
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    every = RunLog(tmp_path / "r").read()[0]
    hits = [r for r in every if r.get("hit") == "mask"]
    assert summary["mask_hits"] == len(hits) >= 1
    # the full-stage count is of perplexities paid for: twins with a full fitness are not in it
    twins_full = sum(1 for r in hits if r["stage"] == "full")
    assert summary["full"] == summary["outcomes"]["full"] - twins_full


def test_finals_leave_out_a_rule_with_its_betters_fitness(tmp_path):
    # W * exp(W) is a mask hit of W (same fitness): a final prune of it would repeat W's.
    # Open gates: every screened candidate gets a full fitness, so every one could be a final
    s = settings(
        fitness=dataclasses.replace(FIT, cheap_windows=0),
        seed_formulas=("W*exp(W)",),
        population=6,
        budget=6,
        final_top=6,
        strategy="random",
        proxy_quantile=1.0,
        promote_max=1.0,
    )
    said = []
    Search(s, tmp_path / "r", threads=1, on_event=said.append).run()
    every = RunLog(tmp_path / "r").read()[0]
    finals = [r["formula"] for r in every if r["stage"] == "final"]
    full = [r for r in every if r["stage"] == "full"]
    assert "W" in finals and "W * exp(W)" not in finals
    assert len(finals) == len({r["fitness"] for r in full}) < len(full)
    fast = [r["fast_fitness"] for r in every if r["stage"] == "final"]
    assert len(set(fast)) == len(fast)
    msgs = [e.text for e in said if getattr(e, "topic", None) == "finals"]
    assert any("W * exp(W) (as W)" in m for m in msgs), msgs


def test_finalists_are_the_best_distinct_fitnesses():
    recs = [
        {"id": 1, "stage": "full", "fitness": 5.0, "size": 3, "formula": "a"},
        {"id": 2, "stage": "full", "fitness": 4.0, "size": 5, "formula": "b"},
        {"id": 3, "stage": "full", "fitness": 4.0, "size": 3, "formula": "c"},  # b's twin
        {"id": 4, "stage": "proxy", "fitness": math.inf, "proxy": 1.0, "size": 1, "formula": "d"},
        {"id": 5, "stage": "full", "fitness": 6.0, "size": 1, "formula": "e"},
    ]
    top, twins = finalists(recs, 2)
    assert [r["formula"] for r in top] == ["c", "a"]  # the smaller of the twins is kept
    assert [(a["formula"], b["formula"]) for a, b in twins] == [("b", "c")]
    top, _ = finalists(recs, 5)
    assert [r["formula"] for r in top] == ["c", "a", "e"]


# ---- the ladder's gates --------------------------------------------------------------------------
def test_ladder_gates_send_only_promising_candidates_on(tmp_path):
    Search(settings(budget=40, final_top=0), tmp_path / "r", threads=1).run()
    recs = [r for r in RunLog(tmp_path / "r").read()[0] if not r.get("hit")]
    stages = {r["stage"] for r in recs}
    assert {"proxy", "full"} <= stages  # both the proxy gate and the full stage were used
    for r in recs:
        if r["stage"] == "proxy":  # rejected at the proxy: no perplexity paid
            assert r["full"] is None and r["eval_seconds"] is None
            if r["reason"] is None:  # its proxy missed the gate
                assert r["proxy"] > r["gate"]
            else:  # within the gate, but the batch's promote_max went to better proxies
                assert r["reason"] == "outside the batch's best"
                went_on = [
                    o["proxy"]
                    for o in recs
                    if o["batch"] == r["batch"] and o["stage"] in ("full", "cheap")
                ]
                assert went_on and max(went_on) <= r["proxy"]
        if r["stage"] in ("full", "cheap") and r["gate"] is not None:
            assert r["proxy"] <= r["gate"]
        if r["stage"] == "cheap":  # the cheap stage's own gate
            assert r["cheap"] > r["threshold"] and r["full"] is None
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["screened"] == 40
    assert summary["stage_seconds"]["screen"]["n"] > 0 and summary["stage_seconds"]["eval"]["n"]
    assert summary["proxy_full_pairs"] >= 3 and -1 <= summary["proxy_full_spearman"] <= 1
    assert summary["statistics_seconds"] >= 0 and "final_seconds" in summary
    # what the fitness was measured on: the model as loaded and the held-out and finals' tokens
    from pzshell.models import load_model, token_fingerprint

    ev = Evaluator(FIT, threads=1)
    assert summary["model_fingerprint"] == load_model("tiny").fingerprint()
    assert summary["heldout_fingerprint"] == token_fingerprint(ev.heldout)
    assert summary["final_fingerprint"] == token_fingerprint(ev.final_heldout)
    assert summary["heldout_fingerprint"] != summary["final_fingerprint"]
    assert summary["versions"]["torch"] and summary["versions"]["tokenizers"]


def test_without_the_proxy_every_candidate_goes_to_perplexity(tmp_path):
    fit = dataclasses.replace(FIT, proxy_rows=0)
    Search(settings(fitness=fit, final_top=0), tmp_path / "r", threads=1).run()
    recs = RunLog(tmp_path / "r").read()[0]
    assert all(r["proxy"] is None and r["stage"] != "proxy" for r in recs)


# ---- multi-setting fitness ---------------------------------------------------------------------
def test_multi_setting_fitness_is_the_mean_of_its_parts(tmp_path):
    both = dataclasses.replace(FIT, sparsity_type="unstructured,2:4", cheap_windows=0)
    assert [p.label for p in both.settings()] == ["0.5 unstructured", "2:4"]
    tree = load_metric("W*sqrt(X)")
    multi = Evaluator(both, threads=1).run(tree, None)
    parts = []
    for t in ("unstructured", "2:4"):
        one = Evaluator(dataclasses.replace(both, sparsity_type=t), threads=1).run(tree, None)
        parts.append(one["full"])
        label = "2:4" if t == "2:4" else "0.5 unstructured"
        assert multi["settings"][label]["full"] == pytest.approx(one["full"], rel=1e-6)
    assert multi["full"] == pytest.approx(math.exp(sum(map(math.log, parts)) / 2), rel=1e-6)
    assert mean_log(parts) == pytest.approx(multi["full"], rel=1e-6)
    # the proxy too: the mean of the settings' proxies
    sc = Evaluator(both, threads=1).screen(tree)
    per = [v["proxy"] for v in sc["settings"].values()]
    assert sc["proxy"] == pytest.approx(sum(per) / 2, rel=1e-6)


def test_ratios_and_types_lists_from_the_cli(tmp_path):
    out = tmp_path / "r"
    args = ["search", "--model", "tiny", "--nsamples", "4", "--grad_samples", "2"]
    args += ["--seqlen", "64", "--heldout_windows", "2", "--heldout_seqlen", "64"]
    args += ["--sparsity_ratio", "0.4,0.6", "--sparsity_type", "unstructured,2:4"]
    args += ["--population", "4", "--budget", "4", "--final-top", "0", "--out", str(out)]
    assert main(args) == 0
    saved = json.loads((out / "settings.json").read_text())["settings"]["fitness"]
    assert saved["sparsity_ratio"] == [0.4, 0.6] and saved["sparsity_type"] == "unstructured,2:4"
    rec = next(r for r in RunLog(out).read()[0] if r["stage"] == "full")
    assert set(rec["settings"]) == {"0.4 unstructured", "0.6 unstructured", "2:4"}


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--sparsity_ratio", "0.5,x"], "comma-separated list of ratios"),
        (["--sparsity_ratio", "0.5,0.5"], "lists a value twice"),
        (["--sparsity_type", "unstructured,3:2"], "need 0 < N < M"),
        (["--strategy", "annealing"], "invalid choice"),
    ],
)
def test_bad_setting_lists_are_refused(tmp_path, capsys, flags, match):
    try:
        code = main(["search", "--model", "tiny", "--out", str(tmp_path / "x"), *flags])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    assert code == 2
    captured = capsys.readouterr()
    assert match in " ".join((captured.err + captured.out).split())
    assert not (tmp_path / "x").exists()


# ---- constants ---------------------------------------------------------------------------------
def test_constant_mutation_tunes_a_constant_and_keeps_the_shape():
    rng = random.Random(0)
    tree = load_metric("W*sqrt(X) + 0.5*G")
    seen = set()
    for _ in range(20):
        child = constant_mutation(rng, tree)
        assert child.size == tree.size
        (c,) = [n for _, n in child.walk() if n.is_const]
        assert c.value > 0 and len(c.data.replace(".", "").lstrip("0")) <= 3
        seen.add(c.value)
    assert len(seen) > 10  # tuned, not replaced by one value
    assert constant_mutation(rng, load_metric("W*X")) == load_metric("W*X")
    # mutate() tunes constants a part of the time
    kinds = {mutate(random.Random(i), tree, 6, ("add", "mul")).size == tree.size for i in range(30)}
    assert True in kinds


def test_constants_survive_a_resume_exactly(tmp_path):
    kw = dict(p_const=0.5, budget=32, final_top=0)
    Search(settings(**kw), tmp_path / "a", threads=1).run()
    consts = [r for r in RunLog(tmp_path / "a").read()[0] if from_json_obj(r["tree"]).has_constants]
    assert consts  # constants were drawn and evaluated
    _interrupt_and_resume(settings(**kw), tmp_path / "b", after=19)
    assert trajectory(tmp_path / "a") == trajectory(tmp_path / "b")
    # the constants' text is the same, digit for digit
    trees = {r["id"]: r["tree"] for r in RunLog(tmp_path / "b").read()[0]}
    assert all(trees[r["id"]] == r["tree"] for r in RunLog(tmp_path / "a").read()[0])


# ---- selection ---------------------------------------------------------------------------------
def _rec(i, fitness, size, stage="full", **kw):
    return dict(id=i, fitness=fitness, size=size, stage=stage, formula=f"f{i}", **kw)


def test_parsimony_prefers_the_smaller_of_two_close_formulas():
    small, big = _rec(0, 60.0, 3), _rec(1, 59.9, 21)
    assert sort_key(big) < sort_key(small)  # without pressure the bigger one wins
    assert selection_key(small, 0.002) < selection_key(big, 0.002)
    assert selection_key(big, 0.0) < selection_key(small, 0.0)
    much_better = _rec(2, 50.0, 21)
    assert selection_key(much_better, 0.002) < selection_key(small, 0.002)
    # rejects stay behind every full-stage candidate
    assert selection_key(_rec(3, math.inf, 1, "proxy", proxy=-9.0), 0.002) > selection_key(big, 0)


def test_pareto_front_and_percentiles():
    recs = [_rec(0, 70, 3), _rec(1, 65, 5), _rec(2, 66, 7), _rec(3, 60, 9), _rec(4, 68, 3)]
    assert [r["id"] for r in pareto_records(recs)] == [4, 1, 3]
    assert percentiles([1, 2, 3, 4, 100]) == {"n": 5, "p50": 3, "p95": 100}
    assert percentiles([]) == {"n": 0, "p50": None, "p95": None}


def test_survival_keeps_one_candidate_per_mask_and_the_pareto_front(tmp_path):
    s = Search(settings(population=4), tmp_path / "x")
    pool = [
        _rec(0, 60.0, 9, mask_hash="a", canonical="k0"),
        _rec(1, 60.0, 3, mask_hash="a", canonical="k1"),  # the same masks, smaller: kept
        _rec(2, 70.0, 1, mask_hash="b", canonical="k2"),  # on the front (smallest)
        _rec(3, 61.0, 5, mask_hash="c", canonical="k3"),
        _rec(4, 62.0, 5, mask_hash="d", canonical="k4"),
        _rec(5, 63.0, 5, mask_hash="e", canonical="k5"),
    ]
    kept = [r["id"] for r in s._survive(pool)]
    assert 0 not in kept and 1 in kept and 2 in kept and len(kept) == 4


# ---- restarts and the random baseline ----------------------------------------------------------
def test_stagnation_restarts_keep_the_front_and_the_run_resumes_exactly(tmp_path):
    kw = dict(budget=36, stagnation=1, final_top=0)
    msgs = []
    Search(settings(**kw), tmp_path / "a", threads=1, on_event=msgs.append).run()
    state = json.loads((tmp_path / "a" / "state.json").read_text())
    assert state["restarts"] >= 1
    assert any("restart" in r["origin"] for r in RunLog(tmp_path / "a").read()[0])
    _interrupt_and_resume(settings(**kw), tmp_path / "b", after=23)
    assert trajectory(tmp_path / "a") == trajectory(tmp_path / "b")


def test_random_strategy_runs_and_resumes(tmp_path):
    kw = dict(strategy="random", budget=24, final_top=1)
    fin = Search(settings(**kw), tmp_path / "a", threads=1).run()
    assert fin.evaluations == 24
    recs = RunLog(tmp_path / "a").read()[0]
    later = [r for r in recs if r.get("batch", 0) > 0 and r["stage"] != "final"]
    assert later and all(r["origin"] == "random" and r["parents"] == [] for r in later)
    _interrupt_and_resume(settings(**kw), tmp_path / "b", after=13)
    assert trajectory(tmp_path / "a") == trajectory(tmp_path / "b")
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["strategy"] == "random"


def test_the_default_search_is_the_benchmarked_one():
    """`pzshell search` with no flag runs SearchSettings() (the defaults bench/search.py uses)."""
    import argparse

    from pzshell.cli.search_cmd import settings_from_args
    from pzshell.search import SearchSettings

    assert settings_from_args(argparse.Namespace()) == SearchSettings()


# ---- a fixed allocation inside the search --------------------------------------------------------
def test_search_with_an_allocation_prunes_each_block_at_its_ratio(tmp_path):
    from pzshell.engine.layer_ratios import formula_block_ratios
    from pzshell.search import SearchError

    fit = dataclasses.replace(FIT, allocation="1 - L", cheap_windows=0)
    ev = Evaluator(fit, threads=1)
    ratios = ev.block_ratios["0.5 unstructured"]
    expect, _ = formula_block_ratios("1 - L", ev.lm.model, ev.calib_ids, 0.5)
    assert ratios == pytest.approx(expect) and ratios[0] < 0.5 < ratios[1]
    # the masks of the full stage follow the ratios: block 1 is pruned more than block 0
    ev.apply_masks(load_metric("W*sqrt(X)"), ev.pairs[0])
    zero = {i: [] for i in range(2)}
    for i, _, lin in ev.linears:
        zero[i].append(float((lin.weight == 0).float().mean()))
    ev.restore()
    assert sum(zero[0]) / len(zero[0]) < 0.5 < sum(zero[1]) / len(zero[1])
    fin = Search(settings(fitness=fit, budget=8, final_top=1), tmp_path / "r", threads=1).run()
    assert math.isfinite(fin.best_fitness)
    bad = dataclasses.replace(FIT, allocation="owl", sparsity_type="unstructured,2:4")
    with pytest.raises(SearchError, match="2:4 fixes every block"):
        Search(settings(fitness=bad), tmp_path / "x")
    with pytest.raises(SearchError, match="unknown name 'Q'"):
        Search(settings(fitness=dataclasses.replace(FIT, allocation="Q")), tmp_path / "y")


def test_the_search_spreads_a_fixed_allocation_by_its_owl_lambda(tmp_path):
    """``--owl_lambda`` reaches the search's allocation (what an allocation search chose), keeps
    the total exact, enters the digest only when it is not the default (so a run saved before
    the setting existed keeps its digest), and is refused where it would change nothing."""
    from pzshell.engine.layer_ratios import formula_block_ratios
    from pzshell.search import SearchError

    base = dataclasses.replace(FIT, allocation="1 - L", cheap_windows=0)
    wide = dataclasses.replace(base, owl_lambda=0.2)
    ev = Evaluator(wide, threads=1)
    ratios = ev.block_ratios["0.5 unstructured"]
    expect, _ = formula_block_ratios("1 - L", ev.lm.model, ev.calib_ids, 0.5, lam=0.2)
    narrow, _ = formula_block_ratios("1 - L", ev.lm.model, ev.calib_ids, 0.5)
    assert ratios == pytest.approx(expect) and ratios != pytest.approx(narrow)
    assert ratios[1] - ratios[0] > narrow[1] - narrow[0] > 0
    assert sum(ratios) / len(ratios) == pytest.approx(0.5)  # tiny's blocks are equal in size
    assert wide.digest() != base.digest()
    saved = dataclasses.asdict(base)
    del saved["owl_lambda"]  # settings.json of a run made before the setting existed
    del saved["final_windows"]  # nor is final_windows (never in the digest)
    del saved["reconstruct"]  # nor reconstruct (newer still)
    del saved["refit"]  # nor refit (newer again)
    del saved["heldout_skip"]  # nor heldout_skip (newest)
    old_digest = hashlib.sha256(json.dumps(saved, sort_keys=True).encode()).hexdigest()[:16]
    assert base.digest() == old_digest  # the earlier code's digest of the same settings
    with pytest.raises(SearchError, match="with --allocation uniform it would change nothing"):
        Search(settings(fitness=dataclasses.replace(FIT, owl_lambda=0.2)), tmp_path / "x")
    with pytest.raises(SearchError, match=r"--owl_lambda must be in \[0, 0.5\)"):
        Search(settings(fitness=dataclasses.replace(base, owl_lambda=0.7)), tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_finals_are_judged_on_their_own_longer_held_out_text(ev, tmp_path):
    """A final is the real layer-sequential prune measured on ``final_windows`` held-out windows
    (the full stage's first, then more); the setting is not in the fitness digest (no cached
    value depends on it) and a resumed run may change it, as it may change ``final_top``."""
    from pzshell.engine.prune import PruneConfig, prune_model
    from pzshell.evaluate.perplexity import perplexity
    from pzshell.search.fitness import round_fitness

    s = ev.settings
    assert len(ev.final_heldout) == s.final_windows > s.heldout_windows
    assert torch.equal(ev.final_heldout[: s.heldout_windows], ev.heldout)
    wanda = load_metric("W*sqrt(X)")
    res = ev.final_fitness(wanda)
    p = ev.pairs[0]
    try:
        prune_model(ev.lm.model, PruneConfig("metric", p.ratio, p.sparsity_type, metric=wanda),
                    ev.calib_ids, ev.G)  # fmt: skip
        on_final = round_fitness(perplexity(ev.lm.model, ev.final_heldout).ppl)
        on_full = round_fitness(perplexity(ev.lm.model, ev.heldout).ppl)
    finally:
        ev.restore()
    assert res["final"] == on_final != on_full
    # each window's mean NLL, for the comparison with the reference: they make up the value
    (per,) = res["settings"].values()
    assert len(per["window_nll"]) == s.final_windows
    mean = sum(per["window_nll"]) / len(per["window_nll"])
    assert math.exp(mean) == pytest.approx(res["final"], rel=1e-5)
    assert res["final_tokens"] == s.final_windows * s.heldout_seqlen
    assert dataclasses.replace(s, final_windows=3).digest() == s.digest()
    base = settings(fitness=dataclasses.replace(FIT, cheap_windows=0), budget=8, final_top=1)
    wider = dataclasses.replace(base, fitness=dataclasses.replace(base.fitness, final_windows=3))
    assert wider.digest() == base.digest()
    out = tmp_path / "r"
    Search(dataclasses.replace(base, final_top=0), out, threads=1).run()
    fin = Search(wider, out, threads=1, resume=True).run()
    (final,) = [
        r for r in RunLog(out).read()[0] if r["stage"] == "final" and not r.get("reference")
    ]
    assert final["final_tokens"] == 3 * FIT.heldout_seqlen
    # the answer is the final or the reference (Wanda), both judged on the same 3 windows
    refs = [r for r in RunLog(out).read()[0] if r.get("reference")]
    assert fin.best_fitness in [final["fitness"]] + [r["fitness"] for r in refs]
    for r in [final, *refs]:
        (nll,) = [v["window_nll"] for v in r["settings"].values()]
        assert len(nll) == 3
    with pytest.raises(SearchError, match="final-windows must be at least 1"):
        Search(settings(fitness=dataclasses.replace(FIT, final_windows=0)), tmp_path / "z")


# ---- the iterative (reconstruct) fitness --------------------------------------------------------
@pytest.fixture(scope="module")
def ev_iter(tmp_path_factory):
    import os

    old = os.environ.get("PZSHELL_CACHE")
    os.environ["PZSHELL_CACHE"] = str(tmp_path_factory.mktemp("itercache"))
    try:
        yield Evaluator(dataclasses.replace(FIT, reconstruct="iterative"), threads=1)
    finally:
        if old is None:
            os.environ.pop("PZSHELL_CACHE", None)
        else:
            os.environ["PZSHELL_CACHE"] = old


def test_iterative_stages_score_the_weights_sparsegpts_loop_leaves(ev_iter):
    """With --reconstruct iterative the proxy is the sampled rows' output error after SparseGPT's
    loop with the candidate choosing each block's mask, and the perplexity stages measure the
    model whose every linear is what that loop leaves (from the cached H)."""
    from pzshell.engine.sparsegpt import sparsegpt_prune
    from pzshell.engine.stats import stat_key
    from pzshell.evaluate.perplexity import perplexity
    from pzshell.search.fitness import round_fitness

    ev, p = ev_iter, ev_iter.pairs[0]
    tree = load_metric("W * sqrt(X)")
    X = ev.Xs[p.label]

    def loop(i, n, W):
        x = X[stat_key(n, i)]
        fn = lambda w, a, b: evaluate(tree, w, X=x[:, a:b])  # noqa: E731
        return sparsegpt_prune(W, ev.H[stat_key(n, i)], p.ratio, score_fn=fn)

    err = ref = 0.0  # each row's output error weighted by its mean squared gradient
    for i, n, _ in ev.linears:
        k = stat_key(n, i)
        rows = ev.rows[(i, n)]
        W = ev.dense[(i, n)][rows]
        g = ev.G[k][rows].float().pow(2).mean(1, keepdim=True)
        new, _ = loop(i, n, W)
        err += float((((W - new) @ ev.H[k]) * (W - new) * g).sum())
        ref += float(((W @ ev.H[k]) * W * g).sum())
    res = ev.screen(tree)
    assert res["reason"] is None
    assert res["proxy"] == pytest.approx(math.log(err / ref), rel=1e-4)
    assert res["mask_hash"] == Evaluator.screen(ev, load_metric("sqrt(X) * W"))["mask_hash"]
    try:
        with torch.no_grad():
            for i, n, lin in ev.linears:
                lin.weight.copy_(loop(i, n, ev.dense[(i, n)])[0])
        direct = perplexity(ev.lm.model, ev.heldout, batch_size=len(ev.heldout)).ppl
    finally:
        ev.restore()
    full = ev.run(tree, None)
    assert full["reason"] is None and full["full"] == round_fitness(direct)
    # without the proxy stage the full stage is the same; the proxy says it is off
    bare = Evaluator(dataclasses.replace(ev.settings, proxy_rows=0), threads=1)
    assert bare.run(tree, None)["full"] == full["full"]
    with pytest.raises(MetricError, match="the proxy stage is off"):
        bare.screen(tree)


def test_iterative_fitness_beats_the_masks_alone_and_its_finals_are_metric_iterative(ev_iter, ev):
    """The update recovers output: the iterative full stage is better than the plain one for the
    same rule; the finals are `--method metric+iterative` prunes."""
    from pzshell.engine.prune import PruneConfig, prune_model
    from pzshell.evaluate.perplexity import perplexity
    from pzshell.search.fitness import round_fitness

    tree = load_metric("W * sqrt(X)")
    assert ev_iter.run(tree, None)["full"] < ev.run(tree, None)["full"]
    p = ev_iter.pairs[0]
    res = ev_iter.final_fitness(tree)
    try:
        cfg = PruneConfig("metric+iterative", p.ratio, p.sparsity_type, metric=tree)
        prune_model(ev_iter.lm.model, cfg, ev_iter.calib_ids, ev_iter.G)
        direct = round_fitness(perplexity(ev_iter.lm.model, ev_iter.final_heldout).ppl)
    finally:
        ev_iter.restore()
    assert res["final"] == direct != ev.final_fitness(tree)["final"]


def test_iterative_search_runs_resumes_and_keeps_old_digests(tmp_path, capsys):
    """A search with --reconstruct iterative runs and resumes to the same trajectory; the setting
    is in its digest, and a run without it keeps the digest it had before the setting existed."""
    it = settings(fitness=dataclasses.replace(FIT, reconstruct="iterative"), budget=8)
    out = tmp_path / "it"
    Search(it, out, threads=1).run()
    assert all(r["fitness"] is not None for r in RunLog(out).read()[0])
    again = tmp_path / "again"
    _interrupt_and_resume(it, again, after=3)
    assert trajectory(again) == trajectory(out)
    plain = settings()
    assert it.digest() != plain.digest() and it.fitness.digest() != plain.fitness.digest()
    assert "reconstruct" not in plain.identity()["fitness"]
    d = dataclasses.asdict(plain.fitness)
    del d["final_windows"], d["reconstruct"], d["owl_lambda"]  # owl_lambda: its default
    del d["refit"], d["heldout_skip"]  # newer than the digest this run was saved with
    old = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    assert plain.fitness.digest() == old
    # the CLI flag, and a clear refusal of anything else
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--model", "tiny", "--reconstruct", "sideways"])
    assert exit_.value.code == 2
    assert "invalid choice: 'sideways'" in capsys.readouterr().err
    with pytest.raises(SearchError, match="--reconstruct is 'none'"):
        settings(fitness=dataclasses.replace(FIT, reconstruct="yes")).validate()


# ---- the terminal set (--terminals) -------------------------------------------------------------
def test_w_sqrt_s_in_the_iterative_full_stage_is_sparsegpt(ev_iter):
    """``S`` comes from the cached dense ``H``: ``W * sqrt(S)`` chosen inside the loop is SparseGPT
    on every linear, so its full-stage fitness is SparseGPT's perplexity from those Hessians."""
    from pzshell.engine.sparsegpt import sparsegpt_prune
    from pzshell.engine.stats import stat_key
    from pzshell.evaluate.perplexity import perplexity
    from pzshell.search.fitness import round_fitness

    ev = ev_iter
    try:
        with torch.no_grad():
            for i, n, lin in ev.linears:
                H = ev.H[stat_key(n, i)]
                lin.weight.copy_(sparsegpt_prune(ev.dense[(i, n)], H, ev.pairs[0].ratio)[0])
        direct = perplexity(ev.lm.model, ev.heldout, batch_size=len(ev.heldout)).ppl
    finally:
        ev.restore()
    assert ev.run(load_metric("W * sqrt(S)"), None)["full"] == round_fitness(direct)
    # the plain stages read S too; without H (no proxy, no loop) a candidate with S is refused
    assert ev.screen(load_metric("W^2 * S"))["reason"] is None
    bare = Evaluator(dataclasses.replace(FIT, proxy_rows=0), threads=1)
    res = bare.run(load_metric("W^2 * S"), None)
    assert res["full"] is None and "needs the calibration Hessian" in res["reason"]


def test_evolution_draws_leaves_from_the_terminal_set_only():
    from pzshell.search.gp import point_mutation, subtree_mutation

    tree = load_metric("W * sqrt(X) + G")
    ops = ("add", "mul", "sqrt")
    for i in range(40):
        rng = random.Random(i)
        assert point_mutation(rng, tree, ops, ("W", "S")).terminals <= {"W", "S", "G", "X"}
        got = subtree_mutation(rng, load_metric("W"), 4, ops, 0.0, ("W", "S")).terminals
        assert got <= {"W", "S"}
    seen = set()
    for i in range(60):  # the default is the published set: never S
        seen |= mutate(random.Random(i), tree, 6, ops).terminals
    assert "S" not in seen and {"W", "G", "X"} <= seen


def test_a_search_with_s_in_its_terminals_runs_and_the_setting_is_checked(tmp_path, capsys):
    s = settings(terminals="W,X,S", budget=12)  # SparseGPT's W * sqrt(S) is a known seed
    out = tmp_path / "s"
    Search(s, out, threads=1).run()
    recs = RunLog(out).read()[0]
    with_s = [r for r in recs if "S" in from_json_obj(r["tree"]).terminals]
    assert any(r["formula"] != "W * sqrt(S)" for r in with_s)  # evolution drew S itself
    assert all(from_json_obj(r["tree"]).terminals <= {"W", "X", "S"} for r in recs)
    assert all(r["reason"] is None for r in with_s)  # none failed: S was there to read
    assert any(r["fitness"] is not None for r in with_s if r["formula"] != "W * sqrt(S)")
    assert s.digest() != settings().digest()
    assert "terminals" not in settings().identity()  # old runs keep their digest
    for bad, match in [
        ("W,Q", "unknown Q"),
        ("G,X", "must include W"),
        ("W,W,X", "each at most once"),
    ]:
        with pytest.raises(SearchError, match=match):
            settings(terminals=bad).validate()
    with pytest.raises(SearchError, match="outside the search's terminals W,G,X"):
        settings(seed_formulas=("W^2 * S",)).validate()
    no_h = dataclasses.replace(FIT, proxy_rows=0)
    with pytest.raises(SearchError, match="needs the calibration Hessian"):
        settings(fitness=no_h, terminals="W,G,X,S").validate()
    code = main(["search", "--model", "tiny", "--terminals", "W,Z", "--out", str(tmp_path / "z")])
    captured = capsys.readouterr()
    assert code == 2 and "--terminals 'W,Z': unknown Z" in captured.err + captured.out
    assert not (tmp_path / "z").exists()


# ---- the least-squares refit (--refit) ----------------------------------------------------------
def test_refit_stages_score_the_refitted_weights_and_finals_are_refit_prunes(ev, tmp_path):
    """With --refit every stage scores the candidate's masks with their kept weights refitted by
    least squares from the cached H: the proxy on the sampled rows, the full stage on every
    linear; the finals are `pzshell prune --refit` prunes. The setting is in the digest, and a
    run without it keeps the digest it had before the setting existed."""
    from pzshell.engine.masks import make_mask
    from pzshell.engine.prune import PruneConfig, prune_model
    from pzshell.engine.refit import least_squares_refit
    from pzshell.engine.stats import stat_key
    from pzshell.evaluate.perplexity import perplexity
    from pzshell.search.fitness import round_fitness

    fit = Evaluator(dataclasses.replace(FIT, refit=6), threads=1)
    p, tree = fit.pairs[0], load_metric("W * sqrt(X)")
    X = fit.Xs[p.label]
    logs = 0.0
    for i, n, _ in fit.linears:
        k, rows = stat_key(n, i), fit.rows[(i, n)]
        W, H = fit.dense[(i, n)][rows], fit.H[k]
        mask = make_mask(evaluate(tree, W, X=X[k]), p.ratio)
        new, _ = least_squares_refit(W, W.masked_fill(mask, 0), mask, H, iters=6)
        D = W - new
        logs += math.log(float(((D @ H) * D).sum()) / fit.ref[(i, n)])
    res = fit.screen(tree)
    assert res["reason"] is None
    assert res["proxy"] == pytest.approx(logs / len(fit.linears), rel=1e-4)
    assert res["proxy"] < ev.screen(tree)["proxy"]  # the refit leaves less error than the mask
    try:
        with torch.no_grad():
            for i, n, lin in fit.linears:
                k, W = stat_key(n, i), fit.dense[(i, n)]
                mask = make_mask(evaluate(tree, W, X=X[k]), p.ratio)
                lin.weight.copy_(
                    least_squares_refit(W, W.masked_fill(mask, 0), mask, fit.H[k], iters=6)[0]
                )
        direct = perplexity(fit.lm.model, fit.heldout, batch_size=len(fit.heldout)).ppl
    finally:
        fit.restore()
    full = fit.run(tree, None)
    assert full["reason"] is None and full["full"] == round_fitness(direct)
    assert full["full"] != ev.run(tree, None)["full"]
    final = fit.final_fitness(tree)
    try:
        cfg = PruneConfig("metric", p.ratio, p.sparsity_type, metric=tree, refit=6)
        prune_model(fit.lm.model, cfg, fit.calib_ids, fit.G)
        direct = round_fitness(perplexity(fit.lm.model, fit.final_heldout).ppl)
    finally:
        fit.restore()
    assert final["final"] == direct
    # identity: refit is part of it when set, absent (old digests kept) when not
    with_refit = settings(fitness=dataclasses.replace(FIT, refit=6))
    assert with_refit.digest() != settings().digest()
    assert "refit" not in settings().identity()["fitness"]
    assert with_refit.fitness.digest() != FIT.digest()
    with pytest.raises(SearchError, match="--refit takes a number of CG iterations"):
        settings(fitness=dataclasses.replace(FIT, refit=-1)).validate()


def test_refit_search_from_the_cli_runs_with_s_and_no_proxy(tmp_path):
    """`pzshell search --refit` (alone: the default iterations) loads H for the refit, so S is
    allowed without the proxy; the run's candidates are all scored."""
    out = tmp_path / "cli"
    flags = (
        "search --model tiny --nsamples 2 --grad_samples 1 --seqlen 32 --heldout_windows 1 "
        "--heldout_seqlen 32 --cheap_windows 0 --proxy_rows 0 --population 6 --budget 8 "
        "--batch 2 --final-top 0 --workers 1 --terminals W,G,X,S --refit"
    )
    assert main([*flags.split(), "--out", str(out)]) == 0
    saved = json.loads((out / "settings.json").read_text())
    fitness = saved["settings"]["fitness"]
    assert fitness["refit"] == 30 and fitness["proxy_rows"] == 0
    recs = RunLog(out).read()[0]
    assert recs and all(r["fitness"] is not None and r["reason"] is None for r in recs)
    assert any("S" in load_metric(r["formula"]).terminals for r in recs)


# ---- held-out placeholder tokens (--heldout-skip) ------------------------------------------------
def test_heldout_skip_scores_every_stage_without_the_placeholders_tokens(ev, tmp_path, capsys):
    """With ``heldout_skip`` the cheap, full and final stages (and the allocation search, which
    shares the Evaluator's held-out perplexity) leave the pieces' tokens out of the mean; the
    setting is in the fitness digest, a run saved before it existed reads as "" (every token
    scored) and keeps its digest, and the CLI takes it, with ``none`` for "" ."""
    from pzshell.engine.prune import PruneConfig, prune_model
    from pzshell.evaluate.perplexity import perplexity, placeholder_tokens
    from pzshell.search.fitness import round_fitness
    from pzshell.search.settings import SearchSettings

    piece = "e"  # common in any English text, so the tiny held-out windows hold many
    sk = Evaluator(dataclasses.replace(FIT, heldout_skip=piece), threads=1)
    marks = placeholder_tokens(sk.heldout, sk.lm.tokenizer, piece)
    assert torch.equal(sk.heldout_skip, marks) and 0 < int(marks[:, 1:].sum()) < marks.numel() // 2
    assert ev.heldout_skip is None and torch.equal(sk.heldout, ev.heldout)
    wanda = load_metric("W * sqrt(X)")
    res, plain = sk.run(wanda, None), ev.run(wanda, None)
    p = sk.pairs[0]
    try:
        sk.apply_masks(wanda, p, {})
        direct = perplexity(sk.lm.model, sk.heldout, batch_size=len(sk.heldout), skip=marks)
        every = perplexity(sk.lm.model, sk.heldout, batch_size=len(sk.heldout))
        cheap = perplexity(sk.lm.model, sk.cheap, skip=sk.cheap_skip)
    finally:
        sk.restore()
    assert res["full"] == round_fitness(direct.ppl) != plain["full"] == round_fitness(every.ppl)
    assert res["cheap"] == round_fitness(cheap.ppl)
    fin = sk.final_fitness(wanda)
    try:
        prune_model(sk.lm.model, PruneConfig("metric", p.ratio, p.sparsity_type, metric=wanda),
                    sk.calib_ids, sk.G)  # fmt: skip
        on_final = perplexity(sk.lm.model, sk.final_heldout, skip=sk.final_skip)
    finally:
        sk.restore()
    assert fin["final"] == round_fitness(on_final.ppl)
    (per,) = fin["settings"].values()
    assert per["window_nll"] == [round(x, 6) for x in on_final.window_nll]
    # the digest: a new value is a new fitness; "" is the fitness every earlier run had
    assert sk.settings.digest() != FIT.digest()
    d = dataclasses.asdict(FIT)
    assert d.pop("heldout_skip") == ""
    del d["final_windows"], d["reconstruct"], d["owl_lambda"], d["refit"]
    assert FIT.digest() == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    saved = settings().to_dict()
    del saved["fitness"]["heldout_skip"]
    assert SearchSettings.from_dict(saved).fitness.heldout_skip == ""
    assert SearchSettings.from_dict(saved).digest() == settings().digest()
    # the CLI
    says = {
        "<unk>": "--heldout-skip '<unk>' matches no held-out token",  # none in tiny's text
        "none": None,
        "e": "are read as context but not scored",
    }
    for flag, want in (("<unk>", "<unk>"), ("none", ""), ("e", "e")):
        out = tmp_path / f"cli-{want or 'none'}"
        argv = ["search", "--model", "tiny", "--heldout-skip", flag, "--nsamples", "4"]
        argv += ["--grad_samples", "2", "--seqlen", "64", "--heldout_windows", "2"]
        argv += ["--heldout_seqlen", "64", "--population", "4", "--budget", "4"]
        argv += ["--final-top", "0", "--out", str(out)]
        assert main(argv) == 0
        saved = json.loads((out / "settings.json").read_text())["settings"]["fitness"]
        assert saved["heldout_skip"] == want
        printed = " ".join("".join(capsys.readouterr()).split())
        summary = json.loads((out / "summary.json").read_text())
        if says[flag] is None:
            assert "--heldout-skip" not in printed and "heldout_skipped" not in summary
        else:
            assert says[flag] in printed, printed[-600:]
            skipped, total = summary["heldout_skipped"]
            assert total == 2 * 63 and (skipped > 0) == (flag == "e")
