"""The app's plain-data parts: store, run queue, CLI entry, chart, the domain/UI boundary."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from pzshell.cli import _default_to_tui, build_parser
from pzshell.cli.tui_cmd import settings_from_args
from pzshell.tui.runs import QueuedRun, RunQueue, RunStatus
from pzshell.tui.store import AppSettings, Store, matches_reference, result_row
from pzshell.tui.widgets.fitness_chart import render_chart
from pzshell.tui.widgets.results_table import type_label
from pzshell.tui.widgets.run_queue import result_summary
from pzshell.worker import describe_exit
from pzshell.worker.protocol import RunSettings

from .fake_worker import fake_results


def test_domain_never_imports_textual():
    code = (
        "import sys\n"
        "import pzshell.lang, pzshell.lang.algebra, pzshell.engine.prune, pzshell.search, "
        "pzshell.jobs, pzshell.worker, pzshell.worker.process\n"
        "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.')"
        " or m.startswith('pzshell.tui'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["tui"]),
        (
            ["--model", "tiny", "--sparsity_ratio", "0.5"],
            ["tui", "--model", "tiny", "--sparsity_ratio", "0.5"],
        ),
        (["--help"], ["--help"]),
        (["--version"], ["--version"]),
        (["parse", "W"], ["parse", "W"]),
        (["prune", "--model", "tiny"], ["prune", "--model", "tiny"]),
    ],
)
def test_plain_pzshell_opens_the_app(argv, expected):
    assert _default_to_tui(argv) == expected


def test_cli_flags_become_the_starting_settings():
    args = build_parser().parse_args(
        _default_to_tui(["--model", "tiny", "--sparsity_ratio", "0.6", "--eval-windows", "3"])
    )
    assert args.command == "tui"
    s = settings_from_args(args, AppSettings())
    assert (s.run.model, s.run.sparsity_ratio, s.run.eval_windows) == ("tiny", 0.6, 3)
    assert s.run.nsamples == RunSettings().nsamples  # not given: kept


def test_tui_needs_a_terminal(capsys):
    from pzshell.cli import main

    assert main(["tui", "--model", "tiny"]) == 2
    assert "interactive terminal" in capsys.readouterr().err


def test_store_round_trip_and_references(tmp_path, monkeypatch):
    monkeypatch.setenv("PZSHELL_HOME", str(tmp_path / "h"))
    store = Store()
    assert store.home == tmp_path / "h"
    s = RunSettings(model="tiny")
    assert not store.has_reference("dense", s)
    store.add_result(result_row("dense", None, s, fake_results("dense", s, 10.0)))
    store.add_result(result_row("wanda", None, s, fake_results("wanda", s, 12.0)))
    assert store.has_reference("dense", s)
    assert store.has_reference("dense", RunSettings(model="tiny", sparsity_ratio=0.7))
    assert store.has_reference("wanda", s)
    assert not store.has_reference("wanda", RunSettings(model="tiny", sparsity_ratio=0.7))
    assert not store.has_reference("dense", RunSettings(model="tiny", nsamples=3))
    refs = store.references_for(result_row("metric", "W", s, fake_results("metric", s, 11.0)))
    assert {k: r["ppl"] for k, r in refs.items()} == {"dense": 10.0, "wanda": 12.0}
    other = RunSettings(model="tiny", sparsity_ratio=0.7)
    assert list(
        store.references_for(result_row("metric", "W", other, fake_results("metric", other, 11.0)))
    ) == ["dense"]
    settings = AppSettings(run=s)
    store.save_settings(settings)
    store.set_last_search("/x", "stopped")
    again = Store()
    assert len(again.results) == 2 and again.load_settings().run.model == "tiny"
    assert again.last_search == {"dir": "/x", "status": "stopped"}
    again.remove_result(again.results[0]["id"])
    assert len(Store().results) == 1
    # a damaged file costs nothing but its content
    (tmp_path / "h" / "results.json").write_text("{not json")
    assert Store().results == []
    assert json.loads((tmp_path / "h" / "state.json").read_text())["last_search"]["dir"] == "/x"


def test_settings_from_old_or_damaged_state():
    assert AppSettings.from_dict({"run": {"model": "tiny", "unknown": 1}}).run.model == "tiny"
    bad = AppSettings.from_dict({"run": {"nsamples": "x", "model": 3, "sparsity_ratio": 0.7}})
    assert (bad.run.nsamples, bad.run.model, bad.run.sparsity_ratio) == (128, "smollm2", 0.7)
    assert AppSettings.from_dict({"run": {"eval_windows": 4}}).run.eval_windows == 4
    search = AppSettings().search_settings()
    search.validate()
    assert search.fitness.model == RunSettings().model


def test_run_queue_sends_one_at_a_time():
    q = RunQueue()
    s = RunSettings()
    a = q.add(QueuedRun("metric", "W", s))
    b = q.add(QueuedRun("dense", None, s))
    assert q.next_to_send() is a
    a.status = RunStatus.SENT
    assert q.next_to_send() is None and q.active is a
    assert q.pending("dense", s) and not q.pending("wanda", s)
    q.remove(a.id)
    assert q.next_to_send() is b
    assert b.title == "(dense)" and b.reference and a.request().formula == "W"


def test_one_rule_says_which_reference_row_matches_a_run():
    s = RunSettings(model="tiny")
    dense = result_row("dense", None, s, fake_results("dense", s, 10.0))
    wanda = result_row("wanda", None, s, fake_results("wanda", s, 12.0))
    metric = result_row("metric", "W", s, fake_results("metric", s, 11.0))
    other_sparsity = RunSettings(model="tiny", sparsity_ratio=0.7, sparsity_type="2:4")
    other_data = RunSettings(model="tiny", nsamples=3)
    # dense: the same model, data and evaluation, whatever the sparsity
    for run in (
        s,
        other_sparsity,
        metric,
        result_row("metric", "W", other_sparsity, fake_results("metric", other_sparsity, 11.0)),
    ):
        assert matches_reference(dense, "dense", run)
    assert not matches_reference(dense, "dense", other_data)
    # Wanda: also the same sparsity
    assert matches_reference(wanda, "wanda", s) and matches_reference(wanda, "wanda", metric)
    assert not matches_reference(wanda, "wanda", other_sparsity)
    assert not matches_reference(wanda, "wanda", other_data)
    # a row is a reference only of its own kind; queued runs' settings match the same way
    assert not matches_reference(wanda, "dense", s) and not matches_reference(metric, "wanda", s)
    assert matches_reference(s, "wanda", metric) and not matches_reference(
        other_sparsity, "wanda", s
    )
    assert matches_reference(other_sparsity, "dense", s)
    # a row read back from results.json (lists, not tuples) still matches
    assert matches_reference(json.loads(json.dumps(wanda)), "wanda", s)
    # refitted runs: the dense row still, Wanda only refitted the same way
    fitted = replace(s, refit=30)
    assert fitted.label() == "50% unstructured + refit" and s.label() == "50% unstructured"
    wanda_fit = result_row("wanda", None, fitted, fake_results("wanda", fitted, 9.0))
    assert wanda_fit["refit"] == 30 and wanda["refit"] == 0
    assert matches_reference(dense, "dense", fitted)
    assert not matches_reference(wanda, "wanda", fitted) and matches_reference(
        wanda_fit, "wanda", fitted
    )
    assert not matches_reference(wanda_fit, "wanda", s)
    assert type_label(wanda_fit) == "unstructured + refit" and type_label(wanda) == "unstructured"
    assert "50% unstructured + refit" in result_summary(wanda_fit, {}).plain
    assert matches_reference(json.loads(json.dumps(wanda_fit)), "wanda", fitted)
    # runs with a refined mask: Wanda only refined the same way; labels say how
    swapped = replace(fitted, refine="swaps")
    assert swapped.label() == "50% unstructured + swaps + refit"
    wanda_swap = result_row("wanda", None, swapped, fake_results("wanda", swapped, 8.0))
    assert wanda_swap["refine"] == "swaps" and wanda_fit["refine"] == "none"
    assert matches_reference(wanda_swap, "wanda", swapped)
    assert not matches_reference(wanda_fit, "wanda", swapped)
    assert not matches_reference(wanda_swap, "wanda", fitted)
    assert matches_reference(dense, "dense", swapped)
    assert type_label(wanda_swap) == "unstructured + swaps + refit"
    assert "50% unstructured + swaps + refit" in result_summary(wanda_swap, {}).plain
    # the store, the queue and the summary all ask it
    q = RunQueue()
    q.add(QueuedRun("wanda", None, s))
    assert q.pending("wanda", s) and not q.pending("wanda", other_sparsity)
    assert not q.pending("dense", s)


def test_exit_codes_in_words():
    assert "out of memory" in describe_exit(-9)
    assert "SIGSEGV" in describe_exit(-11)
    assert "exit status 3" in describe_exit(3)


def test_chart_renders_points_and_best_line():
    text = render_chart([(1, 80.0), (2, 50.0), (3, 60.0), (4, float("inf"))], 40, 8)
    lines = text.plain.splitlines()
    assert len(lines) == 8
    assert lines[0].strip().startswith("80") and lines[-2].strip().startswith("50")
    assert "evaluations" in lines[-1]
    assert any(ch != " " and 0x2800 <= ord(ch) <= 0x28FF for ch in text.plain)
    assert "waiting" in render_chart([], 40, 8).plain


def test_the_settings_screen_offers_every_refinement_the_engine_has():
    from pzshell.engine.refine import REFINEMENTS
    from pzshell.tui.screens.run_settings import RUN_FIELDS

    choices = next(kind for name, _, kind in RUN_FIELDS if name == "refine")
    assert choices == REFINEMENTS
