"""Evolve: start, watch candidates and the hall of fame, pause / resume, inject, stop, open a
candidate in the editor, continue the last search."""

from __future__ import annotations

import pytest

from pzshell.search import events as se
from pzshell.tui import messages as m
from pzshell.tui.session import SearchState
from pzshell.tui.widgets.evolve_panel import EvolvePanel, FormulaTable
from pzshell.tui.widgets.fitness_chart import FitnessChart
from pzshell.worker import protocol as p

from .conftest import static_text, wait_for, worker_events

pytestmark = pytest.mark.asyncio


async def test_search_start_pause_resume_inject_stop(make_app, fake):
    seen: list = []
    app = make_app(formula="W*sqrt(X)+G")
    async with app.run_test(message_hook=seen.append) as pilot:
        await wait_for(pilot, lambda: app.device != "starting …", what="the worker")
        await pilot.press("f5")
        await wait_for(pilot, lambda: app.focused is app.query_one("#candidates"), what="focus")
        await pilot.press("s")
        await wait_for(pilot, lambda: app.search_state is SearchState.RUNNING, what="the search")
        start = next(j for j in fake.jobs if isinstance(j, p.StartSearch))
        assert not start.resume and start.settings.fitness.model == "tiny"
        assert start.out_dir.startswith(str(app.store.searches_dir))
        assert app.store.last_search == {"dir": start.out_dir, "status": "running"}
        await wait_for(
            pilot,
            lambda: app.query_one("#candidates", FormulaTable).row_count == 3,
            what="three candidates",
        )
        search_events = worker_events(seen, object)
        started_or_progress = (se.SearchStarted, se.SearchProgress)
        assert isinstance(
            next(x for x in search_events if isinstance(x, started_or_progress)), se.SearchStarted
        )
        assert worker_events(seen, se.CandidateDone)
        assert len(app.query_one(FitnessChart).points) == 3
        assert app.query_one("#hall-of-fame", FormulaTable).row_count == 1
        assert "3/24 evaluations" in static_text(app, "#search-status")

        cands = app.query_one("#candidates")
        cands.focus()
        await wait_for(pilot, lambda: app.focused is cands, what="focus on the candidates")
        await pilot.press("p")
        await wait_for(pilot, lambda: app.search_state is SearchState.PAUSED, what="the pause")
        assert str(app.query_one("#search-pause").label) == "Resume"
        cands.focus()
        await wait_for(pilot, lambda: app.focused is cands, what="focus on the candidates")
        await pilot.press("p")
        await wait_for(pilot, lambda: app.search_state is SearchState.RUNNING, what="the resume")
        actions = [j.action for j in fake.jobs if isinstance(j, p.ControlSearch)]
        assert actions == ["pause", "resume"]

        await pilot.press("ctrl+e")  # the editor's formula into the population
        await wait_for(pilot, lambda: fake.injected == ["W*sqrt(X)+G"], what="the injection")
        await wait_for(
            pilot,
            lambda: app.query_one("#candidates", FormulaTable).row_count == 4,
            what="the injected candidate",
        )

        assert not any(isinstance(x, m.OpenFormula) for x in seen), "nothing opened yet"
        cands.focus()
        await wait_for(pilot, lambda: app.focused is cands, what="focus on the candidates")
        await pilot.press("x")
        await wait_for(pilot, lambda: app.search_state is SearchState.STOPPED, what="the stop")
        assert app.store.last_search == {"dir": start.out_dir, "status": "stopped"}
        assert "resumable" in static_text(app, "#search-status")

        # open a candidate in the editor (Enter on its row)
        table = app.query_one("#candidates", FormulaTable)
        table.focus()
        table.move_cursor(row=1)
        await pilot.press("enter")
        await pilot.pause()
        assert app.editor.text == "W*sqrt(X)"
        await wait_for(
            pilot, lambda: app.query_one("#tabs").active == "metric", what="the metric tab"
        )

        # continue the stopped search: same directory, resume=True
        await pilot.press("f5")
        await wait_for(pilot, lambda: app.focused is app.query_one("#candidates"), what="focus")
        await pilot.press("c")
        await wait_for(
            pilot, lambda: app.search_state is SearchState.RUNNING, what="the continued search"
        )
        again = [j for j in fake.jobs if isinstance(j, p.StartSearch)][-1]
        assert again.resume and again.out_dir == start.out_dir and again.settings is None


async def test_inject_without_a_search_says_so(make_app, fake):
    app = make_app(formula="W")
    async with app.run_test(notifications=True) as pilot:
        await pilot.press("ctrl+e")
        await pilot.pause()
        assert any("no search is running" in n.message for n in app._notifications)
        assert not any(isinstance(j, p.ControlSearch) for j in fake.jobs)


async def test_panel_buttons_follow_the_state(make_app):
    app = make_app()
    async with app.run_test():
        panel = app.query_one(EvolvePanel)
        assert not panel.query_one("#search-start").disabled
        assert panel.query_one("#search-stop").disabled
        panel.set_state(SearchState.RUNNING)
        assert panel.query_one("#search-start").disabled
        assert not panel.query_one("#search-stop").disabled
        assert not panel.query_one("#search-inject").disabled
