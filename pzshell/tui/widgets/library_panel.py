"""The tree library: the shipped trees and the user's own directory, each with its formula.
Enter loads a tree into the editor; d deletes one of the user's (after asking); ctrl+s
(anywhere) saves the editor's formula as Pruner-Zero JSON into the user directory."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from ...lang import MetricError, Node, load_tree_file, to_infix
from ...lang.tree import to_json_obj
from ...paths import trees_dir
from ..messages import OpenFormula
from ..screens.confirm import ConfirmScreen
from .metric_editor import fit_caret_block


@dataclass
class Entry:
    name: str
    path: Path
    origin: str  # "shipped" | "user"
    node: Node | None
    error: str | None = None

    @property
    def formula(self) -> str:
        return to_infix(self.node) if self.node is not None else ""


def scan(user_dir: Path) -> list[Entry]:
    out = []
    for origin, folder in (("shipped", trees_dir()), ("user", user_dir)):
        for p in sorted(Path(folder).glob("*.json")):
            try:
                out.append(Entry(p.stem, p, origin, load_tree_file(p)))
            except MetricError as e:
                out.append(Entry(p.stem, p, origin, None, str(e)))
    return out


def display_path(p: Path) -> str:
    """A path as the user thinks of it: ``~`` for the home directory."""
    try:
        return "~/" + str(Path(p).resolve().relative_to(Path.home().resolve()))
    except ValueError:
        return str(p)


def entry_prompt(e: Entry) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(f"{e.name:<14}", "bold" if e.origin == "user" else "bold cyan")
    if e.node is not None:
        t.append(f" {e.formula}")
    else:
        t.append(" unreadable", "red")
    return t


class LibraryPanel(Horizontal):
    DEFAULT_CSS = """
    LibraryPanel { height: 1fr; }
    LibraryPanel #tree-list { width: 1fr; border: round $panel; }
    LibraryPanel #tree-preview { width: 1fr; border: round $panel; padding: 0 1; }
    """
    BINDINGS = [
        Binding("d", "delete_tree", "Delete user tree"),
        Binding("f5", "rescan", "Rescan", show=False),
    ]

    def __init__(self, user_dir: Path, **kwargs):
        super().__init__(**kwargs)
        self.user_dir = Path(user_dir)
        self.entries: list[Entry] = []

    def compose(self) -> ComposeResult:
        yield OptionList(id="tree-list")
        with VerticalScroll(id="tree-preview"):
            yield Static("", id="tree-detail")

    def on_mount(self) -> None:
        self.query_one("#tree-list").border_title = "trees · enter loads"
        self.query_one("#tree-preview").border_title = "Pruner-Zero JSON"
        self.rescan()

    def rescan(self, select: str | None = None) -> None:
        self.entries = scan(self.user_dir)
        ol = self.query_one(OptionList)
        ol.clear_options()
        shipped = [e for e in self.entries if e.origin == "shipped"]
        user = [e for e in self.entries if e.origin == "user"]
        ol.add_option(Option(Text("shipped with pzshell", "dim"), disabled=True))
        ol.add_options([Option(entry_prompt(e), id=f"{e.origin}:{e.name}") for e in shipped])
        ol.add_option(Option(Text(f"yours ({display_path(self.user_dir)})", "dim"), disabled=True))
        if user:
            ol.add_options([Option(entry_prompt(e), id=f"{e.origin}:{e.name}") for e in user])
        else:
            ol.add_option(
                Option(Text("  none yet: ctrl+s saves the editor's formula", "dim"), disabled=True)
            )
        if select:
            with contextlib.suppress(Exception):
                ol.highlighted = ol.get_option_index(select)
        elif ol.highlighted is None:
            ol.highlighted = 1
        self._preview()

    def action_rescan(self) -> None:
        self.rescan()

    def entry(self, option_id: str | None) -> Entry | None:
        return next((e for e in self.entries if f"{e.origin}:{e.name}" == option_id), None)

    def current(self) -> Entry | None:
        ol = self.query_one(OptionList)
        if ol.highlighted is None:
            return None
        return self.entry(ol.get_option_at_index(ol.highlighted).id)

    @on(OptionList.OptionHighlighted, "#tree-list")
    def _preview(self, _event=None) -> None:
        e = self.current()
        detail = self.query_one("#tree-detail", Static)
        if e is None:
            detail.update("")
            return
        t = Text()
        t.append(f"{e.name}", "bold")
        where = f"trees/{e.path.name}" if e.origin == "shipped" else display_path(e.path)
        t.append(f"  {where}\n", "dim")
        if e.node is None:
            width = self.query_one("#tree-preview").content_size.width
            t.append(fit_caret_block(e.error or "", width), "red")
        else:
            t.append(e.formula + "\n\n", "bold green")
            t.append(json.dumps(to_json_obj(e.node)), "dim")
        detail.update(t)

    @on(OptionList.OptionSelected, "#tree-list")
    def _load(self, event: OptionList.OptionSelected) -> None:
        e = self.entry(event.option.id)
        if e is None:
            return
        if e.node is None:
            error = fit_caret_block(e.error or "unreadable tree", self.app.toast_width())
            self.notify(error, severity="error")
            return
        self.post_message(OpenFormula(e.formula, f"library:{e.name}"))

    def action_delete_tree(self) -> None:
        e = self.current()
        if e is None or e.origin != "user":
            self.notify("only your own trees can be deleted", severity="warning")
            return

        def answer(yes: bool | None) -> None:
            if not yes:
                return
            e.path.unlink(missing_ok=True)
            self.notify(f"deleted {display_path(e.path)}")
            self.rescan()

        question = f"Delete your tree {e.name}?\n\n{display_path(e.path)}\n\nThis cannot be undone."
        self.app.push_screen(ConfirmScreen(question, yes="Delete", no="Keep"), answer)
