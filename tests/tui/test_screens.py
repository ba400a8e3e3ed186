"""Library load/save, settings, help, quit confirmation."""

from __future__ import annotations

import json

import pytest
from textual.widgets import Input, OptionList, Select

from pzshell.lang import load_tree_file, to_infix
from pzshell.tui.screens.confirm import ConfirmScreen
from pzshell.tui.screens.help import HelpScreen
from pzshell.tui.screens.run_settings import SettingsScreen
from pzshell.tui.screens.save_tree import SaveTreeScreen
from pzshell.tui.session import SearchState
from pzshell.tui.widgets.library_panel import LibraryPanel

from .conftest import wait_for
from .fake_worker import FakeWorker

pytestmark = pytest.mark.asyncio


async def test_library_lists_loads_saves_and_deletes(make_app):
    app = make_app(formula="abs(W*W)*mms(G)+X")
    async with app.run_test() as pilot:
        await pilot.pause()
        await pilot.press("f6")
        lib = app.query_one(LibraryPanel)
        names = [e.name for e in lib.entries]
        assert {"magnitude", "wanda", "pruner_zero", "ria"} <= set(names)
        await wait_for(pilot, lambda: app.focused is app.query_one("#tree-list"), what="focus")
        # load wanda: highlight it and press Enter
        ol = app.query_one("#tree-list", OptionList)
        ol.highlighted = ol.get_option_index("shipped:wanda")
        await pilot.press("enter")
        await pilot.pause()
        assert app.editor.text == "W * sqrt(X)"
        await wait_for(
            pilot, lambda: app.query_one("#tabs").active == "metric", what="the metric tab"
        )

        # save the editor's formula as Pruner-Zero JSON in the user directory
        app.editor.set_formula("abs(W*W)*mms(G)+X")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, SaveTreeScreen), what="the prompt")
        app.screen.query_one(Input).value = "bad name"
        await pilot.press("enter")  # a space is not allowed: the prompt stays and says why
        assert isinstance(app.screen, SaveTreeScreen)
        assert "letters, digits" in str(app.screen.query_one("#save-error").content)
        app.screen.query_one(Input).value = "my_metric"
        await pilot.press("enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, SaveTreeScreen), what="save")
        path = app.store.trees_dir / "my_metric.json"
        assert path.exists()
        obj = json.loads(path.read_text())
        assert obj["data"] == "add" and obj["right"] == {"data": "X"}  # Pruner-Zero format
        assert to_infix(load_tree_file(path)) == "abs(W * W) * mms(G) + X"
        assert "my_metric" in [e.name for e in lib.entries if e.origin == "user"]

        # delete it again (only user trees can be deleted)
        await pilot.press("f6")
        await wait_for(pilot, lambda: app.focused is app.query_one("#tree-list"), what="focus")
        ol.highlighted = ol.get_option_index("user:my_metric")
        await pilot.press("d")  # it asks first: a file deleted is gone
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        assert "my_metric" in app.screen.question
        await pilot.press("n")
        await pilot.pause()
        assert path.exists(), "no: the tree stays"
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        await pilot.press("y")
        await pilot.pause()
        assert not path.exists()
        ol.highlighted = ol.get_option_index("shipped:wanda")
        await pilot.press("d")
        assert (lib.entries[0].path.parent / "wanda.json").exists()


async def _refused(pilot, app, screen) -> str:
    """Apply the settings screen's values; it must stay open: its error text."""
    await pilot.press("ctrl+s")
    await pilot.pause()
    assert isinstance(app.screen, SettingsScreen)
    return str(screen.query_one("#settings-errors").content)


async def test_settings_screen_applies_and_persists(make_app, fake, tmp_path):
    home = tmp_path / "settings-home"
    app = make_app(home=home)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), what="settings")
        screen = app.screen
        screen.query_one("#run-sparsity_ratio", Input).value = "1.5"
        errors = await _refused(pilot, app, screen)  # invalid: stays, says why
        assert "sparsity ratio must be in [0, 1)" in errors
        # fields that do not parse say which field and what it expected
        screen.query_one("#run-sparsity_ratio", Input).value = "0.6"
        screen.query_one("#search-population", Input).value = "eight"
        screen.query_one("#search-workers", Input).value = "0"
        errors = await _refused(pilot, app, screen)
        assert "population: expected a whole number, got 'eight'" in errors
        assert "evaluator processes must be at least 1 (or blank), got 0" in errors
        screen.query_one("#search-population", Input).value = "8"
        screen.query_one("#search-workers", Input).value = "1"
        screen.query_one("#search-final_windows", Input).value = "0"  # parses, cannot run
        errors = await _refused(pilot, app, screen)
        assert "final-windows must be at least 1, got 0" in errors
        screen.query_one("#search-final_windows", Input).value = "4"
        # the finals' reference rule: a formula the search can parse, and a margin >= 0
        screen.query_one("#search-reference", Input).value = "W * ("
        screen.query_one("#search-margin", Input).value = "-1"
        errors = await _refused(pilot, app, screen)
        assert "--reference 'W * ('" in errors
        screen.query_one("#search-reference", Input).value = "W * X"
        errors = await _refused(pilot, app, screen)
        assert "--margin is a number of standard errors (0 or more), got -1.0" in errors
        screen.query_one("#search-margin", Input).value = "3"
        screen.query_one("#run-refit", Input).value = "-3"
        errors = await _refused(pilot, app, screen)
        assert "least-squares refit must not be negative, got -3" in errors
        screen.query_one("#run-refit", Input).value = "30"
        # least-squares swaps try every pattern of a group: 8:16 is refused, 2:4 taken
        screen.query_one("#run-refine", Select).value = "swaps"
        screen.query_one("#run-sparsity_type", Input).value = "8:16"
        errors = await _refused(pilot, app, screen)
        assert "8:16 has 12,870" in errors
        screen.query_one("#run-sparsity_type", Input).value = "2:4"
        screen.query_one("#run-eval_windows", Input).value = ""
        screen.query_one("#search-budget", Input).value = "40"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, SettingsScreen), what="apply")
        r = app.settings.run
        assert (r.sparsity_ratio, r.sparsity_type, r.eval_windows) == (0.6, "2:4", None)
        assert app.settings.search.budget == 40 and app.settings.search.workers == 1
        assert app.settings.search_settings().fitness.final_windows == 4
        assert (app.settings.search_settings().reference, app.settings.search.margin) == (
            "W * X",
            3.0,
        )
        assert "60% 2:4 + swaps + refit" in app.sub_title and r.refit == 30
        assert r.refine == "swaps"
        # runs now use them
        app.editor.set_formula("W")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: fake.jobs, what="the run")
        assert fake.jobs[0].settings.sparsity_type == "2:4"
        assert fake.jobs[0].settings.refit == 30 and fake.jobs[0].settings.refine == "swaps"
    # and the next session starts with them
    app2 = make_app(home=home, client=FakeWorker())
    app2.settings = app2.store.load_settings()
    assert app2.settings.run.sparsity_ratio == 0.6 and app2.settings.run.refit == 30
    assert app2.settings.run.refine == "swaps"
    assert app2.settings.search.budget == 40 and app2.settings.search.workers == 1


async def test_settings_escape_changes_nothing(make_app):
    app = make_app()
    async with app.run_test() as pilot:
        before = app.settings
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), what="settings")
        app.screen.query_one("#run-model", Input).value = "other"
        await pilot.press("escape")
        await pilot.pause()
        assert app.settings is before


async def test_help_screen_opens_and_closes(make_app):
    app = make_app()
    async with app.run_test() as pilot:
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        # app-wide keys do not leak through the modal
        await pilot.press("ctrl+r")
        assert len(app.queue) == 0
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


async def test_quit_when_idle_exits_at_once(make_app, fake):
    app = make_app()
    async with app.run_test() as pilot:
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: not app.is_running, what="the exit")
    assert not fake.alive


async def test_quit_while_work_runs_asks_first_and_leaves_the_search_resumable(make_app):
    fake = FakeWorker(hold=True)
    app = make_app(formula="W", client=fake)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.device != "starting …", what="the worker")
        await pilot.press("ctrl+r")
        app.action_search_start()
        await wait_for(pilot, lambda: app.search_state is SearchState.RUNNING, what="the search")
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        question = app.screen.question
        assert "a run of W is in progress" in question and "search is running" in question
        await pilot.press("n")
        await pilot.pause()
        assert app.is_running and not isinstance(app.screen, ConfirmScreen)
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        await pilot.press("y")
        await wait_for(pilot, lambda: not app.is_running, what="the exit")
    assert app.store.last_search["status"] == "stopped"
    assert not fake.alive


# ---- the user review's rough edges -------------------------------------------------------------
# before: `d` deleted a user tree at once (covered above); Delete removed a results row silently


async def test_delete_in_results_says_so_and_u_undoes_it(make_app):
    app = make_app(formula="W")
    async with app.run_test(notifications=True) as pilot:
        await wait_for(pilot, lambda: app.device != "starting …", what="the worker")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: len(app.store.results) == 3, what="results")
        before = [r["id"] for r in app.store.results]
        await pilot.press("f4")
        table = app.query_one("#results-table")
        await wait_for(pilot, lambda: app.focused is table, what="focus")
        gone = table.selected()["id"]
        await pilot.press("delete")
        await pilot.pause()
        assert gone not in [r["id"] for r in app.store.results]
        assert gone not in table.rows_by_key
        assert any("press u to undo" in n.message for n in app._notifications)
        await pilot.press("u")
        await pilot.pause()
        assert [r["id"] for r in app.store.results] == before  # back in its place, on disk too
        assert gone in table.rows_by_key
        assert [r["id"] for r in json.loads(app.store.results_path.read_text())] == before


# before: two fields were both labelled "window length"
async def test_settings_labels_are_unique(make_app):
    from pzshell.tui.screens.run_settings import RUN_FIELDS, SEARCH_FIELDS

    labels = [label for _, label, _ in (*RUN_FIELDS, *SEARCH_FIELDS)]
    assert len(labels) == len(set(labels))
    assert "calibration window length" in labels and "evaluation window length" in labels


# before: quitting waited for the worker with the UI frozen ("stopping the worker …")
async def test_quit_leaves_the_ui_before_the_worker_is_closed(make_app, fake):
    app = make_app()
    closed_while_running = []
    real_close = fake.close

    def close(timeout: float = 10.0) -> None:
        closed_while_running.append(app._exit)  # has the UI been told to exit already?
        real_close(timeout)

    fake.close = close
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.device != "starting …", what="the worker")
        app.shutdown()
        assert app._exit, "the UI exits at once, without waiting for the worker"
        await wait_for(pilot, lambda: not app.is_running, what="the exit")
    assert not fake.alive and closed_while_running == [True]
