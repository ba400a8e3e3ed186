"""The run queue: the run in progress with its per-block progress, the runs waiting behind it,
and the last result. Select a run and press Delete (or c) to cancel it."""

from __future__ import annotations

import contextlib
import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from ..messages import CancelRequested
from ..runs import Run


def bar(done: int, total: int, width: int = 10) -> str:
    if total <= 0:
        return "░" * width
    filled = round(width * min(done, total) / total)
    return "█" * filled + "░" * (width - filled)


def run_prompt(run: Run) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    label = "dense model" if run.kind == "dense" else run.settings.label()
    if run.status == "queued":
        t.append("◦ ", "dim")
        t.append(run.title, "italic" if run.reference else "")
        t.append(f"  {label}  queued", "dim")
        return t
    t.append("▶ ", "bold yellow")
    t.append(run.title, "bold")
    t.append(f"  {label}\n  ")
    if run.status == "sent":
        t.append("waiting for the worker …", "dim")
        return t
    elapsed = f"{time.monotonic() - run.started:.0f}s" if run.started else ""
    t.append(f"{run.stage:<8} ", "cyan")
    t.append(bar(run.done, run.total), "green")
    t.append(f" {run.done}/{run.total} {elapsed:>4}", "dim")
    if run.message:
        t.append(f"\n  {run.message}", "dim")
    return t


class RunQueueView(Vertical):
    DEFAULT_CSS = """
    RunQueueView { height: 1fr; border: round $panel; }
    RunQueueView > OptionList { height: 1fr; border: none; padding: 0; }
    RunQueueView > #last-result { height: auto; max-height: 4; padding: 0 1; }
    """
    BINDINGS = [
        Binding("delete,c", "cancel_run", "Cancel run"),
    ]

    def compose(self) -> ComposeResult:
        yield OptionList(id="run-list")
        yield Static(Text("no runs yet: type a metric and press ctrl+r", "dim"), id="last-result")

    def on_mount(self) -> None:
        self.border_title = "runs"
        self._runs: list[Run] = []
        self.set_interval(1.0, self._tick)  # the elapsed time moves even between blocks

    def _tick(self) -> None:
        for run in self._runs:
            if run.status == "running":
                self.update_run(run)

    def show(self, runs: list[Run]) -> None:
        self._runs = list(runs)
        ol = self.query_one(OptionList)
        highlighted = ol.highlighted
        ol.clear_options()
        ol.add_options([Option(run_prompt(r), id=r.id) for r in runs])
        if runs:
            ol.highlighted = min(highlighted or 0, len(runs) - 1)
        self.border_title = f"runs ({len(runs)})" if runs else "runs"

    def update_run(self, run: Run) -> None:
        ol = self.query_one(OptionList)
        with contextlib.suppress(Exception):
            ol.replace_option_prompt(run.id, run_prompt(run))

    def show_last(self, text: Text) -> None:
        self.query_one("#last-result", Static).update(text)

    def action_cancel_run(self) -> None:
        ol = self.query_one(OptionList)
        if ol.highlighted is None or ol.option_count == 0:
            self.notify("no run selected", severity="warning")
            return
        opt = ol.get_option_at_index(ol.highlighted)
        self.post_message(CancelRequested(opt.id))
