"""The app's state machine (pzshell.tui.session) driven directly, without Textual: the order in
which runs go to the worker, what worker events change, the search's states, a dying worker."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pzshell.search import events as se
from pzshell.tui.runs import RunStatus
from pzshell.tui.session import MAX_QUICK_DEATHS, Refused, SearchState, Session
from pzshell.tui.store import AppSettings, SearchKnobs, Store
from pzshell.worker import protocol as p

from .fake_worker import fake_results

S = p.RunSettings(model="tiny", nsamples=4, eval_windows=2)


class Link:
    """Stands in for the worker: records what is sent; ``up`` and ``accept`` script it."""

    def __init__(self) -> None:
        self.jobs: list = []
        self.up = True
        self.accept = True

    def send(self, job) -> bool:
        if not self.accept:
            return False
        self.jobs.append(job)
        return True

    def runs(self) -> list[tuple[str, str | None]]:
        return [(j.kind, j.formula) for j in self.jobs if isinstance(j, p.PruneRequest)]


@pytest.fixture
def link() -> Link:
    return Link()


@pytest.fixture
def session(tmp_path, link) -> Session:
    settings = AppSettings(run=S, search=SearchKnobs())
    return Session(Store(tmp_path / "home"), settings, link.send, lambda: link.up)


def finish(session: Session, ppl: float = 20.0):
    run = session.queue.active
    assert run is not None, "no run at the worker"
    res = fake_results(run.kind, run.settings, ppl)
    return session.run_finished(p.RunFinished(run.id, res))


def test_the_session_needs_no_textual():
    code = (
        "import sys, pzshell.tui.session\n"
        "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_search_states_that_are_active():
    active = {s for s in SearchState if s.active}
    assert active == {
        SearchState.STARTING,
        SearchState.RUNNING,
        SearchState.PAUSED,
        SearchState.STOPPING,
    }


def test_runs_go_one_at_a_time_in_queue_order(session, link):
    run = session.queue_run("W*X")
    # the user's run first, then the reference rows these settings lack; only the first is sent
    assert [(r.kind, r.status) for r in session.queue] == [
        ("metric", RunStatus.SENT),
        ("dense", RunStatus.QUEUED),
        ("wanda", RunStatus.QUEUED),
    ]
    assert link.runs() == [("metric", "W*X")] and link.jobs[0].run_id == run.id
    assert session.store.state["formula"] == "W*X"
    assert session.dispatch() is None  # the worker has one already

    # a second formula queues behind them and needs no new reference runs
    session.queue_run("W")
    assert [r.title for r in session.queue] == ["W*X", "(dense)", "(wanda)", "W"]

    started = session.run_started(p.RunStarted(run.id))
    assert started is run and run.status is RunStatus.RUNNING and run.started is not None
    session.run_progressed(p.RunProgress(run.id, "prune", 3, 30, "block 2"))
    assert (run.stage, run.done, run.total, run.message) == ("prune", 3, 30, "block 2")

    got, row = finish(session, 21.5)
    assert got is run and row["ppl"] == 21.5 and row["kind"] == "metric"
    assert session.store.results == [row] and session.last_metric_row is row
    assert [r.title for r in session.queue] == ["(dense)", "(wanda)", "W"]
    assert session.queue.active.kind == "dense"  # sent as the first one finished
    for _ in range(3):
        finish(session)
    assert len(session.queue) == 0
    assert link.runs() == [("metric", "W*X"), ("dense", None), ("wanda", None), ("metric", "W")]
    assert session.last_metric_row["formula"] == "W"  # reference rows do not replace it
    assert session.dispatch() is None

    # the references are in the store now: a third run goes alone
    session.queue_run("G")
    assert [r.kind for r in session.queue] == ["metric"]


def test_no_reference_runs_when_the_settings_say_so(session, link):
    session.settings = AppSettings(run=S, auto_reference=False)
    session.queue_run("W")
    assert [r.kind for r in session.queue] == ["metric"]


def test_a_wanda_reference_per_sparsity_a_dense_one_per_data(session, link):
    session.queue_run("W")
    for _ in range(3):
        finish(session)
    session.settings = AppSettings(run=replace(S, sparsity_ratio=0.7))
    session.queue_run("W")
    assert [r.kind for r in session.queue] == ["metric", "wanda"]


def test_nothing_is_sent_to_a_worker_that_is_not_up(session, link):
    link.up = False
    session.queue_run("W")
    assert link.jobs == [] and all(r.status is RunStatus.QUEUED for r in session.queue)
    link.up = True
    sent = session.worker_ready()
    assert sent is session.queue.runs[0] and sent.status is RunStatus.SENT
    assert link.runs() == [("metric", "W")]


def test_a_run_the_worker_would_not_take_stays_queued(session, link):
    link.accept = False
    session.queue_run("W")
    assert session.queue.active is None and session.queue.runs[0].status is RunStatus.QUEUED
    link.accept = True
    assert session.dispatch() is session.queue.runs[0]


def test_cancel_a_queued_run_and_the_running_one(session, link):
    first = session.queue_run("W")
    dense, wanda = session.queue.runs[1:]
    # a queued run just leaves the queue; the worker is not told
    assert session.cancel(wanda.id) is wanda and session.queue.get(wanda.id) is None
    assert not any(isinstance(j, p.CancelRun) for j in link.jobs)
    # the worker's run: the worker is told, the run stays until it says it stopped
    session.run_started(p.RunStarted(first.id))
    assert session.cancel(first.id) is first
    assert link.jobs[-1] == p.CancelRun(first.id)
    assert session.queue.active is first and first.message == "cancelling …"
    session.run_progressed(p.RunProgress(first.id, "prune", 2, 30, "block 1"))
    assert first.message == "cancelling …" and first.done == 2  # the note stays
    assert session.run_failed(p.RunFailed(first.id, "cancelled", cancelled=True)) is first
    assert [r.id for r in session.queue] == [dense.id] and dense.status is RunStatus.SENT
    # unknown runs, and a worker that cannot be told, change nothing
    assert session.cancel("nope") is None
    link.accept = False
    assert session.cancel(dense.id) is None and dense.message == ""
    # events for runs the queue does not know are ignored
    assert session.run_started(p.RunStarted("nope")) is None
    assert session.run_finished(p.RunFinished("nope", {})) is None
    assert session.store.results == []


def test_a_failed_run_makes_room_for_the_next(session, link):
    first = session.queue_run("W")
    assert session.run_failed(p.RunFailed(first.id, "boom")) is first
    assert session.queue.active.kind == "dense"


def test_search_start_pause_resume_stop_and_continue(session, link):
    assert session.search_state is SearchState.IDLE
    with pytest.raises(Refused, match="no search is running"):
        session.toggle_pause()
    with pytest.raises(Refused, match="no search is running"):
        session.stop_search()
    with pytest.raises(Refused, match="no search is running"):
        session.inject("W")
    with pytest.raises(Refused, match="no earlier search"):
        session.continue_search()

    out = session.start_search()
    assert out is not None and out.startswith(str(session.store.searches_dir))
    start = link.jobs[-1]
    assert isinstance(start, p.StartSearch) and not start.resume and start.out_dir == out
    assert start.settings.fitness.model == "tiny" and start.budget == SearchKnobs().budget
    assert start.workers is None  # blank knob: the worker takes pzshell search's default
    assert session.search_state is SearchState.STARTING
    assert session.store.last_search == {"dir": out, "status": "running"}
    with pytest.raises(Refused, match="already running"):
        session.start_search()

    session.search_started(se.SearchStarted(out, 24, 0))
    assert session.search_state is SearchState.RUNNING and session.search_dir == out
    assert not session.search_progressed()  # only a STARTING search changes

    assert session.toggle_pause() is SearchState.PAUSED
    assert session.toggle_pause() is SearchState.RUNNING
    assert session.inject("W*X")
    assert session.stop_search() and session.search_state is SearchState.STOPPING
    controls = [(j.action, j.formula) for j in link.jobs if isinstance(j, p.ControlSearch)]
    assert controls == [("pause", None), ("resume", None), ("inject", "W*X"), ("stop", None)]

    state = session.search_finished(se.SearchFinished(out, "W", 30.0, 3, stopped=True))
    assert state is SearchState.STOPPED
    assert session.store.last_search == {"dir": out, "status": "stopped"}
    assert session.resumable_search() == out

    # continue it: the same directory, the settings saved there
    Path(out).mkdir(parents=True)  # as the worker's search does
    assert session.continue_search() == out
    again = link.jobs[-1]
    assert again.resume and again.out_dir == out and again.settings is None
    assert session.search_state is SearchState.STARTING
    assert session.search_progressed() and session.search_state is SearchState.RUNNING
    state = session.search_finished(se.SearchFinished(out, "W", 30.0, 5, stopped=False))
    assert state is SearchState.FINISHED and session.resumable_search() is None


def test_a_search_the_worker_would_not_take(session, link):
    link.up = False
    with pytest.raises(Refused, match="worker is not running"):
        session.start_search()
    link.up, link.accept = True, False
    assert session.start_search() is None
    assert session.search_state is SearchState.IDLE and session.store.last_search is None
    link.accept = True
    session.start_search()
    session.search_progressed()
    link.accept = False
    assert session.toggle_pause() is None and session.search_state is SearchState.RUNNING
    assert not session.stop_search() and session.search_state is SearchState.RUNNING


def test_a_failed_search_is_resumable(session, link):
    out = session.start_search()
    session.search_failed()
    assert session.search_state is SearchState.FAILED
    assert session.store.last_search == {"dir": out, "status": "interrupted"}
    assert session.resumable_search() == out


def test_worker_death_loses_the_run_interrupts_the_search_and_gives_up(session, link):
    session.queue_run("W")
    lost = session.queue.active
    out = session.start_search()
    session.search_started(se.SearchStarted(out, 24, 0))

    loss = session.worker_lost()
    assert loss.run is lost and loss.search_interrupted and not loss.give_up
    assert session.queue.get(lost.id) is None
    assert [r.status for r in session.queue] == [RunStatus.QUEUED, RunStatus.QUEUED]
    assert session.search_state is SearchState.STOPPED
    assert session.store.last_search == {"dir": out, "status": "interrupted"}

    # the new worker gets the queued runs; nothing else was lost
    sent = session.worker_ready()
    assert sent.kind == "dense" and session.quick_deaths == 0
    # deaths without a ready worker in between: give up after MAX_QUICK_DEATHS restarts
    losses = [session.worker_lost() for _ in range(MAX_QUICK_DEATHS + 1)]
    assert [x.give_up for x in losses] == [False] * MAX_QUICK_DEATHS + [True]
    assert losses[0].run is sent and losses[1].run is None
    assert not any(x.search_interrupted for x in losses)


def test_busy_and_close(session, link):
    assert session.busy() == []
    session.queue_run("W")
    out = session.start_search()
    assert session.busy() == [
        "a run of W is in progress",
        "2 run(s) are queued",
        "a search is running (it stays resumable: Evolve → c)",
    ]
    session.close()
    assert Store(session.store.home).last_search == {"dir": out, "status": "stopped"}
    assert Store(session.store.home).state["formula"] == "W"
