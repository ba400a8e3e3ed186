"""The GP search on `tiny`: completes, resumes exactly, never repeats a rule, caches, backends."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from pzshell.cli import main
from pzshell.search import FitnessSettings, Search, SearchError, SearchSettings
from pzshell.search.cache import FitnessCache
from pzshell.search.events import CandidateDone, SearchMessage, SearchProgress
from pzshell.search.runlog import RunLog

FIT = FitnessSettings(
    model="tiny",
    nsamples=4,
    grad_samples=2,
    seqlen=64,
    heldout_windows=2,
    heldout_seqlen=64,
    cheap_windows=1,
    cheap_seqlen=32,
)


def settings(**kw) -> SearchSettings:
    base = dict(fitness=FIT, population=8, budget=20, batch=4, seed=3, final_top=2)
    base.update(kw)
    base["fitness"] = dataclasses.replace(base["fitness"], seed=base["seed"])
    return SearchSettings(**base)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PZSHELL_CACHE", str(tmp_path / "cache"))


def trajectory(out) -> list[tuple]:
    recs, _ = RunLog(out).read()
    return sorted(
        (r["id"], r["canonical"], r["formula"], r["fitness"], r["stage"])
        for r in recs
        if r["stage"] != "final"
    )


def test_small_search_completes(tmp_path):
    events = []
    t = time.perf_counter()
    fin = Search(settings(), tmp_path / "run", threads=1, on_event=events.append).run()
    assert time.perf_counter() - t < 120
    assert fin.evaluations == 20 and not fin.stopped
    recs, warnings = RunLog(tmp_path / "run").read()
    assert not warnings
    for r in recs:
        for key in ("formula", "canonical", "fitness", "stage", "seconds", "worker"):
            assert key in r
    evaluated = [r for r in recs if r["stage"] not in ("final",) and not r["cached"]]
    keys = [r["canonical"] for r in evaluated]
    assert len(keys) == len(set(keys)) == 20  # never the same pruning rule twice
    finals = [r for r in recs if r["stage"] == "final" and not r.get("reference")]
    assert len(finals) == 2
    for f in ("best.json", "hall_of_fame.json", "fitness.png", "summary.json", "state.json"):
        assert (tmp_path / "run" / f).exists(), f
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert "data" in best
    assert any(isinstance(e, SearchProgress) for e in events)
    hof = json.loads((tmp_path / "run" / "hall_of_fame.json").read_text())
    sizes = [h["size"] for h in hof]
    fits = [h["fitness"] for h in hof]
    assert sizes == sorted(sizes) and fits == sorted(fits, reverse=True)  # a Pareto front
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["cheap_full_pairs"] >= 3 and -1 <= summary["cheap_full_spearman"] <= 1


def test_resume_after_interruption_reproduces_the_run(tmp_path):
    Search(settings(), tmp_path / "a", threads=1).run()
    kill_at = random.Random(7).randrange(3, 18)
    seen = []

    def killer(ev):
        if isinstance(ev, CandidateDone):
            seen.append(ev)
            if len(seen) == kill_at:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Search(settings(), tmp_path / "b", threads=1, on_event=killer).run()
    before = len(RunLog(tmp_path / "b").read()[0])
    assert before == kill_at
    Search(settings(), tmp_path / "b", threads=1, resume=True).run()
    assert trajectory(tmp_path / "a") == trajectory(tmp_path / "b")
    recs, _ = RunLog(tmp_path / "b").read()
    keys = [r["canonical"] for r in recs if r["stage"] != "final"]
    assert len(keys) == len(set(keys))  # nothing evaluated twice across the interruption


def test_resume_after_sigkill(tmp_path):
    out = tmp_path / "k"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "pzshell",
        "search",
        "--model",
        "tiny",
        "--nsamples",
        "4",
        "--grad_samples",
        "2",
        "--seqlen",
        "64",
        "--heldout_windows",
        "2",
        "--heldout_seqlen",
        "64",
        "--cheap_windows",
        "1",
        "--cheap_seqlen",
        "32",
        "--population",
        "8",
        "--budget",
        "20",
        "--batch",
        "4",
        "--seed",
        "3",
        "--final-top",
        "2",
        "--no-cache",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "candidates.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(log, "a") as f:
        f.write('{"truncated": ')  # a line cut off by the kill
    events = []
    Search(settings(), out, threads=1, resume=True, on_event=events.append).run()
    assert any(isinstance(e, SearchMessage) and "corrupt" in e.text for e in events)
    Search(settings(), tmp_path / "ref", threads=1).run()
    assert trajectory(out) == trajectory(tmp_path / "ref")


def test_cache_reused_across_runs(tmp_path):
    cache = FitnessCache(tmp_path / "fit.sqlite")
    first = Search(settings(budget=8, final_top=0), tmp_path / "one", threads=1, cache=cache).run()
    assert first.evaluations == 8
    recs2 = []

    def keep(ev):
        if isinstance(ev, CandidateDone):
            recs2.append(ev.record)

    Search(
        settings(budget=8, final_top=0), tmp_path / "two", threads=1, cache=cache, on_event=keep
    ).run()
    cached = [r for r in recs2 if r.get("cached")]
    assert len(cached) >= 8  # the whole initial population came from the cache
    assert all(r["worker"] == "cache" for r in cached)


def test_degenerate_candidate_is_scored_and_search_goes_on(tmp_path):
    Search(
        settings(budget=10, seed_formulas=("mms(X - X)", "log(W) - log(W)")),
        tmp_path / "d",
        threads=1,
    ).run()
    recs, _ = RunLog(tmp_path / "d").read()
    bad = [r for r in recs if r["stage"] == "degenerate"]
    assert bad and all(r["fitness"] is None and r["reason"] for r in bad)
    assert sum(1 for r in recs if r["stage"] == "full") >= 5


def test_inject_pause_stop(tmp_path):
    s = Search(settings(budget=40), tmp_path / "c", threads=1)
    injected = s.inject("W*X*X")
    done = []

    def on(ev):
        if isinstance(ev, CandidateDone):
            done.append(ev.record)
            if len(done) == 10:
                s.stop()

    s.on_event = on
    fin = s.run()
    assert fin.stopped
    assert any(r["origin"] == "injected" and r["formula"] == str(injected) for r in done)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(population=1), "population must be at least 2"),
        (dict(budget=4), "at least the population"),
        (dict(seed_formulas=("foo(W)",)), "unknown operator 'foo'"),
        (dict(ops="published", seed_formulas=("rown(W)",)), "--ops extended"),
        (dict(p_crossover=1.5), "p-crossover"),
    ],
)
def test_bad_settings(tmp_path, kw, match):
    with pytest.raises(SearchError, match=match):
        Search(settings(**kw), tmp_path / "x")


def test_resume_with_other_settings_is_refused(tmp_path):
    Search(settings(budget=8, final_top=0), tmp_path / "r", threads=1).run()
    with pytest.raises(SearchError, match="other settings"):
        Search(settings(budget=8, seed=99), tmp_path / "r", resume=True)
    with pytest.raises(SearchError, match="already holds a search"):
        Search(settings(budget=8), tmp_path / "r")


def test_cli_bad_input(tmp_path, capsys):
    assert main(["search", "--model", "tiny", "--population", "1", "--out", str(tmp_path)]) == 2
    assert "population must be at least 2" in capsys.readouterr().err
    assert main(["search", "--resume", str(tmp_path / "nothing")]) == 2


def test_process_backend_matches_in_process(tmp_path):
    Search(settings(budget=12), tmp_path / "inproc", threads=1).run()
    Search(settings(budget=12), tmp_path / "procs", backend="processes", workers=2, threads=1).run()
    assert trajectory(tmp_path / "inproc") == trajectory(tmp_path / "procs")
    workers = {r["worker"] for r in RunLog(tmp_path / "procs").read()[0]}
    assert len(workers) == 2


def test_ray_backend_matches_in_process(tmp_path):
    ray = pytest.importorskip("ray")
    Search(settings(budget=12), tmp_path / "inproc", threads=1).run()
    try:
        Search(settings(budget=12), tmp_path / "ray", backend="ray", workers=2, threads=1).run()
    finally:
        ray.shutdown()
    assert trajectory(tmp_path / "inproc") == trajectory(tmp_path / "ray")


def test_time_limit_still_runs_the_finals(tmp_path):
    fin = Search(
        settings(budget=1000, time_limit=1e-9, final_top=1), tmp_path / "t", threads=1
    ).run()
    assert not fin.stopped and len(fin.finals) == 1  # the first batch, then the final re-run
    assert fin.evaluations == 8


def test_rate_after_resume_counts_only_new_evaluations(tmp_path, monkeypatch):
    """A continued search's evaluations per minute are its own, not all past ones over the
    time since resuming (the review saw 54,905/min)."""
    import types

    from pzshell.search import evolution

    Search(settings(budget=16, final_top=0), tmp_path / "r", threads=1).run()
    calls = []

    def clock() -> float:  # the run's and the loop's start at 0, every later reading a minute on
        calls.append(None)
        return 0.0 if len(calls) <= 2 else 60.0

    monkeypatch.setattr(evolution, "time", types.SimpleNamespace(perf_counter=clock))
    seen: list[SearchProgress] = []
    Search(
        settings(budget=24, final_top=0),
        tmp_path / "r",
        threads=1,
        resume=True,
        on_event=lambda ev: seen.append(ev) if isinstance(ev, SearchProgress) else None,
    ).run()
    assert seen and seen[-1].evaluations == 24
    for ev in seen:  # one minute since the start: the rate is the count of new evaluations
        assert ev.evals_per_minute == pytest.approx(ev.evaluations - 16)


def test_cli_plain_progress_when_not_a_terminal(tmp_path):
    """Output to a file or pipe gets plain progress lines (a rich live display would print only
    its first frame there): the statistics step, the counters, the finals and the best formula."""
    cmd = [
        sys.executable, "-m", "pzshell", "search", "--model", "tiny", "--nsamples", "4",
        "--grad_samples", "2", "--seqlen", "64", "--heldout_windows", "2", "--heldout_seqlen",
        "64", "--population", "6", "--budget", "10", "--batch", "4", "--final-top", "1",
        "--final-windows", "3", "--no-cache", "--out", str(tmp_path / "p"),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any(x.startswith("statistics: loading tiny") for x in lines), done.stderr
    assert any(x.startswith("statistics: model loaded in") for x in lines), done.stderr
    counters = [x for x in lines if x.startswith("screened ")]
    assert counters and "/10" in counters[-1] and " best " in counters[-1], done.stderr
    assert any(x.startswith("finals: 1 layer-sequential prune") for x in lines), done.stderr
    # the result is the final's value, and says what it was measured on
    assert lines[-3].startswith("best: "), done.stderr
    assert "on 192 held-out tokens after a layer-sequential prune" in lines[-3], done.stderr
    # then how it compares with the reference (Wanda) on the finals' windows
    assert "W * sqrt(X)" in lines[-2] and "standard error" in lines[-2], done.stderr
    # and the prune that makes the masks it scored
    assert lines[-1].startswith("  prune with it: pzshell prune --model tiny --metric"), lines[-1]


def test_default_workers_are_two_processes_on_a_multicore_cpu(monkeypatch):
    from pzshell.search import backends

    monkeypatch.setattr(backends.os, "cpu_count", lambda: 2)
    assert backends.default_workers("cpu") == 2
    assert backends.default_workers("cuda") == backends.default_workers("cuda:1") == 1
    monkeypatch.setattr(backends.os, "cpu_count", lambda: 1)
    assert backends.default_workers("cpu") == 1
    monkeypatch.setattr(backends.os, "cpu_count", lambda: None)  # unknown: one
    assert backends.default_workers("cpu") == 1


def test_cli_search_without_workers_uses_the_default(tmp_path, monkeypatch):
    from pzshell.search import backends

    monkeypatch.setattr(backends.os, "cpu_count", lambda: 2)  # this machine's, whatever runs it
    out = tmp_path / "r"
    args = ["search", "--model", "tiny", "--budget", "4", "--population", "4", "--out", str(out)]
    assert main([*args, "--final-top", "0", "--calib", "builtin", "--no-cache"]) == 0
    options = json.loads((out / "settings.json").read_text())["options"]
    assert options["workers"] == 2 and options["backend"] == "processes"
    # every worker takes a task at once: the 4 screens went to both
    assert len({r["worker"] for r in RunLog(out).read()[0] if r["worker"].startswith("proc-")}) == 2
