"""The finals against a reference rule (Wanda by default): each final compared window by window
with the reference's own final on the same windows, and the answer a final only when it beats
the reference by ``margin`` paired standard errors. Pure functions first, then real searches on
``tiny``."""

from __future__ import annotations

import json
import math

import pytest

from pzshell.cli import main
from pzshell.lang import load_metric
from pzshell.lang.algebra import canonical
from pzshell.lang.tree import load_tree_file
from pzshell.search import Search, SearchError
from pzshell.search.events import CandidateDone
from pzshell.search.ranking import choose_best, paired_change, significantly_better
from pzshell.search.runlog import RunLog

from .test_search import settings


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PZSHELL_CACHE", str(tmp_path / "cache"))


# ---- the paired comparison -----------------------------------------------------------------------
def test_paired_change_is_the_mean_window_difference_and_its_standard_error():
    a, b = [2.0, 2.5, 3.0, 4.0], [2.1, 2.7, 3.1, 4.2]
    vs = paired_change(a, b)
    d = [-0.1, -0.2, -0.1, -0.2]
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    assert vs == {
        "change": round(math.exp(mean) - 1, 5),
        "se": round(sd / 2, 5),
        "windows": 4,
    }
    # the windows' own spread (2.0 .. 4.2) does not enter: only the differences do
    assert vs["se"] < 0.05 < (max(a) - min(a)) / 2
    assert paired_change(a, b[:3]) is None  # not the same windows
    assert paired_change([2.0], [2.1]) is None  # one window: no standard error
    assert paired_change(None, b) is None and paired_change(a, []) is None


def test_significance_needs_the_margin_in_standard_errors():
    better = {"change": math.exp(-0.05) - 1, "se": 0.02, "windows": 8}  # 2.5 SE better
    assert significantly_better(better, 2.0)
    assert not significantly_better(better, 3.0)
    assert significantly_better(better, 0.0)
    worse = {"change": 0.01, "se": 0.001, "windows": 8}
    assert not significantly_better(worse, 0.0)  # worse is never better, at any margin
    assert not significantly_better(None, 0.0)


def _final(formula, fitness, nll, **kw):
    return {
        "formula": formula,
        "canonical": canonical(load_metric(formula)).key,
        "fitness": fitness,
        "settings": {"50%": {"final": fitness, "window_nll": nll}},
        **kw,
    }


REF = _final("W * sqrt(X)", 60.0, [4.0, 4.2, 4.1, 4.3])


def test_a_final_that_beats_the_reference_clearly_is_the_answer():
    clear = _final("W * X", 55.0, [3.9, 4.1, 4.0, 4.2])  # 0.1 better on every window
    noisy = _final("W * G", 57.0, [3.5, 4.6, 3.8, 4.4])
    best, verdict = choose_best([noisy, clear], REF, ["50%"], 2.0)
    assert best is clear  # the better-looking one is noise; the consistent one wins
    assert noisy["vs_reference"]["se"] > clear["vs_reference"]["se"] == 0
    assert "W * X" not in verdict and "-9.5% ± 0.0%" in verdict and "4 windows" in verdict


def test_no_final_better_by_the_margin_leaves_the_reference_as_the_answer():
    noisy = _final("W * G", 57.0, [3.5, 4.6, 3.8, 4.4])
    best, verdict = choose_best([noisy], REF, ["50%"], 2.0)
    assert best is REF
    assert verdict.startswith("no final beats the reference W * sqrt(X) by 2 standard errors")
    assert "W * G" in verdict and "is the answer" in verdict
    # with no margin at all, any improvement counts
    best, _ = choose_best([noisy], REF, ["50%"], 0.0)
    assert best is noisy


def test_without_a_usable_reference_the_best_final_is_the_answer():
    top = _final("W * X", 55.0, [3.9, 4.1, 4.0, 4.2])
    assert choose_best([top], None, ["50%"], 2.0) == (top, "")
    failed = dict(REF, fitness=None, reason="crash: boom")
    best, verdict = choose_best([top], failed, ["50%"], 2.0)
    assert best is top and "crash: boom" in verdict
    old = dict(REF, settings={"50%": {"final": 60.0}})  # logged before per-window values
    best, verdict = choose_best([top], old, ["50%"], 2.0)
    assert best is top and "no per-window NLL" in verdict


def test_the_reference_as_the_best_final_is_itself():
    worse = _final("W * X", 65.0, [4.1, 4.3, 4.2, 4.4])
    best, verdict = choose_best([REF, worse], REF, ["50%"], 2.0)
    assert best is REF and "itself" in verdict


def test_several_settings_are_compared_over_all_their_windows():
    ref = dict(REF, settings={"a": {"window_nll": [4.0, 4.2]}, "b": {"window_nll": [5.0, 5.1]}})
    f = dict(
        _final("W * X", 55.0, []),
        settings={"a": {"window_nll": [3.9, 4.1]}, "b": {"window_nll": [4.9, 5.0]}},
    )
    best, _ = choose_best([f], ref, ["a", "b"], 2.0)
    assert best is f and f["vs_reference"]["windows"] == 4


# ---- on tiny -----------------------------------------------------------------------------------
def _logged_finals(out):
    return [r for r in RunLog(out).read()[0] if r["stage"] == "final"]


def test_a_search_judges_its_finals_against_wanda_and_keeps_it_without_evidence(tmp_path):
    """With an unreachable margin the reference is the answer: best.json, the result and the
    summary say so; every final carries its paired comparison."""
    out = tmp_path / "r"
    fin = Search(settings(margin=1e9), out, threads=1).run()
    logged = _logged_finals(out)
    (ref,) = [r for r in logged if r.get("reference")] or [
        r for r in logged if r["formula"] == "W * sqrt(X)"
    ]
    for r in logged:  # every final has each window's NLL on the same 2 windows
        (per,) = r["settings"].values()
        assert len(per["window_nll"]) == r["final_tokens"] // 64 == 8
    assert fin.best_formula == "W * sqrt(X)" and fin.best_fitness == ref["fitness"]
    assert "W * sqrt(X)" in fin.verdict
    best = load_tree_file(out / "best.json")
    assert canonical(best).key == canonical(load_metric("W*sqrt(X)")).key
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"] == "W * sqrt(X)" and summary["verdict"] == fin.verdict
    assert summary["reference"]["best_is_reference"] is True
    assert summary["reference"]["final"]["canonical"] == ref["canonical"]
    others = [f for f in summary["finals"] if f["canonical"] != ref["canonical"]]
    assert others and all(f["vs_reference"]["windows"] == 8 for f in others)


def test_a_final_far_better_than_the_reference_is_the_answer(tmp_path):
    # neg(W) prunes the largest weights (on tiny's random weights that costs little, but it
    # costs): with no margin, a final better on average is the answer
    out = tmp_path / "r"
    fin = Search(settings(reference="neg(W)", margin=0.0), out, threads=1).run()
    (ref,) = [r for r in _logged_finals(out) if r.get("reference")]
    assert ref["formula"] == "-W" and ref["fitness"] > fin.best_fitness
    assert fin.best_formula == fin.finals[0]["formula"] and "-W" in fin.verdict
    assert fin.finals[0]["vs_reference"]["change"] < 0
    assert "at least 0 standard errors better" in fin.verdict


def test_no_reference_gives_the_best_final_without_a_comparison(tmp_path):
    out = tmp_path / "r"
    fin = Search(settings(reference=None), out, threads=1).run()
    assert not any(r.get("reference") for r in _logged_finals(out))
    assert fin.best_formula == fin.finals[0]["formula"] and fin.verdict == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference"] is None and summary["verdict"] == ""


def test_a_finished_run_resumed_with_another_reference_prunes_only_that_one(tmp_path):
    out = tmp_path / "r"
    Search(settings(), out, threads=1).run()
    before = {r["canonical"] for r in _logged_finals(out)}
    events = []
    s = settings(reference="neg(W)")
    fin = Search(s, out, threads=1, resume=True, on_event=events.append).run()
    done = [e.record for e in events if isinstance(e, CandidateDone)]
    assert [r["formula"] for r in done] == ["-W"] and done[0]["reference"]
    assert {r["canonical"] for r in _logged_finals(out)} == before | {done[0]["canonical"]}
    assert "-W" in fin.verdict and not fin.already_finished
    assert Search(s, out, threads=1, resume=True).run().already_finished


def test_bad_reference_settings_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(SearchError, match=r"--reference 'W \*\* \(': "):
        Search(settings(reference="W ** ("), tmp_path / "a")
    with pytest.raises(SearchError, match="--margin is a number of standard errors"):
        Search(settings(margin=-1.0), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_reference_none_and_margin(tmp_path, capsys):
    out = tmp_path / "c"
    args = ["search", "--model", "tiny", "--nsamples", "4", "--grad_samples", "2", "--seqlen",
            "64", "--heldout_windows", "2", "--heldout_seqlen", "64", "--population", "6",
            "--budget", "8", "--batch", "4", "--final-top", "1", "--workers", "1", "--no-cache",
            "--reference", "none", "--margin", "3", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    saved = json.loads((out / "settings.json").read_text())["settings"]
    assert saved["reference"] is None and saved["margin"] == 3.0
    assert not any(r.get("reference") for r in _logged_finals(out))


# ---- the fitness plot --------------------------------------------------------------------------
def test_the_plot_shows_the_range_where_the_search_moves_with_the_reference_line(tmp_path):
    from PIL import Image

    from pzshell.search.plot import plot_history, y_range

    good = [200.0 - i for i in range(40)]  # 161 .. 200
    values = good + [1e12, 5e9, 3e4]  # a few degenerate rules
    low, top, log = y_range(values, reference=178.0)
    assert low < 161 and 200 <= top < 3e4 and not log  # the outliers are left above the plot
    assert y_range(values, reference=500.0)[1] == pytest.approx(525.0)  # the reference shows
    assert y_range([10.0, 11.0, 5000.0, 6000.0])[2]  # spanning decades: a log scale
    assert y_range([]) is None
    history = [
        {"id": i, "stage": "full", "fitness": v, "cached": False} for i, v in enumerate(values)
    ]
    path = plot_history(history, tmp_path / "f.png", title="t", reference=("Wanda", 178.0))
    with Image.open(path) as im:
        assert im.size[0] > 500 and im.size[1] > 300
