"""The pzshell terminal app: edit a metric, prune with it in a background worker process and
watch perplexity come back, evolve metrics, keep every result.

The app never waits on model work: a thread (:meth:`PzShellApp.pump`) reads the worker's
events and posts them as messages (:mod:`pzshell.tui.messages`); the handlers below only
update state and widgets. When the worker process dies the app says why, starts a new one and
carries on with its queue, its results and its settings.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState, get_current_worker

from ..worker import (
    CancelRun,
    ControlSearch,
    StartSearch,
    WorkerClient,
)
from . import messages as m
from .runs import Run, RunQueue
from .screens.confirm import ConfirmScreen
from .screens.help import HelpScreen
from .screens.save_tree import SaveTreeScreen
from .screens.settings import SettingsScreen
from .store import AppSettings, Store, result_row
from .widgets.evolve_panel import EvolvePanel
from .widgets.library_panel import LibraryPanel, display_path
from .widgets.metric_editor import MetricEditor
from .widgets.results_table import ResultsTable
from .widgets.run_queue import RunQueueView

TABS = ("metric", "results", "evolve", "library")


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


MAX_QUICK_DEATHS = 3  # deaths without a ready worker in between: stop restarting


class PzShellApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "pzshell"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("f1", "help", "Help"),
        Binding("f2", "settings", "Settings"),
        Binding("ctrl+r", "run_formula", "Run", priority=True),
        Binding("ctrl+k", "cancel_run", "Cancel", priority=True),
        Binding("ctrl+e", "search_inject", "Inject", priority=True),
        Binding("ctrl+s", "save_tree", "Save", priority=True),
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("f3", "tab('metric')", "Metric", show=False),
        Binding("f4", "tab('results')", "Results", show=False),
        Binding("f5", "tab('evolve')", "Evolve", show=False),
        Binding("f6", "tab('library')", "Library", show=False),
        Binding("f9", "restart_worker", "Restart worker", show=False),
    ]
    # app-wide keys that a modal screen must not see (it has its own)
    _GLOBAL_ACTIONS = {"run_formula", "cancel_run", "search_inject", "save_tree", "settings",
                       "help", "tab", "restart_worker"}  # fmt: skip

    def __init__(
        self,
        settings: AppSettings | None = None,
        *,
        home: str | Path | None = None,
        client=None,
        formula: str | None = None,
    ):
        super().__init__()
        self.store = Store(Path(home) if home else None)
        self.settings = settings or self.store.load_settings()
        self.client = client if client is not None else WorkerClient(self.store.worker_log)
        self.queue = RunQueue()
        self.search_state = "idle"
        self.search_dir: str | None = None
        self.device = "starting …"
        self.quick_deaths = 0
        self.closing = False
        self.last_metric_row: dict | None = None
        self._formula = formula if formula is not None else self.store.state.get("formula", "")

    # ---- layout --------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(icon="✂")
        with TabbedContent(initial="metric", id="tabs"):
            with TabPane("Metric [dim]F3[/]", id="metric"):
                yield MetricEditor(self._formula, side=RunQueueView(id="runs"), id="editor")
            with TabPane("Results [dim]F4[/]", id="results"):
                yield ResultsTable(id="results-table")
                yield Static(Text("s sort · r reverse · enter open in the editor · del remove · "
                                  "kept in results.json", "dim"), id="results-hint")  # fmt: skip
            with TabPane("Evolve [dim]F5[/]", id="evolve"):
                yield EvolvePanel(id="evolve-panel")
            with TabPane("Library [dim]F6[/]", id="library"):
                yield LibraryPanel(self.store.trees_dir, id="library-panel")
        yield Footer()

    def on_mount(self) -> None:
        self._update_subtitle()
        self.query_one(ResultsTable).load(self.store.results)
        last = self.store.last_search
        if last and last.get("status") in ("stopped", "interrupted", "running"):
            self.query_one(EvolvePanel).set_state(
                "idle", f"last search {last['dir']} is resumable: press c on this tab to continue"
            )
        self.query_one("#formula").focus()
        self.pump(start=True)

    def _update_subtitle(self) -> None:
        r = self.settings.run
        self.sub_title = f"{r.model} · {r.label()} · worker: {self.device}"

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        return not (isinstance(self.screen, ModalScreen) and action in self._GLOBAL_ACTIONS)

    # ---- the worker: events in, restarts -------------------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="pump", name="pump")
    def pump(self, start: bool = False, restart: bool = False) -> None:
        """Read worker events and post them as messages until cancelled or the worker dies."""
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
                    self.post_message(m.WorkerDied(client.death_reason()))
                    return
                continue
            msg = m.from_worker_event(ev)
            if msg is not None:
                self.post_message(msg)

    @on(Worker.StateChanged)
    def _worker_state(self, event: Worker.StateChanged) -> None:
        """The one place where a failed thread worker is reported."""
        if event.state != WorkerState.ERROR:
            return
        w = event.worker
        err = w.error
        if w.name == "pump":
            self.notify(f"lost contact with the worker ({err}); restarting it", severity="error",
                        timeout=10)  # fmt: skip
            self._worker_lost(f"event reader failed: {err}")
        elif w.group == "analysis":
            self.notify(f"could not analyse the formula: {err}", severity="warning")
        else:
            self.notify(f"{w.name or 'background task'} failed: {err}", severity="error")

    @from_worker
    def on_worker_started(self, msg: m.WorkerStarted) -> None:
        self.device = msg.device
        self.quick_deaths = 0
        self._update_subtitle()
        self.dispatch()

    @from_worker
    def on_worker_died(self, msg: m.WorkerDied) -> None:
        if self.closing:
            return
        self.notify(f"{msg.reason}. Starting a new worker; results, queue and settings are kept.",
                    title="worker died", severity="error", timeout=15)  # fmt: skip
        self._worker_lost(msg.reason)

    def _worker_lost(self, reason: str) -> None:
        run = self.queue.active
        if run is not None:
            self.queue.remove(run.id)
            self._show_last(Text(f"✗ {run.title}: lost — {reason}", "red"))
            self.notify(f"the run of {run.title} was lost ({reason}); it is not retried",
                        severity="warning", timeout=10)  # fmt: skip
        if self.search_state in ("starting", "running", "paused", "stopping"):
            if self.search_dir:
                self.store.set_last_search(self.search_dir, "interrupted")
            self._set_search_state(
                "stopped", Text(f"search interrupted ({reason}); press c to continue it", "red")
            )
        self._refresh_runs()
        self.device = "restarting …"
        self._update_subtitle()
        self.quick_deaths += 1
        if self.quick_deaths > MAX_QUICK_DEATHS:
            self.device = "stopped"
            self._update_subtitle()
            self.notify(f"the worker keeps dying; see {self.store.worker_log}. "
                        "Press F9 to start it again.", severity="error",
                        timeout=30)  # fmt: skip
            return
        self.pump(restart=True)

    def action_restart_worker(self) -> None:
        self.quick_deaths = 0
        self.device = "restarting …"
        self._update_subtitle()
        self.pump(restart=True)

    # ---- runs ----------------------------------------------------------------------------------
    @property
    def editor(self) -> MetricEditor:
        return self.query_one(MetricEditor)

    def action_run_formula(self) -> None:
        ed = self.editor
        text = ed.text.strip()
        if not text:
            self.notify("type a metric first", severity="warning")
            return
        if ed.node is None:
            self.notify("the formula does not parse; fix it first (see the caret)",
                        severity="error")  # fmt: skip
            return
        self.queue_run(text)

    @on(m.RunRequested)
    def _run_requested(self, msg: m.RunRequested) -> None:
        self.queue_run(msg.formula)

    def queue_run(self, formula: str) -> Run:
        s = self.settings.run
        run = self.queue.add(Run("metric", formula, s))
        if self.settings.auto_reference:
            for kind in ("dense", "wanda"):
                if not self.store.has_reference(kind, s) and not self.queue.pending(kind, s):
                    self.queue.add(Run(kind, None, s))
        self.store.state["formula"] = formula
        self._refresh_runs()
        self.dispatch()
        return run

    def send(self, job) -> bool:
        """Give ``job`` to the worker; False (and a message) when it cannot take it now."""
        if not self.client.alive:
            self.notify("the worker is not running (it is starting or restarting); try again "
                        "in a moment", severity="warning")  # fmt: skip
            return False
        try:
            self.client.submit(job)
        except (OSError, ValueError, AssertionError, RuntimeError) as e:
            self.notify(f"could not reach the worker: {e}", severity="error")
            return False
        return True

    def dispatch(self) -> None:
        run = self.queue.next_to_send()
        if run is None or not self.client.alive:
            return
        if self.send(run.request()):
            run.status = "sent"
            self._refresh_runs()

    def action_cancel_run(self) -> None:
        run = self.queue.active
        if run is None:
            self.notify("no run in progress", severity="warning")
            return
        self._cancel(run.id)

    @on(m.CancelRequested)
    def _cancel_requested(self, msg: m.CancelRequested) -> None:
        self._cancel(msg.run_id)

    def _cancel(self, run_id: str) -> None:
        run = self.queue.get(run_id)
        if run is None:
            return
        if run.status == "queued":
            self.queue.remove(run_id)
            self.notify(f"removed {run.title} from the queue", timeout=3)
            self._refresh_runs()
        else:
            if not self.send(CancelRun(run_id)):
                return
            run.message = "cancelling …"
            self.query_one(RunQueueView).update_run(run)

    @from_worker
    def on_run_started(self, msg: m.RunStarted) -> None:
        run = self.queue.get(msg.run_id)
        if run is not None:
            run.status, run.started = "running", time.monotonic()
            self.query_one(RunQueueView).update_run(run)

    @from_worker
    def on_run_progressed(self, msg: m.RunProgressed) -> None:
        run = self.queue.get(msg.run_id)
        if run is None:
            return
        if run.status != "running":
            run.status, run.started = "running", run.started or time.monotonic()
        if run.message != "cancelling …":
            run.message = msg.text
        run.stage, run.done, run.total = msg.stage, msg.done, msg.total
        self.query_one(RunQueueView).update_run(run)

    @from_worker
    def on_run_completed(self, msg: m.RunCompleted) -> None:
        run = self.queue.remove(msg.run_id)
        if run is None:
            return
        row = self.store.add_result(result_row(run.kind, run.formula, run.settings, msg.results))
        self.query_one(ResultsTable).add_result(row)
        ppl = row.get("ppl")
        if not run.reference:
            self.last_metric_row = row
        if self.last_metric_row is not None:
            self._show_last(self._summary(self.last_metric_row))
        if not run.reference:
            self.notify(f"{run.title}: perplexity {ppl:.2f}" if ppl is not None else
                        f"{run.title}: done", title="run finished", timeout=6)  # fmt: skip
        self._refresh_runs()
        self.dispatch()

    @from_worker
    def on_run_failed(self, msg: m.RunFailed) -> None:
        run = self.queue.remove(msg.run_id)
        title = run.title if run else msg.run_id
        if msg.cancelled:
            self._show_last(Text(f"■ {title}: cancelled", "yellow"))
            self.notify(f"cancelled {title}", timeout=3)
        else:
            self._show_last(Text(f"✗ {title}: {msg.error}", "red"))
            self.notify(msg.error, title=f"run of {title} failed", severity="error", timeout=10)
        self._refresh_runs()
        self.dispatch()

    def _summary(self, row: dict) -> Text:
        """The last result with the reference rows for the same settings, for comparison."""
        text = Text()
        text.append("✓ ", "bold green")
        text.append(row.get("formula") or "", "bold")
        ppl = row.get("ppl")
        text.append(f"  {row['sparsity_ratio']:.0%} {row['sparsity_type']}\n  ")
        text.append(f"ppl {ppl:.2f}" if ppl is not None else "no perplexity", "bold green")
        for ref in ("dense", "wanda"):
            match = [r for r in self.store.results if r.get("kind") == ref
                     and r.get("reference_key") == row.get("reference_key")
                     and (ref == "dense" or (r.get("sparsity_ratio"), r.get("sparsity_type"))
                          == (row.get("sparsity_ratio"), row.get("sparsity_type")))]  # fmt: skip
            if match and match[-1].get("ppl") is not None:
                text.append(f" · {ref} {match[-1]['ppl']:.2f}", "cyan")
        if row.get("eval_windows"):
            data = Path(str(row.get("eval_data") or "")).name
            text.append(f"\n  {row['eval_windows']}×{row['eval_seqlen']} tokens of {data}, "
                        f"{row['seconds']:.0f} s", "dim")  # fmt: skip
        return text

    def _refresh_runs(self) -> None:
        self.query_one(RunQueueView).show(list(self.queue))

    def _show_last(self, text: Text) -> None:
        self.query_one(RunQueueView).show_last(text)

    def delete_result(self, row_id: str) -> None:
        self.store.remove_result(row_id)
        table = self.query_one(ResultsTable)
        table.rows_by_key.pop(row_id, None)
        table.resort()

    # ---- search --------------------------------------------------------------------------------
    @property
    def search_running(self) -> bool:
        return self.search_state in ("starting", "running", "paused", "stopping")

    def _set_search_state(self, state: str, detail: Text | str = "") -> None:
        self.search_state = state
        self.query_one(EvolvePanel).set_state(state, detail)

    def action_search_start(self) -> None:
        if self.search_running:
            self.notify("a search is already running", severity="warning")
            return
        out = self.store.searches_dir / f"search-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while out.exists():
            n += 1
            out = out.with_name(f"{out.name.split('~')[0]}~{n}")
        self._start_search(str(out), resume=False)

    def action_search_continue(self) -> None:
        if self.search_running:
            self.notify("a search is already running", severity="warning")
            return
        last = self.store.last_search
        if not last or not Path(last["dir"]).is_dir():
            self.notify("no earlier search to continue; press s to start one", severity="warning")
            return
        self._start_search(last["dir"], resume=True)

    def _start_search(self, out_dir: str, resume: bool) -> None:
        if not self.client.alive:
            self.notify("the worker is not running yet; try again in a moment",
                        severity="warning")  # fmt: skip
            return
        settings = None if resume else self.settings.search_settings()
        self.search_dir = out_dir
        panel = self.query_one(EvolvePanel)
        panel.reset()
        job = StartSearch(
            f"s{int(time.time())}", out_dir, settings, resume=resume,
            device=self.settings.run.device, budget=self.settings.search.budget,
        )  # fmt: skip
        if not self.send(job):
            return
        self.store.set_last_search(out_dir, "running")
        verb = "continuing" if resume else "starting"
        self._set_search_state("starting", Text(f"{verb} a search in {out_dir}: loading the "
                                                "model and statistics …", "yellow"))  # fmt: skip

    def action_search_pause(self) -> None:
        if self.search_state == "running":
            if self.send(ControlSearch("pause")):
                self._set_search_state("paused", Text("paused (p resumes)", "yellow"))
        elif self.search_state == "paused":
            if self.send(ControlSearch("resume")):
                self._set_search_state("running", Text("resuming …", "green"))
        else:
            self.notify("no search is running", severity="warning")

    def action_search_stop(self) -> None:
        if not self.search_running:
            self.notify("no search is running", severity="warning")
            return
        if not self.send(ControlSearch("stop")):
            return
        self._set_search_state("stopping", Text("stopping after the current candidate …",
                                                "yellow"))  # fmt: skip

    def action_search_inject(self) -> None:
        ed = self.editor
        if ed.node is None:
            self.notify("the editor holds no valid formula to inject", severity="warning")
            return
        if not self.search_running:
            self.notify("no search is running: start one on the Evolve tab (F5, then s)",
                        severity="warning")  # fmt: skip
            return
        if not self.send(ControlSearch("inject", ed.text.strip())):
            return
        self.notify(f"sent {ed.text.strip()} to the search", timeout=3)

    @from_worker
    def on_search_started(self, msg: m.SearchStarted) -> None:
        self.search_dir = msg.out_dir
        self.query_one(EvolvePanel).show_dir(display_path(Path(msg.out_dir)))
        resumed = (
            f", {msg.resumed_evaluations} evaluations from before"
            if msg.resumed_evaluations
            else ""
        )
        self._set_search_state("running", Text(f"running: budget {msg.budget}{resumed}; "
                                               "waiting for the first candidate …"))  # fmt: skip

    @from_worker
    def on_search_progressed(self, msg: m.SearchProgressed) -> None:
        if self.search_state == "starting":
            self._set_search_state("running")
        self.query_one(EvolvePanel).show_progress(msg)

    @from_worker
    def on_candidate_evaluated(self, msg: m.CandidateEvaluated) -> None:
        if self.search_state == "starting":
            self._set_search_state("running")
        self.query_one(EvolvePanel).add_candidate(msg)

    @from_worker
    def on_search_ended(self, msg: m.SearchEnded) -> None:
        state = "stopped" if msg.stopped else "finished"
        self.store.set_last_search(msg.out_dir, state)
        fit = f"{msg.best_fitness:.2f}" if msg.best_fitness != float("inf") else "—"
        detail = Text()
        detail.append(f"{state} after {msg.evaluations} evaluations", "bold")
        if msg.stopped:
            detail.append(" (resumable: press c)", "dim")
        detail.append(f"\nbest {fit}  ", "bold green")
        detail.append(msg.best_formula)
        self._set_search_state(state, detail)
        self.notify(f"search {state}: best {msg.best_formula} ({fit})", timeout=8)

    @from_worker
    def on_search_failed(self, msg: m.SearchFailed) -> None:
        if self.search_dir:
            self.store.set_last_search(self.search_dir, "interrupted")
        self._set_search_state("failed", Text(f"search failed: {msg.error}", "red"))
        self.notify(msg.error, title="search failed", severity="error", timeout=10)

    @from_worker
    def on_worker_note(self, msg: m.WorkerNote) -> None:
        sev = {"warning": "warning", "error": "error"}.get(msg.level, "information")
        self.notify(msg.text, severity=sev, timeout=5)

    # ---- editor, library, tabs -----------------------------------------------------------------
    @on(m.OpenFormula)
    def _open_formula(self, msg: m.OpenFormula) -> None:
        self.editor.set_formula(msg.formula)
        self.action_tab("metric")
        self.query_one("#formula").focus()
        if msg.source:
            self.notify(f"opened {msg.formula} from {msg.source}", timeout=3)

    def action_tab(self, name: str) -> None:
        self.query_one(TabbedContent).active = name
        self._focus_tab(name)

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self._focus_tab(event.pane.id or "")

    def _focus_tab(self, name: str) -> None:
        target = {"metric": "#formula", "results": "#results-table", "evolve": "#candidates",
                  "library": "#tree-list"}.get(name)  # fmt: skip
        if not target:
            return

        def focus() -> None:
            # deferred: by now the user may have switched tabs again (a late TabActivated of the
            # first tab used to pull the focus back to the editor); only the active tab's
            # widget may take the focus
            if self.query_one(TabbedContent).active == name:
                self.query_one(target).focus()

        self.call_after_refresh(focus)

    def action_save_tree(self) -> None:
        ed = self.editor
        if ed.node is None:
            self.notify("the editor holds no valid formula to save", severity="warning")
            return

        def save(name: str | None) -> None:
            if not name:
                return
            from ..lang import save_tree_file

            path = self.store.trees_dir / f"{name}.json"
            save_tree_file(ed.node, path)
            self.query_one(LibraryPanel).rescan(select=f"user:{name}")
            self.notify(f"saved {path}", timeout=4)

        self.push_screen(SaveTreeScreen(ed.text.strip(), str(self.store.trees_dir)), save)

    # ---- screens -------------------------------------------------------------------------------
    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_settings(self) -> None:
        def apply(new: AppSettings | None) -> None:
            if new is None:
                return
            self.settings = new
            self.store.save_settings(new)
            self._update_subtitle()
            self.notify(f"settings applied: {new.run.model}, {new.run.label()}", timeout=3)

        self.push_screen(SettingsScreen(self.settings), apply)

    async def action_quit(self) -> None:
        busy = []
        if self.queue.active is not None:
            busy.append(f"a run of {self.queue.active.title} is in progress")
        waiting = sum(1 for r in self.queue if r.status == "queued")
        if waiting:
            busy.append(f"{waiting} run(s) are queued")
        if self.search_running:
            busy.append("a search is running (it stays resumable: Evolve → c)")
        if not busy:
            self.shutdown()
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.shutdown()

        question = "Quit pzshell?\n\n" + "\n".join(f"• {b}" for b in busy)
        self.push_screen(ConfirmScreen(question), answer)

    def shutdown(self) -> None:
        self.closing = True
        if self.search_running and self.search_dir:
            self.store.set_last_search(self.search_dir, "stopped")
        self.store._save_state()
        self.notify("stopping the worker …", timeout=10)
        self._close_worker()

    @work(thread=True, exclusive=True, group="pump", name="close", exit_on_error=False)
    def _close_worker(self) -> None:
        try:
            self.client.close(timeout=15)
        finally:
            self.call_from_thread(self.exit)  # whatever happened to the worker, we quit

    def on_unmount(self) -> None:
        if self.client.alive:
            self.client.kill()


def run_app(settings: AppSettings | None = None, home: str | None = None,
            formula: str | None = None) -> None:  # fmt: skip
    PzShellApp(settings, home=home, formula=formula).run()


__all__ = ["PzShellApp", "run_app"]
