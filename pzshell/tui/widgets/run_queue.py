"""The run queue: the run in progress with its per-block progress, the runs waiting behind it,
and the last result. Select a run and press Delete (or c) to cancel it."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from ...worker.protocol import how_suffix
from ..messages import CancelRequested
from ..runs import QueuedRun, RunStatus

NO_RUNS = "no runs yet: type a metric and press ctrl+r"
WAITING = "the result shows here when the run finishes"


def bar(done: int, total: int, width: int = 10) -> str:
    if total <= 0:
        return "░" * width
    filled = round(width * min(done, total) / total)
    return "█" * filled + "░" * (width - filled)


def run_prompt(run: QueuedRun) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    label = "dense model" if run.kind == "dense" else run.settings.label()
    if run.status is RunStatus.QUEUED:
        t.append("◦ ", "dim")
        t.append(run.title, "italic" if run.reference else "")
        t.append(f"  {label}  queued", "dim")
        return t
    t.append("▶ ", "bold yellow")
    t.append(run.title, "bold")
    t.append(f"  {label}\n  ")
    if run.status is RunStatus.SENT:
        t.append("waiting for the worker …", "dim")
        return t
    elapsed = f"{time.monotonic() - run.started:.0f}s" if run.started else ""
    t.append(f"{run.stage:<8} ", "cyan")
    t.append(bar(run.done, run.total), "green")
    t.append(f" {run.done}/{run.total} {elapsed:>4}", "dim")
    if run.message:
        t.append(f"\n  {run.message}", "dim")
    return t


def result_summary(row: dict, references: dict[str, dict]) -> Text:
    """A finished run's row, with the perplexity of its ``references`` (rows by kind: see
    :meth:`pzshell.tui.store.Store.references_for`) for comparison."""
    text = Text()
    text.append("✓ ", "bold green")
    text.append(row.get("formula") or "", "bold")
    ppl = row.get("ppl")
    how = how_suffix(row.get("refine"), row.get("refit"))
    text.append(f"  {row['sparsity_ratio']:.0%} {row['sparsity_type']}{how}\n  ")
    text.append(f"ppl {ppl:.2f}" if ppl is not None else "no perplexity", "bold green")
    for kind, ref in references.items():
        if ref.get("ppl") is not None:
            text.append(f" · {kind} {ref['ppl']:.2f}", "cyan")
    if row.get("eval_windows"):
        data = Path(str(row.get("eval_data") or "")).name
        text.append(
            f"\n  {row['eval_windows']}×{row['eval_seqlen']} tokens of {data}, "
            f"{row['seconds']:.0f} s",
            "dim",
        )
    return text


class RunQueueView(Vertical):
    DEFAULT_CSS = """
    RunQueueView { height: 1fr; border: round $panel; }
    RunQueueView > OptionList { height: 1fr; border: none; padding: 0; }
    RunQueueView > #last-result { height: auto; max-height: 6; padding: 0 1; }
    """
    BINDINGS = [
        Binding("delete,c", "cancel_run", "Cancel run"),
    ]

    def compose(self) -> ComposeResult:
        yield OptionList(id="run-list")
        yield Static(Text(NO_RUNS, "dim"), id="last-result")

    def on_mount(self) -> None:
        self.border_title = "runs"
        self._runs: list[QueuedRun] = []
        self._has_last = False  # a result (or failure) is shown, not a placeholder
        self.set_interval(1.0, self._tick)  # the elapsed time moves even between blocks

    def _tick(self) -> None:
        for run in self._runs:
            if run.status is RunStatus.RUNNING:
                self.update_run(run)

    def show(self, runs: list[QueuedRun]) -> None:
        self._runs = list(runs)
        ol = self.query_one(OptionList)
        highlighted = ol.highlighted
        ol.clear_options()
        ol.add_options([Option(run_prompt(r), id=r.id) for r in runs])
        if runs:
            ol.highlighted = min(highlighted or 0, len(runs) - 1)
        self.border_title = f"runs ({len(runs)})" if runs else "runs"
        if not self._has_last:
            hint = WAITING if runs else NO_RUNS
            self.query_one("#last-result", Static).update(Text(hint, "dim"))

    def update_run(self, run: QueuedRun) -> None:
        ol = self.query_one(OptionList)
        with contextlib.suppress(Exception):
            ol.replace_option_prompt(run.id, run_prompt(run))

    def show_last(self, text: Text) -> None:
        self._has_last = True
        self.query_one("#last-result", Static).update(text)

    def action_cancel_run(self) -> None:
        ol = self.query_one(OptionList)
        if ol.highlighted is None or ol.option_count == 0:
            self.notify("no run selected", severity="warning")
            return
        opt = ol.get_option_at_index(ol.highlighted)
        self.post_message(CancelRequested(opt.id))
