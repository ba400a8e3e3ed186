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
from .widgets.run_queue import RunQueueView
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
    ]
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
        self.query_one("#formula").focus()
        self.pump(start=True)

    def _update_subtitle(self) -> None:
        r = self.settings.run
        self.sub_title = f"{r.model} · {r.label()} · worker: {self.device}"

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        return not (isinstance(self.screen, ModalScreen) and action in self._GLOBAL_ACTIONS)

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
        self.queue_run(text)

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
        self.store.remove_result(row_id)
        table = self.query_one(ResultsTable)
        table.rows_by_key.pop(row_id, None)
        table.resort()

    # ---- search --------------------------------------------------------------------------------
    def action_search_start(self) -> None:
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
        self.closing = True
        self.session.close()
        self.notify("stopping the worker …", timeout=10)
        self._close_worker()


def run_app(
    settings: AppSettings | None = None, home: str | None = None, formula: str | None = None
) -> None:
    PzShellApp(settings, home=home, formula=formula).run()


__all__ = ["PzShellApp", "run_app"]
