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
        status = static_text(app, "#search-status")
        assert "3/24 screened" in status and "full 0" in status and "mask 0" in status

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


# ---- the user review's rough edges -------------------------------------------------------------


async def _evolve_tab(pilot, app):
    await wait_for(pilot, lambda: app.device != "starting …", what="the worker")
    await pilot.press("f5")
    await wait_for(pilot, lambda: app.focused is app.query_one("#candidates"), what="focus")


# before: after Enter on the Continue button the focus was gone, s/p/x/c/i did nothing and left
# the footer until F5 was pressed again
async def test_keys_work_after_the_continue_button_and_on_the_tab_bar(make_app, fake):
    app = make_app()
    async with app.run_test() as pilot:
        await _evolve_tab(pilot, app)
        await pilot.press("s")
        await wait_for(pilot, lambda: app.search_state is SearchState.RUNNING, what="the search")
        await pilot.press("x")
        await wait_for(pilot, lambda: app.search_state is SearchState.STOPPED, what="the stop")
        app.query_one("#search-continue").focus()
        await pilot.pause()
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.search_state is SearchState.RUNNING, what="continued")
        await wait_for(pilot, lambda: app.focused is not None, what="a focus")
        assert app.focused is app.query_one("#candidates"), "the focus is visible, in the tab"
        assert {"s", "p", "x", "c"} <= set(app.active_bindings), "the footer keeps the keys"
        await pilot.press("p")
        await wait_for(pilot, lambda: app.search_state is SearchState.PAUSED, what="the pause")
        # the tab bar has the focus: the keys still work
        app.query_one("ContentTabs").focus()
        await pilot.pause()
        await pilot.press("p")
        await wait_for(pilot, lambda: app.search_state is SearchState.RUNNING, what="the resume")
        # and they are the Evolve tab's only: on the Library tab p does nothing
        await pilot.press("f6")
        await pilot.pause()
        n = len(fake.jobs)
        await pilot.press("p")
        await pilot.pause()
        assert len(fake.jobs) == n and app.search_state is SearchState.RUNNING


# before: Enter (on a focused Start button) started a new search and silently dropped the
# pointer to the resumable one
async def test_a_new_search_while_one_is_resumable_asks_first(make_app, fake):
    from pzshell.tui.screens.confirm import ConfirmScreen

    app = make_app()
    async with app.run_test() as pilot:
        await _evolve_tab(pilot, app)
        await pilot.press("s")
        await wait_for(pilot, lambda: app.search_state is SearchState.RUNNING, what="the search")
        await pilot.press("x")
        await wait_for(pilot, lambda: app.search_state is SearchState.STOPPED, what="the stop")
        old = dict(app.store.last_search)
        app.query_one("#search-start").focus()
        await pilot.pause()
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        assert old["dir"] in app.screen.question
        await pilot.press("n")
        await pilot.pause()
        assert app.store.last_search == old and app.search_state is SearchState.STOPPED
        assert len([j for j in fake.jobs if isinstance(j, p.StartSearch)]) == 1
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        await pilot.press("y")
        await wait_for(pilot, lambda: app.search_state is SearchState.RUNNING, what="new search")
        assert app.store.last_search["dir"] != old["dir"]


# before: c on a finished search silently re-ran only its final candidates
async def test_continue_on_a_finished_search_says_there_is_nothing_to_continue(make_app, fake):
    app = make_app()
    async with app.run_test(notifications=True) as pilot:
        await _evolve_tab(pilot, app)
        out = app.store.searches_dir / "done"
        out.mkdir(parents=True)
        app.store.set_last_search(str(out), "finished")
        await pilot.press("c")
        await pilot.pause()
        assert not any(isinstance(j, p.StartSearch) for j in fake.jobs)
        assert any("nothing to continue" in n.message for n in app._notifications)


# before: a continued search showed e.g. 54905.0/min: all its evaluations over the time since
# it was continued
async def test_a_continued_search_rates_only_its_new_evaluations(make_app):
    app = make_app()
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.device != "starting …", what="the worker")
        panel = app.query_one(EvolvePanel)
        now = [100.0]
        panel.clock = lambda: now[0]
        app.session.search_state = SearchState.STARTING
        ev = p.SearchEvent("s1", se.SearchStarted("/tmp/x", 2000, 1830))
        app.post_message(m.WorkerEvent(ev))
        await pilot.pause()
        for i in range(3):
            rec = {"id": 1830 + i, "formula": "W", "stage": "full", "fitness": 50.0, "seconds": 9}
            app.post_message(m.WorkerEvent(p.SearchEvent("s1", se.CandidateDone(rec))))
        now[0] += 60.0  # a minute after it was continued: 3 new evaluations
        prog = se.SearchProgress(1833, 2000, 0, 1833.0, 50.0, "W", [], False)
        app.post_message(m.WorkerEvent(p.SearchEvent("s1", prog)))
        await wait_for(pilot, lambda: "1833/2000" in static_text(app, "#search-status"))
        status = static_text(app, "#search-status")
        assert "3.0/min" in status and "1833.0/min" not in status


# before: the id column was 3 wide: ids from 1000 were cut
async def test_candidate_ids_are_not_truncated(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.device != "starting …", what="the worker")
        panel = app.query_one(EvolvePanel)
        panel.add_candidate({"id": 12345, "formula": "W", "stage": "full", "fitness": 5.0})
        await pilot.pause()
        table = app.query_one("#candidates", FormulaTable)
        assert table.columns["id"].get_render_width(table) >= len("12345") + 2
        assert str(table.columns["time"].label) == "time"


async def test_a_finished_search_shows_how_its_answer_compares_with_the_reference(make_app, fake):
    """The verdict of the finals against the reference rule (Wanda) is on the status lines."""
    app = make_app()
    async with app.run_test() as pilot:
        await _evolve_tab(pilot, app)
        verdict = (
            "no final beats the reference W * sqrt(X) by 2 standard errors (the best, W * X: "
            "-1.2% ± 1.0% on 8 windows); the reference W * sqrt(X) is the answer"
        )
        fin = se.SearchFinished("runs/x", "W * sqrt(X)", 60.5, 40, False, verdict=verdict)
        app.query_one(EvolvePanel).show_finished(SearchState.FINISHED, fin)
        await pilot.pause()
        status = static_text(app, "#search-status")
        assert "best 60.50" in status and "W * sqrt(X)" in status
        assert "no final beats the reference W * sqrt(X)" in status
        # the reference's own final is labelled as such in the candidates' table
        panel = app.query_one(EvolvePanel)
        panel.add_candidate(
            {"id": 1, "stage": "final", "reference": True, "fitness": 60.5, "seconds": 2.0,
             "formula": "W * sqrt(X)"}
        )  # fmt: skip
        table = app.query_one("#candidates", FormulaTable)
        assert table.get_row("c1-final")[1] == "reference"
