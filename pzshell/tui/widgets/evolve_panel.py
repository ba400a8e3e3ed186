"""The search view: controls, live statistics, a fitness plot, the hall of fame (best per
formula size) and the latest candidates. Enter on any row opens its formula in the editor.
The keys s p x c i work whatever has the focus on this tab (the app binds them too:
:class:`~pzshell.tui.app.PzShellApp`)."""

from __future__ import annotations

import math
import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Static

from ...search.events import SearchFinished, SearchProgress, SearchStarted
from ..messages import OpenFormula
from ..session import SearchState
from .fitness_chart import FitnessChart


def _ppl(x) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) and math.isfinite(x) else "—"


class FormulaTable(DataTable):
    """A table whose rows carry a formula; selecting a row opens it in the editor."""

    def __init__(self, columns: tuple[tuple[str, int | None], ...], **kwargs):
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._columns = columns
        self.formulas: dict[str, str] = {}

    def on_mount(self) -> None:
        for c, width in self._columns:
            self.add_column(c, key=c, width=width)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        formula = self.formulas.get(event.row_key.value)
        if formula:
            self.post_message(OpenFormula(formula, "search"))


class EvolvePanel(Vertical):
    DEFAULT_CSS = """
    EvolvePanel { height: 1fr; }
    EvolvePanel #search-controls { height: 1; }
    EvolvePanel #search-controls Button { margin: 0 1 0 0; }
    EvolvePanel #search-status {
        height: 3; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis;
    }
    EvolvePanel #search-plots { height: 1fr; }
    EvolvePanel FitnessChart { width: 1fr; }
    EvolvePanel #hall-of-fame {
        width: 1fr; height: 1fr; border: round $panel; overflow-x: hidden;
    }
    EvolvePanel #candidates { height: 7; border: round $panel; }
    EvolvePanel FormulaTable:focus { border: round $accent; }
    EvolvePanel #search-controls Button:focus { text-style: bold reverse; }
    """
    # the app binds these keys too (live on this tab whatever has the focus, the tab bar
    # included); here they come first in the footer while the focus is in the panel
    BINDINGS = [
        Binding("s", "app.search_start", "Start"),
        Binding("p", "app.search_pause", "Pause"),
        Binding("x", "app.search_stop", "Stop"),
        Binding("c", "app.search_continue", "Continue"),
        Binding("i", "app.evolve_inject", "Inject"),
    ]

    def compose(self) -> ComposeResult:
        with Horizontal(id="search-controls"):
            for label, name, variant in (
                ("Start", "start", "success"),
                ("Pause", "pause", "default"),
                ("Stop", "stop", "error"),
                ("Continue", "continue", "default"),
                ("Inject", "inject", "primary"),
            ):
                yield Button(
                    label,
                    id=f"search-{name}",
                    action=f"app.search_{name}",
                    compact=True,
                    variant=variant,
                )
        yield Static(
            Text("no search yet: press s to start one at the current settings", "dim"),
            id="search-status",
        )
        with Horizontal(id="search-plots"):
            yield FitnessChart(id="fitness-chart")
            yield FormulaTable((("size", 4), ("ppl", 7), ("formula", 60)), id="hall-of-fame")
        yield FormulaTable(
            # the id column sizes itself (ids grow past three digits)
            (("id", None), ("stage", 6), ("ppl", 7), ("time", 6), ("formula", 100)),
            id="candidates",
        )

    def on_mount(self) -> None:
        self.query_one("#hall-of-fame").border_title = "Pareto front: best ppl per size"
        self.query_one("#candidates").border_title = "latest candidates"
        self.evaluated = 0
        self.clock = time.monotonic  # tests replace it
        self._since: float | None = None  # when a continued search started (its own clock)
        self._made = 0  # evaluations made since then (not cached, not finals)
        self.set_state(SearchState.IDLE)

    # ---- state ---------------------------------------------------------------------------------
    def set_state(self, state: SearchState, detail: Text | str = "") -> None:
        """Enable the buttons that make sense in ``state``; show ``detail`` when given."""
        running = state.active
        self.query_one("#search-start", Button).disabled = running
        self.query_one("#search-continue", Button).disabled = running
        stop = self.query_one("#search-stop", Button)
        stop.disabled = not running or state is SearchState.STOPPING
        pause = self.query_one("#search-pause", Button)
        pause.disabled = state not in (SearchState.RUNNING, SearchState.PAUSED)
        pause.label = "Resume" if state is SearchState.PAUSED else "Pause"
        self.query_one("#search-inject", Button).disabled = not running
        self.state = state
        if detail:
            self.query_one("#search-status", Static).update(detail)
        self.call_after_refresh(self._keep_focus)

    def _keep_focus(self) -> None:
        """A pressed button that became disabled (Start, Continue) drops the focus: give it
        to the candidates, so that the tab keeps a visible focus."""
        focused = self.app.focused
        lost = focused is None or (focused.disabled and focused in self.query(Button))
        if lost and self.is_on_screen:
            self.query_one("#candidates").focus()

    def reset(self) -> None:
        self.evaluated = 0
        self._since, self._made = None, 0
        self.query_one(FitnessChart).clear()
        for t in self.query(FormulaTable):
            t.clear()
            t.formulas = {}

    def show_dir(self, out_dir: str) -> None:
        self.query_one("#candidates").border_title = f"latest candidates · {out_dir}"

    # ---- the search's phases, as the app's session reports them --------------------------------
    def show_sent(self, state: SearchState, out_dir: str, resume: bool) -> None:
        """A new search (or the continued one) went to the worker: clear the old one."""
        self.reset()
        verb = "continuing" if resume else "starting"
        detail = f"{verb} a search in {out_dir}: loading the model and statistics …"
        self.set_state(state, Text(detail, "yellow"))

    def show_started(self, state: SearchState, ev: SearchStarted, shown_dir: str) -> None:
        """The worker started the search (``shown_dir``: its directory, as the user sees it)."""
        self.show_dir(shown_dir)
        before = ev.resumed_evaluations
        resumed = f", {before} evaluations from before" if before else ""
        # a continued search's own rate counts all its evaluations against the time since
        # it was continued; the panel measures the evaluations made since then instead
        self._since, self._made = (self.clock() if before else None), 0
        detail = f"running: budget {ev.budget}{resumed}; waiting for the first candidate …"
        self.set_state(state, Text(detail))

    def show_control(self, state: SearchState) -> None:
        """The user paused, resumed or stopped the search: ``state`` is the new one."""
        detail = {
            SearchState.PAUSED: Text("paused (p resumes)", "yellow"),
            SearchState.RUNNING: Text("resuming …", "green"),
            SearchState.STOPPING: Text("stopping after the current candidate …", "yellow"),
        }.get(state, "")
        self.set_state(state, detail)

    def show_finished(self, state: SearchState, ev: SearchFinished) -> None:
        """The end of a search (``state``: FINISHED, or STOPPED when stopped early)."""
        fit = f"{ev.best_fitness:.2f}" if ev.best_fitness != float("inf") else "—"
        detail = Text()
        detail.append(f"{state.value} after {ev.evaluations} evaluations", "bold")
        if ev.stopped:
            detail.append(" (resumable: press c)", "dim")
        detail.append(f"\nbest {fit}  ", "bold green")
        detail.append(ev.best_formula)
        if ev.verdict:  # how it compares with the reference rule on the finals' windows
            detail.append(f"\n{ev.verdict}", "dim")
        self.set_state(state, detail)
        self.notify(f"search {state.value}: best {ev.best_formula} ({fit})", timeout=8)

    def show_progress(self, p: SearchProgress) -> None:
        rate = p.cache_hits / max(p.cache_hits + p.evaluations, 1)
        t = Text(no_wrap=True, overflow="ellipsis")
        state = "paused" if p.paused else self.state.value
        t.append(f"{state}  ", "bold yellow" if p.paused else "bold")
        t.append(f"{p.evaluations}/{p.budget} screened", "bold")
        t.append(f"  {self.rate(p):.1f}/min  full {p.full}  ")
        t.append(f"hits: rule {p.cache_hits} ({rate:.0%}), mask {p.mask_hits}")
        if p.restarts:
            t.append(f"  restarts {p.restarts}")
        t.append("\n" + _speeds(p), "dim")
        t.append("\nbest ", "bold green")
        t.append(f"{_ppl(p.best_fitness)}  ", "bold green")
        t.append(p.best_formula)
        self.query_one("#search-status", Static).update(t)
        hof = self.query_one("#hall-of-fame", FormulaTable)
        hof.clear()
        hof.formulas = {}
        for size, fit, formula in p.hall_of_fame:
            key = f"h{size}"
            hof.add_row(str(size), _ppl(fit), formula, key=key)
            hof.formulas[key] = formula

    def rate(self, p: SearchProgress) -> float:
        """Evaluations per minute: the search's own figure, except for a continued search,
        whose figure counts the evaluations from before too: there, the evaluations made
        since it was continued over the time since then."""
        if self._since is None:
            return p.evals_per_minute
        minutes = (self.clock() - self._since) / 60
        return self._made / minutes if minutes > 0 else 0.0

    def add_candidate(self, r: dict) -> None:
        """One evaluated candidate (its search-log record)."""
        table = self.query_one("#candidates", FormulaTable)
        key = f"c{r.get('id')}-{r.get('stage')}"
        if key in table.formulas:
            return
        fit = r.get("fitness")
        stage = r.get("stage", "")
        text = r.get("formula", "")
        if stage not in ("full", "final") and r.get("reason"):
            text = f"{text}  ({r['reason']})"
        seconds = f"{r.get('seconds', 0):.1f}s"
        shown = "reference" if r.get("reference") else stage  # the rule the finals are judged by
        table.add_row(str(r.get("id")), shown, _ppl(fit), seconds, text, key=key)
        table.formulas[key] = r.get("formula", "")
        table.move_cursor(row=table.row_count - 1)  # follow the newest
        if stage != "final":
            self.evaluated += 1
            if not r.get("cached"):
                self._made += 1
        if stage == "full" and isinstance(fit, (int, float)):
            self.query_one(FitnessChart).add(self.evaluated, fit)


def _speeds(p: SearchProgress) -> str:
    """Per-stage speed: rates per hour and median seconds per candidate."""
    parts = []
    r = p.rates or {}
    if r:
        parts.append(f"per hour: {r.get('screened', 0):.0f} screened, {r.get('full', 0):.0f} full")
    for stage, label in (("screen", "proxy"), ("eval", "perplexity")):
        v = (p.stage_seconds or {}).get(stage)
        if v is not None:
            parts.append(f"{label} {v:.2f} s")
    return "  ".join(parts) or "per-stage speed: after the first candidates"
