"""What the app decides, without Textual: which run goes to the worker next, what a worker event
or a dying worker changes, and the search's state.

:class:`~pzshell.tui.app.PzShellApp` owns one :class:`Session`: it turns keys into calls here
and what they return into widgets and notifications. A :class:`Session` talks to the worker
through two callables, so tests drive it with a list and a flag instead of a process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..search import events as se
from ..worker.protocol import (
    CancelRun,
    ControlSearch,
    RunFailed,
    RunFinished,
    RunProgress,
    RunStarted,
    StartSearch,
)
from .runs import QueuedRun, RunQueue, RunStatus
from .store import REFERENCE_KINDS, AppSettings, Store, result_row

MAX_QUICK_DEATHS = 3  # deaths without a ready worker in between: stop restarting
CANCELLING = "cancelling …"


class SearchState(Enum):
    """Where the app's search is. The first four are *active*: the worker has the search (or
    is about to), and a new one cannot start."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    IDLE = "idle"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def active(self) -> bool:
        return self in (
            SearchState.STARTING,
            SearchState.RUNNING,
            SearchState.PAUSED,
            SearchState.STOPPING,
        )


class Refused(Exception):
    """An action that cannot be done now; the message tells the user why."""


@dataclass(frozen=True)
class WorkerLoss:
    """What a dead worker took with it."""

    run: QueuedRun | None  # the run it had, now out of the queue (not retried)
    search_interrupted: bool  # an active search became resumable (state STOPPED)
    give_up: bool  # it keeps dying: do not start another one until the user asks


class Session:
    """The run queue, the search state and the store, as one state machine.

    ``send(job)`` gives a job to the worker and says whether it could (the app tells the user
    when not); ``worker_alive()`` says whether a worker process is up to take one.
    """

    def __init__(
        self,
        store: Store,
        settings: AppSettings,
        send: Callable[[object], bool],
        worker_alive: Callable[[], bool],
    ):
        self.store = store
        self.settings = settings
        self.queue = RunQueue()
        self.search_state = SearchState.IDLE
        self.search_dir: str | None = None
        self.quick_deaths = 0
        self.last_metric_row: dict | None = None  # the newest result of a formula
        self.last_added: list[QueuedRun] = []  # what the last queue_run queued, in order
        self._send = send
        self._alive = worker_alive

    # ---- runs ----------------------------------------------------------------------------------
    def queue_run(self, formula: str) -> QueuedRun:
        """Queue ``formula`` at the current settings, with the reference runs it still lacks
        (unless the settings say not to), and send the next run if the worker is idle."""
        s = self.settings.run
        run = self.queue.add(QueuedRun("metric", formula, s))
        self.last_added = [run]
        if self.settings.auto_reference:
            for kind in REFERENCE_KINDS:
                if not self.store.has_reference(kind, s) and not self.queue.pending(kind, s):
                    self.last_added.append(self.queue.add(QueuedRun(kind, None, s)))
        self.store.state["formula"] = formula
        self.dispatch()
        return run

    def dispatch(self) -> QueuedRun | None:
        """Give the first queued run to the worker when it has none; the run sent, if any."""
        run = self.queue.next_to_send()
        if run is None or not self._alive():
            return None
        if not self._send(run.request()):
            return None
        run.status = RunStatus.SENT
        return run

    def cancel(self, run_id: str) -> QueuedRun | None:
        """Cancel a run. A queued one leaves the queue; for the worker's one the worker is told
        (it stays in the queue until the worker says it stopped). The run, or None when there
        is no such run or the worker could not be told."""
        run = self.queue.get(run_id)
        if run is None:
            return None
        if run.status is RunStatus.QUEUED:
            return self.queue.remove(run_id)
        if not self._send(CancelRun(run_id)):
            return None
        run.message = CANCELLING
        return run

    def run_started(self, ev: RunStarted) -> QueuedRun | None:
        run = self.queue.get(ev.run_id)
        if run is not None:
            run.status, run.started = RunStatus.RUNNING, time.monotonic()
        return run

    def run_progressed(self, ev: RunProgress) -> QueuedRun | None:
        run = self.queue.get(ev.run_id)
        if run is None:
            return None
        if run.status is not RunStatus.RUNNING:
            run.status, run.started = RunStatus.RUNNING, run.started or time.monotonic()
        if run.message != CANCELLING:
            run.message = ev.message
        run.stage, run.done, run.total = ev.stage, ev.done, ev.total
        return run

    def run_finished(self, ev: RunFinished) -> tuple[QueuedRun, dict] | None:
        """Keep the run's results row and send the next run; the run and its row (as stored)."""
        run = self.queue.remove(ev.run_id)
        if run is None:
            return None
        row = self.store.add_result(result_row(run.kind, run.formula, run.settings, ev.results))
        if not run.reference:
            self.last_metric_row = row
        self.dispatch()
        return run, row

    def run_failed(self, ev: RunFailed) -> QueuedRun | None:
        """The run (failed or cancelled) leaves the queue and the next one goes."""
        run = self.queue.remove(ev.run_id)
        self.dispatch()
        return run

    # ---- the worker process --------------------------------------------------------------------
    def worker_ready(self) -> QueuedRun | None:
        """A (new) worker is up: it gets the first queued run, which is returned."""
        self.quick_deaths = 0
        return self.dispatch()

    def worker_lost(self) -> WorkerLoss:
        """The worker died: its run is lost, its search interrupted (resumable)."""
        run = self.queue.active
        if run is not None:
            self.queue.remove(run.id)
        interrupted = self.search_state.active
        if interrupted:
            if self.search_dir:
                self.store.set_last_search(self.search_dir, "interrupted")
            self.search_state = SearchState.STOPPED
        self.quick_deaths += 1
        return WorkerLoss(run, interrupted, give_up=self.quick_deaths > MAX_QUICK_DEATHS)

    def busy(self) -> list[str]:
        """What quitting now would interrupt, in words (empty: nothing)."""
        out = []
        if self.queue.active is not None:
            out.append(f"a run of {self.queue.active.title} is in progress")
        waiting = len(self.queue.waiting)
        if waiting:
            out.append(f"{waiting} run(s) are queued")
        if self.search_state.active:
            out.append("a search is running (it stays resumable: Evolve → c)")
        return out

    def close(self) -> None:
        """Before the app exits: an active search is recorded as stopped (resumable)."""
        if self.search_state.active and self.search_dir:
            self.store.set_last_search(self.search_dir, "stopped")
        self.store.save_state()

    # ---- search --------------------------------------------------------------------------------
    def resumable_search(self) -> str | None:
        """The directory of the last search when it can be continued."""
        last = self.store.last_search
        if last and last.get("status") in ("stopped", "interrupted", "running"):
            return last["dir"]
        return None

    def new_search_dir(self) -> str:
        out = self.store.searches_dir / f"search-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while out.exists():
            n += 1
            out = out.with_name(f"{out.name.split('~')[0]}~{n}")
        return str(out)

    def start_search(self) -> str | None:
        """Start a search at the current settings in a new directory (None: not sent)."""
        self._refuse_if_searching()
        out = self.new_search_dir()
        return out if self.start_search_in(out, resume=False) else None

    def continue_search(self) -> str | None:
        """Continue the last search in its directory (None: not sent)."""
        self._refuse_if_searching()
        last = self.store.last_search
        if not last or not Path(last["dir"]).is_dir():
            raise Refused("no earlier search to continue; press s to start one")
        if last.get("status") == "finished":
            # resuming a finished search would only re-run its final candidates
            raise Refused(
                f"the last search ({last['dir']}) finished its budget: nothing to continue; "
                "press s to start a new one"
            )
        return last["dir"] if self.start_search_in(last["dir"], resume=True) else None

    def start_search_in(self, out_dir: str, resume: bool) -> bool:
        """Send the search job (STARTING until the worker says it started); False: not sent."""
        if not self._alive():
            raise Refused("the worker is not running yet; try again in a moment")
        settings = None if resume else self.settings.search_settings()
        self.search_dir = out_dir
        job = StartSearch(
            f"s{int(time.time())}",
            out_dir,
            settings,
            resume=resume,
            device=self.settings.run.device,
            budget=self.settings.search.budget,
            workers=self.settings.search.workers,
        )
        if not self._send(job):
            return False
        self.store.set_last_search(out_dir, "running")
        self.search_state = SearchState.STARTING
        return True

    def toggle_pause(self) -> SearchState | None:
        """Pause a running search, resume a paused one: the new state (None: not sent)."""
        if self.search_state is SearchState.RUNNING:
            action, after = "pause", SearchState.PAUSED
        elif self.search_state is SearchState.PAUSED:
            action, after = "resume", SearchState.RUNNING
        else:
            raise Refused("no search is running")
        if not self._send(ControlSearch(action)):
            return None
        self.search_state = after
        return after

    def stop_search(self) -> bool:
        """Ask the search to stop after its current candidate (False: not sent)."""
        if not self.search_state.active:
            raise Refused("no search is running")
        if not self._send(ControlSearch("stop")):
            return False
        self.search_state = SearchState.STOPPING
        return True

    def inject(self, formula: str) -> bool:
        """Send ``formula`` into the running search's population (False: not sent)."""
        if not self.search_state.active:
            raise Refused("no search is running: start one on the Evolve tab (F5, then s)")
        return self._send(ControlSearch("inject", formula))

    def search_started(self, ev: se.SearchStarted) -> None:
        self.search_dir = ev.out_dir
        self.search_state = SearchState.RUNNING

    def search_progressed(self) -> bool:
        """A candidate or a progress report arrived: True when that ended STARTING."""
        if self.search_state is SearchState.STARTING:
            self.search_state = SearchState.RUNNING
            return True
        return False

    def search_finished(self, ev: se.SearchFinished) -> SearchState:
        """FINISHED, or STOPPED (resumable) when it was stopped early."""
        self.store.set_last_search(ev.out_dir, "stopped" if ev.stopped else "finished")
        self.search_state = SearchState.STOPPED if ev.stopped else SearchState.FINISHED
        return self.search_state

    def search_failed(self) -> None:
        if self.search_dir:
            self.store.set_last_search(self.search_dir, "interrupted")
        self.search_state = SearchState.FAILED

    def _refuse_if_searching(self) -> None:
        if self.search_state.active:
            raise Refused("a search is already running")
