"""Run a formula: queued with reference rows, per-block progress, a results row; cancel;
results persist between sessions and sort."""

from __future__ import annotations

import pytest

from pzshell.search import events as se
from pzshell.tui.messages import WorkerEvent
from pzshell.tui.runs import RunStatus
from pzshell.tui.widgets.results_table import ResultsTable
from pzshell.worker import protocol as p

from .conftest import static_text, wait_for, worker_events
from .fake_worker import FakeWorker, fake_ppl

pytestmark = pytest.mark.asyncio


async def test_run_gives_a_results_row_with_reference_rows(make_app, fake):
    seen: list = []
    app = make_app(formula="abs(W*W)*mms(G)")
    async with app.run_test(message_hook=seen.append) as pilot:
        await wait_for(pilot, lambda: app.device == "fake (no model)", what="the worker")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: len(app.store.results) == 3, what="three results")
        kinds = [r["kind"] for r in app.store.results]
        assert kinds == ["metric", "dense", "wanda"]  # the user's run first, then references
        row = app.store.results[0]
        assert row["formula"] == "abs(W*W)*mms(G)"
        assert row["ppl"] == pytest.approx(fake_ppl("metric", "abs(W*W)*mms(G)"))
        assert row["sparsity_ratio"] == 0.5 and row["sparsity_type"] == "unstructured"
        assert row["seed"] == 0 and row["calib"] == "builtin"
        # the row keeps the rule's canonical key: `sqrt(W^2)*mms(G)^2`-style rewrites match it
        from pzshell.lang import parse
        from pzshell.lang.algebra import canonical

        assert row["canonical"] == canonical(parse("W^2*mms(G)")).key
        assert app.store.results[1]["canonical"] is None  # dense: no formula
        sent = [j for j in fake.jobs if isinstance(j, p.PruneRequest)]
        assert [j.kind for j in sent] == ["metric", "dense", "wanda"]
        assert sent[0].settings.model == "tiny"
        # the worker's events arrived unchanged, each in one WorkerEvent message
        progressed = worker_events(seen, p.RunProgress)
        assert progressed and progressed[-1].stage == "prune"
        done = worker_events(seen, p.RunFinished)
        assert [x.run_id for x in done] == [j.run_id for j in sent]
        table = app.query_one(ResultsTable)
        assert table.row_count == 3
        assert len(app.queue) == 0
        last = static_text(app, "#last-result")
        assert "ppl" in last and "dense 29.21" in last and "wanda 41.57" in last
        # a second run at the same settings needs no new reference rows
        app.editor.set_formula("W*sqrt(X)")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: len(app.store.results) == 4, what="the second result")
        assert table.row_count == 4


async def test_progress_messages_collapse():
    def progress(run_id: str, done: int) -> WorkerEvent:
        return WorkerEvent(p.RunProgress(run_id, "prune", done, 30))

    def search(evaluations: int) -> WorkerEvent:
        return WorkerEvent(p.SearchEvent("s", se.SearchProgress(evaluations, 10, 0, 1.0, 3.0, "W")))

    # the queued (older) message is replaced by a newer one of the same kind
    a = progress("r1", 1)
    assert a.can_replace(progress("r1", 2))
    assert not a.can_replace(progress("r2", 2))
    # a new stage never swallows the last event of the one before
    assert not a.can_replace(WorkerEvent(p.RunProgress("r1", "eval", 1, 8)))
    assert not a.can_replace(WorkerEvent(p.RunFinished("r1", {})))
    assert not WorkerEvent(p.RunFinished("r1", {})).can_replace(progress("r1", 2))
    assert search(1).can_replace(search(2))
    assert not search(1).can_replace(WorkerEvent(p.SearchEvent("s", se.CandidateDone({}))))
    assert not WorkerEvent(p.SearchEvent("s", se.CandidateDone({}))).can_replace(search(2))
    assert not search(1).can_replace(progress("r1", 2))


async def test_runs_queue_and_cancel(make_app, tmp_path):
    fake = FakeWorker(hold=True)
    app = make_app(formula="W", client=fake)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: fake.alive and app.device != "starting …", what="worker")
        await pilot.press("ctrl+r")
        app.editor.set_formula("W*X")
        await pilot.press("ctrl+r")
        await wait_for(
            pilot,
            lambda: app.queue.active is not None and app.queue.active.status is RunStatus.RUNNING,
            what="a running run",
        )
        titles = [r.title for r in app.queue]
        assert titles == ["W", "(dense)", "(wanda)", "W*X"]
        running = app.queue.active
        assert running.stage == "prune" and running.done == 2 and running.total == 2
        # cancel a queued run: it just leaves the queue
        app._cancel(app.queue.runs[3].id)
        await pilot.pause()
        assert [r.title for r in app.queue] == ["W", "(dense)", "(wanda)"]
        # cancel the running one (ctrl+k): the worker is told, the next run starts
        await pilot.press("ctrl+k")
        await wait_for(
            pilot,
            lambda: app.queue.runs and app.queue.runs[0].title == "(dense)",
            what="the cancellation",
        )
        assert any(isinstance(j, p.CancelRun) and j.run_id == running.id for j in fake.jobs)
        assert "cancelled" in static_text(app, "#last-result")
        assert app.store.results == []
        fake.finish(app.queue.active.id)
        await wait_for(pilot, lambda: len(app.store.results) == 1, what="the dense result")
        # cancel from the queue view: select the (wanda) run, press Delete
        app.query_one("#run-list").focus()
        await pilot.press("delete")
        await wait_for(pilot, lambda: len(app.queue) == 0, what="the empty queue")


async def test_results_persist_and_sort(make_app, tmp_path):
    home = tmp_path / "persist"
    app = make_app(formula="W", home=home)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.device != "starting …", what="worker")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: len(app.store.results) == 3, what="results")
    app2 = make_app(home=home, client=FakeWorker())
    async with app2.run_test() as pilot:
        table = app2.query_one(ResultsTable)
        assert table.row_count == 3
        await pilot.pause()
        await pilot.press("f4")
        await pilot.pause()

        def column(key):
            return [str(table.get_row(rk)[list(table.columns).index(key)]) for rk in table.rows]

        ppls = [float(x) for x in column("ppl")]
        assert ppls == sorted(ppls)  # sorted by perplexity by default
        table.sort_by("ppl")  # again: reversed
        assert [float(x) for x in column("ppl")] == sorted(ppls, reverse=True)
        await wait_for(pilot, lambda: app2.focused is table, what="focus on the table")
        await pilot.press("s")  # cycle to the next column
        assert table.sort_column == "seconds"
        table.sort_by("formula")
        assert column("formula")[-1] == "W"  # reference rows first, then formulas
        # Enter on a row opens it in the editor
        table.move_cursor(row=2)
        await pilot.press("enter")
        await pilot.pause()
        await wait_for(
            pilot, lambda: app2.query_one("#tabs").active == "metric", what="the metric tab"
        )
        assert app2.editor.text == "W"


# ---- the user review's rough edges -------------------------------------------------------------


# before: "no runs yet" stayed while runs were queued, and after a restart with saved results
async def test_the_last_result_line_never_says_no_runs_when_there_are_some(make_app, tmp_path):
    home = tmp_path / "placeholder-home"
    fake = FakeWorker(hold=True)
    app = make_app(formula="W", home=home, client=fake)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.device != "starting …", what="the worker")
        assert "no runs yet" in static_text(app, "#last-result")
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert "no runs yet" not in static_text(app, "#last-result")
        assert "when the run finishes" in static_text(app, "#last-result")
        fake.hold = False
        for run_id in list(fake.running):
            fake.finish(run_id)
        await wait_for(pilot, lambda: len(app.store.results) == 3, what="results")
    app2 = make_app(home=home, client=FakeWorker())
    async with app2.run_test() as pilot:
        await pilot.pause()
        shown = static_text(app2, "#last-result")
        assert "no runs yet" not in shown and "✓ W" in shown and "dense 29.21" in shown


# before: the first ctrl+r queued the reference runs (and a gradient pass) without a word
async def test_the_first_run_says_what_it_queued_and_why(make_app):
    app = make_app(formula="abs(W*W)*mms(G)")
    async with app.run_test(notifications=True) as pilot:
        await wait_for(pilot, lambda: app.device != "starting …", what="the worker")
        await pilot.press("ctrl+r")
        await pilot.pause()
        note = next(n.message for n in app._notifications if n.title == "queued")
        assert "(dense) and (wanda)" in note and "compare" in note and "gradients" in note
        await wait_for(pilot, lambda: len(app.store.results) == 3, what="results")
        app.clear_notifications()
        await pilot.press("ctrl+r")  # references exist now, gradients were explained: quiet
        await pilot.pause()
        assert not [n for n in app._notifications if n.title == "queued"]


# before: the arrow of an auto-sized column was cut off, and the time column was headed "s"
async def test_every_column_has_room_for_its_sort_arrow(make_app):
    app = make_app(formula="W")
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.device != "starting …", what="the worker")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: len(app.store.results) == 3, what="results")
        table = app.query_one(ResultsTable)
        assert str(table.columns["seconds"].label).strip() == "time"
        for key in list(table.columns):
            table.sort_by(str(key.value))
            await pilot.pause()
            col = table.columns[key]
            label = str(col.label)
            assert label.endswith(("▲", "▼")), label
            room = col.width if not col.auto_width else col.content_width
            assert room >= len(label), f"{key.value}: {label!r} in {room} cells"


# before: an error ending in a caret block, from the worker, wrapped in the narrow runs panel at
# 80×24, so the caret no longer pointed at anything
async def test_a_failed_runs_caret_block_fits_the_panel(make_app):
    from pzshell.lang import MetricError

    fake = FakeWorker(hold=True)
    app = make_app(formula="W", client=fake)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await wait_for(pilot, lambda: app.device != "starting …", what="the worker")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: fake.running, what="the run")
        source = "W*sqrt(X) + abs(W*W)*mms(G) + zsn(W*sqrt(X)) + foo(W)"
        err = str(
            MetricError("unknown operator 'foo'", source=source, column=source.index("foo") + 1)
        )
        run_id = next(iter(fake.running))
        fake.running.pop(run_id)
        fake.events.put(p.RunFailed(run_id, err))
        await wait_for(pilot, lambda: "✗" in static_text(app, "#last-result"), what="failure")
        panel = app.query_one("#last-result")
        lines = static_text(app, "#last-result").split("\n")
        formula, caret = lines[-2], lines[-1]
        assert len(formula) <= panel.content_size.width and len(caret) <= panel.content_size.width
        assert formula[caret.index("^")] == "f"  # still under the unknown operator
        toast = next(n.message for n in app._notifications if n.title.startswith("run of"))
        t_formula, t_caret = toast.split("\n")[-2:]
        assert len(t_formula) <= app.toast_width() and t_formula[t_caret.index("^")] == "f"
