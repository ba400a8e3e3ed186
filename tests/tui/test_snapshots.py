"""SVG snapshots of the main screens (pytest-textual-snapshot) with the fake worker: 80×24, the
smallest terminal the app supports, and one larger. Update with ``pytest --snapshot-update``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pzshell.tui.app import PzShellApp

from .conftest import static_text, tiny_settings, wait_for
from .fake_worker import FakeWorker

# A fixed data directory: the app shows its paths, and a snapshot must not depend on tmp names.
HOME = Path("/tmp/pzshell-snapshot-home")


@pytest.fixture
def app():
    shutil.rmtree(HOME, ignore_errors=True)
    yield PzShellApp(tiny_settings(), home=HOME, client=FakeWorker(), formula="")
    shutil.rmtree(HOME, ignore_errors=True)


async def _settle(pilot, app) -> None:
    await wait_for(pilot, lambda: app.device == "fake (no model)", what="the worker")
    app.query_one("#formula").cursor_blink = False  # a blinking cursor makes snapshots flaky
    await pilot.pause()
    app.clear_notifications()
    await pilot.pause()


async def _with_results(pilot, app, formula: str = "abs(W*W)*mms(G)") -> None:
    await wait_for(pilot, lambda: app.device == "fake (no model)", what="the worker")
    app.editor.set_formula(formula)
    await wait_for(
        pilot,
        lambda: (
            "same pruning rule" in static_text(app, "#analysis")
            or "canonical" in static_text(app, "#analysis")
        ),
        what="analysis",
    )
    app.action_run_formula()
    await wait_for(pilot, lambda: len(app.store.results) == 3, what="results")
    await _settle(pilot, app)


def test_metric_screen(snap_compare, app):
    async def run_before(pilot):
        await _with_results(pilot, app)

    assert snap_compare(app, run_before=run_before, terminal_size=(80, 24))


def test_metric_screen_parse_error(snap_compare, app):
    async def run_before(pilot):
        await wait_for(pilot, lambda: app.device == "fake (no model)", what="the worker")
        app.editor.set_formula("abs(W*W)*mms(G")
        await _settle(pilot, app)

    assert snap_compare(app, run_before=run_before, terminal_size=(80, 24))


def test_results_screen(snap_compare, app):
    async def run_before(pilot):
        await _with_results(pilot, app)
        app.editor.set_formula("W*sqrt(X)")
        app.action_run_formula()
        await wait_for(pilot, lambda: len(app.store.results) == 4, what="results")
        app.action_tab("results")
        await _settle(pilot, app)

    assert snap_compare(app, run_before=run_before, terminal_size=(80, 24))


def test_evolve_screen(snap_compare, app):
    async def run_before(pilot):
        await wait_for(pilot, lambda: app.device == "fake (no model)", what="the worker")
        app.action_tab("evolve")
        app._start_search(str(HOME / "searches" / "demo"), resume=False)
        await wait_for(pilot, lambda: app.query_one("#candidates").row_count == 3, what="cands")
        await _settle(pilot, app)

    assert snap_compare(app, run_before=run_before, terminal_size=(80, 24))


def test_library_screen(snap_compare, app):
    async def run_before(pilot):
        await wait_for(pilot, lambda: app.device == "fake (no model)", what="the worker")
        app.action_tab("library")
        await _settle(pilot, app)

    assert snap_compare(app, run_before=run_before, terminal_size=(80, 24))


def test_help_screen(snap_compare, app):
    async def run_before(pilot):
        await _settle(pilot, app)
        app.action_help()
        await pilot.pause()

    assert snap_compare(app, run_before=run_before, terminal_size=(80, 24))


def test_settings_screen(snap_compare, app):
    async def run_before(pilot):
        await _settle(pilot, app)
        app.action_settings()
        await pilot.pause()

    assert snap_compare(app, run_before=run_before, terminal_size=(80, 24))


def test_metric_screen_large(snap_compare, app):
    async def run_before(pilot):
        await _with_results(pilot, app, "zsn(W*sqrt(X)) + mms(G)")

    assert snap_compare(app, run_before=run_before, terminal_size=(120, 36))
