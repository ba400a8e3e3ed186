"""The search view: controls, live statistics, a fitness plot, the hall of fame (best per
formula size) and the latest candidates. Enter on any row opens its formula in the editor."""

from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Static

from ..messages import CandidateEvaluated, OpenFormula, SearchProgressed
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
        height: 2; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis;
    }
    EvolvePanel #search-plots { height: 1fr; }
    EvolvePanel FitnessChart { width: 1fr; }
    EvolvePanel #hall-of-fame {
        width: 1fr; height: 1fr; border: round $panel; overflow-x: hidden;
    }
    EvolvePanel #candidates { height: 7; border: round $panel; }
    """
    BINDINGS = [
        Binding("s", "app.search_start", "Start"),
        Binding("p", "app.search_pause", "Pause"),
        Binding("x", "app.search_stop", "Stop"),
        Binding("c", "app.search_continue", "Continue"),
        Binding("i", "app.search_inject", "Inject"),
    ]

    def compose(self) -> ComposeResult:
        with Horizontal(id="search-controls"):
            yield Button("Start", id="search-start", action="app.search_start", compact=True,
                         variant="success")  # fmt: skip
            yield Button("Pause", id="search-pause", action="app.search_pause", compact=True)
            yield Button("Stop", id="search-stop", action="app.search_stop", compact=True,
                         variant="error")  # fmt: skip
            yield Button("Continue", id="search-continue", action="app.search_continue",
                         compact=True)  # fmt: skip
            yield Button("Inject", id="search-inject", action="app.search_inject",
                         compact=True, variant="primary")  # fmt: skip
        yield Static(Text("no search yet: press s to start one at the current settings", "dim"),
                     id="search-status")  # fmt: skip
        with Horizontal(id="search-plots"):
            yield FitnessChart(id="fitness-chart")
            yield FormulaTable((("size", 4), ("ppl", 7), ("formula", 60)),
                               id="hall-of-fame")  # fmt: skip
        yield FormulaTable((("id", 3), ("stage", 6), ("ppl", 7), ("s", 5), ("formula", 100)),
                           id="candidates")  # fmt: skip

    def on_mount(self) -> None:
        self.query_one("#hall-of-fame").border_title = "hall of fame (best per size)"
        self.query_one("#candidates").border_title = "latest candidates"
        self.evaluated = 0
        self.set_state("idle")

    # ---- state ---------------------------------------------------------------------------------
    def set_state(self, state: str, detail: str = "") -> None:
        """idle | starting | running | paused | stopping | finished | stopped | failed."""
        running = state in ("starting", "running", "paused", "stopping")
        self.query_one("#search-start", Button).disabled = running
        self.query_one("#search-continue", Button).disabled = running
        self.query_one("#search-stop", Button).disabled = not running or state == "stopping"
        pause = self.query_one("#search-pause", Button)
        pause.disabled = state not in ("running", "paused")
        pause.label = "Resume" if state == "paused" else "Pause"
        self.query_one("#search-inject", Button).disabled = not running
        self.state = state
        if detail:
            self.query_one("#search-status", Static).update(detail)

    def reset(self) -> None:
        self.evaluated = 0
        self.query_one(FitnessChart).clear()
        for t in self.query(FormulaTable):
            t.clear()
            t.formulas = {}

    def show_dir(self, out_dir: str) -> None:
        self.query_one("#candidates").border_title = f"latest candidates · {out_dir}"

    def show_progress(self, p: SearchProgressed) -> None:
        rate = p.cache_hits / max(p.cache_hits + p.evaluations, 1)
        t = Text(no_wrap=True, overflow="ellipsis")
        state = "paused" if p.paused else self.state
        t.append(f"{state}  ", "bold yellow" if p.paused else "bold")
        t.append(f"{p.evaluations}/{p.budget} evaluations", "bold")
        t.append(f"  {p.evals_per_minute:.1f}/min  cache hits {p.cache_hits} ({rate:.0%})")
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

    def add_candidate(self, msg: CandidateEvaluated) -> None:
        r = msg.record
        table = self.query_one("#candidates", FormulaTable)
        key = f"c{r.get('id')}-{r.get('stage')}"
        if key in table.formulas:
            return
        fit = r.get("fitness")
        stage = r.get("stage", "")
        text = r.get("formula", "")
        if stage not in ("full", "final") and r.get("reason"):
            text = f"{text}  ({r['reason']})"
        table.add_row(str(r.get("id")), stage, _ppl(fit), f"{r.get('seconds', 0):.1f}", text,
                      key=key)  # fmt: skip
        table.formulas[key] = r.get("formula", "")
        table.move_cursor(row=table.row_count - 1)  # follow the newest
        if stage != "final":
            self.evaluated += 1
        if stage == "full" and isinstance(fit, (int, float)):
            self.query_one(FitnessChart).add(self.evaluated, fit)
