"""The help screen: what each part of the app does and every key."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# pzshell — help

Prune a language model with a **symbolic pruning metric**, get perplexity back, and evolve
new metrics. Terminals: `W` (|weight|), `G` (gradient statistic), `X` (input activation
statistic). Operators: `add sub mul div sqr pow neg abs log exp sqrt tanh skp mms zsn`
(+ `rown coln`, extended). Infix works too: `W * sqrt(X)`, `W^2`, `-W`, `a / b` (= `div`).

| key | what |
|---|---|
| **F1** | this help (Esc closes) |
| **F2** | settings: model, sparsity, data, samples, window, device, search |
| **F3 F4 F5 F6** | Metric, Results, Evolve, Library tabs |
| **ctrl+r** | run: prune with the editor's formula at the current settings |
| **ctrl+k** | cancel the run in progress |
| **ctrl+e** | send the editor's formula into the running search |
| **ctrl+s** | save the editor's formula into your tree library |
| **ctrl+q** | quit (asks first while work runs; a search stays resumable) |
| **F9** | start the worker process again (after it kept dying) |

**Metric** — the editor parses as you type: a caret marks an error; the simplified form, the
canonical rank key and "same pruning rule as …" appear a moment later. Runs queue in the
*runs* box; select one and press Delete (or c) to cancel it.

**Results** — every finished run, with `(dense)` and `(wanda)` reference rows for the same
settings. Click a header or press `s` to sort, `r` to reverse; Enter opens a formula in the
editor; Delete removes a row. Kept in `results.json` in the data directory.

**Evolve** — `s` starts a search at the current settings, `p` pauses / resumes, `x` stops
(the run directory stays resumable), `c` continues the last stopped search, `i` injects the
editor's formula. Enter on a hall-of-fame or candidate row opens it in the editor.

**Library** — shipped trees and yours (Pruner-Zero JSON). Enter loads, `d` deletes one of
yours.

The heavy work runs in a separate worker process. If it dies (out of memory, a crash, a kill)
the app says so and starts a new one; results and settings are kept.
"""


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 90%; max-width: 100; height: 90%; border: thick $primary; background: $surface;
    }
    """
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(HELP)
