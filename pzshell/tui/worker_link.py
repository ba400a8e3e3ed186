"""The app's side of the worker process: start it and read its events (a thread), give it
jobs, show what each event changed, and start a new process when one dies.

:class:`WorkerLink` is a part of :class:`~pzshell.tui.app.PzShellApp`, split off to keep each
module readable (a mixin: Textual finds its handlers, actions and thread workers on the app).
The app supplies ``client``, ``session`` (and its ``store``, ``queue``, ``search_state``),
``device``, ``closing`` and ``_update_subtitle``. What an event changes is decided by the
:class:`~pzshell.tui.session.Session`; the methods here show it.
"""

from __future__ import annotations

import functools
from pathlib import Path

from rich.text import Text
from textual import work
from textual.css.query import NoMatches
from textual.worker import Worker, WorkerState, get_current_worker

from ..search import events as se
from ..worker import protocol as p
from . import messages as m
from .runs import QueuedRun
from .widgets.evolve_panel import EvolvePanel
from .widgets.library_panel import display_path
from .widgets.metric_editor import MetricEditor, fit_caret_block
from .widgets.results_table import ResultsTable
from .widgets.run_queue import RunQueueView, result_summary


def from_worker(handler):
    """For handlers of worker messages: a message that arrives while the app is shutting down
    (its widgets already gone) is dropped instead of failing the exit. What the handler saved
    before it touched a widget (a result, the search state) is kept."""

    @functools.wraps(handler)
    def wrapper(self, msg):
        try:
            return handler(self, msg)
        except NoMatches:
            if (
                self.is_running
                and not self.closing
                and self.screen.is_mounted
                and any(True for _ in self.query(MetricEditor))
            ):
                raise  # a real bug, not a late message
            return None

    return wrapper


class WorkerLink:
    """The worker half of the app (see the module's docstring)."""

    # ---- the process: events in, jobs out, restarts --------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="pump", name="pump")
    def pump(self, start: bool = False, restart: bool = False) -> None:
        """Post the worker's events as messages until cancelled or the worker dies."""
        worker = get_current_worker()
        client = self.client
        if restart:
            client.restart()
        elif start:
            client.start()
        while not worker.is_cancelled:
            ev = client.get(timeout=0.1)
            if ev is None:
                if not client.alive and not worker.is_cancelled:
                    self.post_message(m.WorkerEvent(p.WorkerExited(client.death_reason())))
                    return
                continue
            self.post_message(m.WorkerEvent(ev))

    def send(self, job) -> bool:
        """Give ``job`` to the worker; False (and a message) when it cannot take it now."""
        if not self.client.alive:
            self.notify(
                "the worker is not running (it is starting or restarting); try again in a moment",
                severity="warning",
            )
            return False
        try:
            self.client.submit(job)
        except (OSError, ValueError, AssertionError, RuntimeError) as e:
            self.notify(f"could not reach the worker: {e}", severity="error")
            return False
        return True

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place where a failed thread worker is reported."""
        if event.state != WorkerState.ERROR:
            return
        w = event.worker
        err = w.error
        if w.name == "pump":
            self.notify(
                f"lost contact with the worker ({err}); restarting it", severity="error", timeout=10
            )
            self._worker_lost(f"event reader failed: {err}")
        elif w.group == "analysis":
            self.notify(f"could not analyse the formula: {err}", severity="warning")
        else:
            self.notify(f"{w.name or 'background task'} failed: {err}", severity="error")

    @from_worker
    def on_worker_event(self, msg: m.WorkerEvent) -> None:
        """Every event from the worker, by the type of the protocol object it carries."""
        ev = msg.event
        match ev:
            case p.WorkerReady():
                self.device = ev.device
                self._update_subtitle()
                if self.session.worker_ready() is not None:
                    self._refresh_runs()
            case p.WorkerExited():
                if self.closing:
                    return
                self.notify(
                    f"{ev.reason}. Starting a new worker; results, queue and settings are kept.",
                    title="worker died",
                    severity="error",
                    timeout=15,
                )
                self._worker_lost(ev.reason)
            case p.RunStarted():
                self._update_run(self.session.run_started(ev))
            case p.RunProgress():
                self._update_run(self.session.run_progressed(ev))
            case p.RunFinished():
                self._run_finished(ev)
            case p.RunFailed():
                self._run_failed(ev)
            case p.SearchEvent():
                self._search_event(ev.event)
            case p.SearchFailed():
                self.session.search_failed()
                detail = Text(f"search failed: {ev.error}", "red")
                self.query_one(EvolvePanel).set_state(self.search_state, detail)
                self.notify(
                    fit_caret_block(ev.error, self.toast_width()),
                    title="search failed",
                    severity="error",
                    timeout=10,
                )
            case p.WorkerNote():
                self._note(ev.text, ev.level)

    def toast_width(self) -> int:
        """The columns of text a notification has (Textual's toasts: 60 wide at most, half the
        screen, less their padding and edge)."""
        return min(60, self.size.width // 2) - 3

    def _note(self, text: str, level: str) -> None:
        sev = {"warning": "warning", "error": "error"}.get(level, "information")
        self.notify(text, severity=sev, timeout=5)

    def _worker_lost(self, reason: str) -> None:
        loss = self.session.worker_lost()
        if loss.run is not None:
            title = loss.run.title
            self._show_last(Text(f"✗ {title}: lost — {reason}", "red"))
            self.notify(
                f"the run of {title} was lost ({reason}); it is not retried",
                severity="warning",
                timeout=10,
            )
        if loss.search_interrupted:
            detail = Text(f"search interrupted ({reason}); press c to continue it", "red")
            self.query_one(EvolvePanel).set_state(self.search_state, detail)
        self._refresh_runs()
        self.device = "restarting …"
        self._update_subtitle()
        if loss.give_up:
            self.device = "stopped"
            self._update_subtitle()
            self.notify(
                f"the worker keeps dying; see {self.store.worker_log}. Press F9 to start it again.",
                severity="error",
                timeout=30,
            )
            return
        self.pump(restart=True)

    def action_restart_worker(self) -> None:
        self.session.quick_deaths = 0
        self.device = "restarting …"
        self._update_subtitle()
        self.pump(restart=True)

    # ---- what the events show ---------------------------------------------------------------
    def _run_finished(self, ev: p.RunFinished) -> None:
        done = self.session.run_finished(ev)
        if done is None:
            return
        run, row = done
        self.query_one(ResultsTable).add_result(row)
        last = self.session.last_metric_row
        if last is not None:
            self._show_last(result_summary(last, self.store.references_for(last)))
        if not run.reference:
            ppl = row.get("ppl")
            self.notify(
                f"{run.title}: perplexity {ppl:.2f}" if ppl is not None else f"{run.title}: done",
                title="run finished",
                timeout=6,
            )
        self._refresh_runs()

    def _run_failed(self, ev: p.RunFailed) -> None:
        run = self.session.run_failed(ev)
        title = run.title if run else ev.run_id
        if ev.cancelled:
            self._show_last(Text(f"■ {title}: cancelled", "yellow"))
            self.notify(f"cancelled {title}", timeout=3)
        else:
            # an error may end in a formula and a caret under it: redrawn to fit, never wrapped
            panel = self.query_one(RunQueueView).query_one("#last-result")
            self._show_last(
                Text(f"✗ {title}: {fit_caret_block(ev.error, panel.content_size.width)}", "red")
            )
            self.notify(
                fit_caret_block(ev.error, self.toast_width()),
                title=f"run of {title} failed",
                severity="error",
                timeout=10,
            )
        self._refresh_runs()

    def _refresh_runs(self) -> None:
        self.query_one(RunQueueView).show(list(self.queue))

    def _update_run(self, run: QueuedRun | None) -> None:
        if run is not None:
            self.query_one(RunQueueView).update_run(run)

    def _show_last(self, text: Text) -> None:
        self.query_one(RunQueueView).show_last(text)

    def _search_event(self, e: object) -> None:
        """One event of the search (:mod:`pzshell.search.events`)."""
        match e:
            case se.SearchStarted():
                self.session.search_started(e)
                shown = display_path(Path(e.out_dir))
                self.query_one(EvolvePanel).show_started(self.search_state, e, shown)
            case se.SearchProgress():
                if self.session.search_progressed():
                    self.query_one(EvolvePanel).set_state(self.search_state)
                self.query_one(EvolvePanel).show_progress(e)
            case se.CandidateDone():
                if self.session.search_progressed():
                    self.query_one(EvolvePanel).set_state(self.search_state)
                self.query_one(EvolvePanel).add_candidate(e.record)
            case se.SearchFinished():
                state = self.session.search_finished(e)
                self.query_one(EvolvePanel).show_finished(state, e)
            case se.SearchMessage():
                self._note(e.text, e.level)

    # ---- the end -------------------------------------------------------------------------------
    def on_unmount(self) -> None:
        if not self.client.alive:
            return
        if not self.closing:
            self.client.kill()  # not a quit (a crash): no time for a clean stop
        elif not self._close_after_run:
            # a quit without App.run (a test's run_test): close it here; App.run closes it
            # once the terminal is restored instead, so the user never watches a frozen screen
            self.client.close(timeout=15)
