"""The pzshell terminal app: edit a metric, prune with it in a background worker process and
watch perplexity come back, evolve metrics, keep every result.

The app never waits on model work: a thread (:meth:`PzShellApp.pump`) reads the worker's
events and posts each as a :class:`~pzshell.tui.messages.WorkerEvent`. What an event or a key
changes — the run queue, the search state, the stored results — is decided by the app's
:class:`~pzshell.tui.session.Session` (plain Python); the handlers here show the outcome. When
the worker process dies the app says why, starts a new one and carries on with its queue, its
results and its settings.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane

from ..worker import WorkerClient
from . import messages as m
from .runs import QueuedRun, RunQueue
from .screens.confirm import ConfirmScreen
from .screens.help import HelpScreen
from .screens.run_settings import SettingsScreen
from .screens.save_tree import SaveTreeScreen
from .session import Refused, SearchState, Session
from .store import AppSettings, Store
from .widgets.evolve_panel import EvolvePanel
from .widgets.library_panel import LibraryPanel
from .widgets.metric_editor import MetricEditor
from .widgets.results_table import ResultsTable
from .widgets.run_queue import RunQueueView, result_summary
from .worker_link import WorkerLink

# the tabs, each with the widget it focuses when it is shown
TAB_FOCUS = {
    "metric": "#formula",
    "results": "#results-table",
    "evolve": "#candidates",
    "library": "#tree-list",
}


class PzShellApp(WorkerLink, App):
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
        # the Evolve tab's keys: app-wide (so they work whatever has the focus on that tab, the
        # tab bar and a disabled button's former focus included), live only on that tab
        Binding("s", "search_start", "Start"),
        Binding("p", "search_pause", "Pause"),
        Binding("x", "search_stop", "Stop"),
        Binding("c", "search_continue", "Continue"),
        Binding("i", "evolve_inject", "Inject"),
    ]
    _EVOLVE_ACTIONS = {
        "search_start",
        "search_pause",
        "search_stop",
        "search_continue",
        "evolve_inject",
    }
    # app-wide keys that a modal screen must not see (it has its own): all but quit
    _GLOBAL_ACTIONS = {b.action.partition("(")[0] for b in BINDINGS} - {"quit"}

    def __init__(
        self,
        settings: AppSettings | None = None,
        *,
        home: str | Path | None = None,
        client=None,
        formula: str | None = None,
    ):
        super().__init__()
        store = Store(Path(home) if home else None)
        self.client = client if client is not None else WorkerClient(store.worker_log)
        self.session = Session(
            store,
            settings or store.load_settings(),
            send=self.send,
            worker_alive=lambda: self.client.alive,
        )
        self.device = "starting …"
        self.closing = False
        self._told_gradients = False
        self._close_after_run = False  # run() closes the worker once the terminal is back
        self._deleted: list[tuple[int, dict]] = []  # removed results rows, for undo
        self._formula = formula if formula is not None else store.state.get("formula", "")

    # ---- the session's state, for the handlers below (and tests) -------------------------------
    @property
    def store(self) -> Store:
        return self.session.store

    @property
    def settings(self) -> AppSettings:
        return self.session.settings

    @settings.setter
    def settings(self, value: AppSettings) -> None:
        self.session.settings = value

    @property
    def queue(self) -> RunQueue:
        return self.session.queue

    @property
    def search_state(self) -> SearchState:
        return self.session.search_state

    # ---- layout --------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(icon="✂")
        with TabbedContent(initial="metric", id="tabs"):
            with TabPane("Metric [dim]F3[/]", id="metric"):
                yield MetricEditor(self._formula, side=RunQueueView(id="runs"), id="editor")
            with TabPane("Results [dim]F4[/]", id="results"):
                yield ResultsTable(id="results-table")
                hint = "s sort · r reverse · enter open in the editor · del remove · "
                yield Static(Text(hint + "kept in results.json", "dim"), id="results-hint")
            with TabPane("Evolve [dim]F5[/]", id="evolve"):
                yield EvolvePanel(id="evolve-panel")
            with TabPane("Library [dim]F6[/]", id="library"):
                yield LibraryPanel(self.store.trees_dir, id="library-panel")
        yield Footer()

    def on_mount(self) -> None:
        self._update_subtitle()
        self.query_one(ResultsTable).load(self.store.results)
        resumable = self.session.resumable_search()
        if resumable:
            self.query_one(EvolvePanel).set_state(
                SearchState.IDLE,
                f"last search {resumable} is resumable: press c on this tab to continue",
            )
        last = next((r for r in reversed(self.store.results) if r.get("kind") == "metric"), None)
        if last is not None:  # a restart with saved results: show the newest, not "no runs yet"
            self.session.last_metric_row = last
            self._show_last(result_summary(last, self.store.references_for(last)))
        self.query_one("#formula").focus()
        self.pump(start=True)

    def _update_subtitle(self) -> None:
        r = self.settings.run
        self.sub_title = f"{r.model} · {r.label()} · worker: {self.device}"

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if isinstance(self.screen, ModalScreen) and action in self._GLOBAL_ACTIONS:
            return False
        if action in self._EVOLVE_ACTIONS:
            return self._active_tab() == "evolve"
        return True

    def _active_tab(self) -> str:
        try:
            return self.query_one(TabbedContent).active
        except Exception:  # before the layout exists, or after it is gone
            return ""

    @contextmanager
    def _unless_refused(self):
        """Run a session action; when it is refused, tell the user why."""
        try:
            yield
        except Refused as e:
            self.notify(str(e), severity="warning")

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
            self.notify(
                "the formula does not parse; fix it first (see the caret)", severity="error"
            )
            return
        run = self.queue_run(text)
        self._explain_queued(run, uses_g="G" in ed.node.terminals)

    def _explain_queued(self, run: QueuedRun, uses_g: bool) -> None:
        """Say up front what a run brings with it that takes time (the first run at new
        settings queues the reference runs; a formula over G computes gradients first)."""
        refs = [r for r in self.session.last_added if r.reference]
        parts = []
        if refs:
            names = " and ".join(r.title for r in refs)
            parts.append(
                f"queued {run.title} and the reference runs {names} for these settings: "
                "the perplexities to compare it with (F2 → reference rows turns this off)"
            )
        if uses_g and not self._told_gradients:
            self._told_gradients = True
            parts.append(
                "it uses G: the run first computes the gradients over the calibration data "
                "(a backward pass per sample, about 2 minutes on a CPU for the default model)"
            )
        if parts:
            self.notify("; ".join(parts), title="queued", timeout=10)

    @on(m.RunRequested)
    def _run_requested(self, msg: m.RunRequested) -> None:
        self.queue_run(msg.formula)

    def queue_run(self, formula: str) -> QueuedRun:
        run = self.session.queue_run(formula)
        self._refresh_runs()
        return run

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
        run = self.session.cancel(run_id)
        if run is None:
            return
        if self.queue.get(run_id) is None:  # it was only queued
            self.notify(f"removed {run.title} from the queue", timeout=3)
            self._refresh_runs()
        else:
            self._update_run(run)

    def delete_result(self, row_id: str) -> None:
        """Remove a results row (from results.json too); u on the table brings it back."""
        index = next((i for i, r in enumerate(self.store.results) if r.get("id") == row_id), None)
        if index is None:
            return
        row = self.store.results[index]
        self.store.remove_result(row_id)
        self._deleted.append((index, row))
        table = self.query_one(ResultsTable)
        table.rows_by_key.pop(row_id, None)
        table.resort()
        name = row.get("formula") or f"({row.get('kind')})"
        self.notify(f"removed the row of {name} from results.json; press u to undo", timeout=8)

    def action_undo_delete(self) -> None:
        if not self._deleted:
            self.notify("nothing to undo", severity="warning")
            return
        index, row = self._deleted.pop()
        self.store.restore_result(row, index)
        self.query_one(ResultsTable).add_result(row)
        name = row.get("formula") or f"({row.get('kind')})"
        self.notify(f"restored the row of {name}", timeout=4)

    # ---- search --------------------------------------------------------------------------------
    def action_search_start(self) -> None:
        resumable = None if self.search_state.active else self.session.resumable_search()
        if resumable is None:
            self._search_start_new()
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._search_start_new()

        question = (
            f"The last search is unfinished:\n{resumable}\n\n"
            "c continues it. A new search takes its place: c would then continue the new "
            "one (the old directory stays on disk). Start a new search?"
        )
        self.push_screen(ConfirmScreen(question, yes="Start new", no="Keep it"), answer)

    def _search_start_new(self) -> None:
        with self._unless_refused():
            out = self.session.start_search()
            if out is not None:
                self.query_one(EvolvePanel).show_sent(self.search_state, out, resume=False)

    def action_search_continue(self) -> None:
        with self._unless_refused():
            out = self.session.continue_search()
            if out is not None:
                self.query_one(EvolvePanel).show_sent(self.search_state, out, resume=True)

    def _start_search(self, out_dir: str, resume: bool) -> None:
        """Start (or continue) a search in ``out_dir``, whatever the state."""
        with self._unless_refused():
            if self.session.start_search_in(out_dir, resume):
                self.query_one(EvolvePanel).show_sent(self.search_state, out_dir, resume)

    def action_search_pause(self) -> None:
        with self._unless_refused():
            state = self.session.toggle_pause()
            if state is not None:
                self.query_one(EvolvePanel).show_control(state)

    def action_search_stop(self) -> None:
        with self._unless_refused():
            if self.session.stop_search():
                self.query_one(EvolvePanel).show_control(self.search_state)

    def action_search_inject(self) -> None:
        ed = self.editor
        if ed.node is None:
            self.notify("the editor holds no valid formula to inject", severity="warning")
            return
        formula = ed.text.strip()
        with self._unless_refused():
            if self.session.inject(formula):
                self.notify(f"sent {formula} to the search", timeout=3)

    def action_evolve_inject(self) -> None:
        """i on the Evolve tab (ctrl+e does the same anywhere)."""
        self.action_search_inject()

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
        self.refresh_bindings()  # the Evolve tab's keys come and go with it
        self._focus_tab(event.pane.id or "")

    def _focus_tab(self, name: str) -> None:
        target = TAB_FOCUS.get(name)
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
        busy = self.session.busy()
        if not busy:
            self.shutdown()
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.shutdown()

        question = "Quit pzshell?\n\n" + "\n".join(f"• {b}" for b in busy)
        self.push_screen(ConfirmScreen(question), answer)

    def shutdown(self) -> None:
        """Leave the UI at once; the worker is closed after it (see :meth:`run`), instead of
        the UI waiting, frozen, for the worker to finish its candidate or block."""
        self.closing = True
        self.session.close()
        self.exit()

    def run(self, *args, **kwargs):
        self._close_after_run = True
        try:
            return super().run(*args, **kwargs)
        finally:
            self.close_worker_after_exit()

    def close_worker_after_exit(self) -> None:
        if self.client.alive:
            print(
                "pzshell: stopping the worker (a search stays resumable) …",
                file=sys.stderr,
                flush=True,
            )
            self.client.close(timeout=15)


def run_app(
    settings: AppSettings | None = None, home: str | None = None, formula: str | None = None
) -> None:
    PzShellApp(settings, home=home, formula=formula).run()


__all__ = ["PzShellApp", "run_app"]
