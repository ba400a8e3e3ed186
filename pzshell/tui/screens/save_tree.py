"""Ask for a name under which to save the editor's formula."""

from __future__ import annotations

import re

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class SaveTreeScreen(ModalScreen[str | None]):
    DEFAULT_CSS = """
    SaveTreeScreen { align: center middle; }
    SaveTreeScreen > Vertical {
        width: 64; height: auto; border: thick $primary; background: $surface; padding: 1 2;
    }
    SaveTreeScreen #save-error { color: $error; height: auto; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, formula: str, folder: str, suggestion: str = ""):
        super().__init__()
        self.formula, self.folder, self.suggestion = formula, folder, suggestion

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(
                f"Save [b]{self.formula}[/b] as Pruner-Zero JSON in {self.folder}/", markup=True
            )
            yield Input(
                self.suggestion, placeholder="name (letters, digits, _ . -)", id="tree-name"
            )
            yield Static("", id="save-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        name = event.value.strip().removesuffix(".json")
        if not NAME.match(name):
            self.query_one("#save-error", Static).update(
                "use 1-64 letters, digits, '_', '.' or '-'"
            )
            return
        self.dismiss(name)

    def action_cancel(self) -> None:
        self.dismiss(None)
