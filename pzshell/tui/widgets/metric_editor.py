"""The metric editor: type a formula, see at once whether it parses (caret at the error
column), its tree, and — a moment later, from a thread — the simplified form, the canonical
rank key and whether it is the same pruning rule as a known metric."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Input, Static, Tree
from textual.worker import get_current_worker

from ...lang import MetricError, Node, parse
from ...lang.diagnostics import CARET_WIDTH, caret_lines
from ..messages import MetricAnalysed


def analyse(text: str) -> MetricAnalysed:
    """Simplify, canonicalise and compare ``text`` with the shipped trees (sympy: may take a
    second for a large formula, so the editor calls it from a thread)."""
    from ...lang import to_infix
    from ...lang.algebra import canonical, equivalent_known, simplify

    try:
        node = parse(text)
        canon = canonical(node)
        return MetricAnalysed(
            text, to_infix(simplify(node)), canon.key, canon.text, equivalent_known(node)
        )
    except Exception as e:  # never let an analysis bug reach the user as a crash
        return MetricAnalysed(text, error=f"{type(e).__name__}: {e}")


def caret_text(err: MetricError, width: int = CARET_WIDTH) -> Text:
    """The error as the command line prints it (:meth:`MetricError.render`, the one caret
    renderer: the formula and a caret under the offending column, both fitting ``width``
    columns; only the message may wrap), styled. (Under an unknown name's error the editor
    lists the names the language knows: :func:`known_names`.)"""
    out = Text()
    out.append("✗ ", "bold red")
    if err.source is not None and err.column is not None:
        head, line, caret = err.render(width).rsplit("\n", 2)
        out.append(head + "\n", "red")
        out.append(line + "\n", "bold")
        out.append(caret, "bold red")
    else:
        out.append(err.render(width), "red")
    return out


def known_names() -> str:
    """The operators and terminals of the language, for an unknown-name error."""
    from ...lang import EXTENDED, PUBLISHED, TERMINALS

    return (
        f"operators: {', '.join(PUBLISHED)}; extended (pzshell only): {', '.join(EXTENDED)}; "
        f"terminals: {', '.join(TERMINALS)}"
    )


def fit_caret_block(text: str, width: int) -> str:
    """A rendered error as text (from the worker, or ``str(MetricError)``) whose last two
    lines are a formula and a caret under it: those two lines redrawn by
    :func:`~pzshell.lang.diagnostics.caret_lines` to fit ``width`` columns (a wrapped caret line
    no longer points anywhere). Other text comes back unchanged."""
    lines = text.split("\n")
    if len(lines) < 3 or width < 10:
        return text
    line, caret = lines[-2], lines[-1]
    if not (caret.strip() == "^" and line.startswith("  ") and caret.startswith("  ")):
        return text
    source = line[2:]
    column = caret.index("^") - 2 + 1
    new_line, new_caret = caret_lines(source, column, width)
    return "\n".join([*lines[:-2], new_line, new_caret])


class MetricEditor(Vertical):
    """Formula input + live analysis + tree."""

    DEFAULT_CSS = """
    MetricEditor { height: 1fr; }
    MetricEditor #formula { margin: 0 0; }
    MetricEditor #parse-status { height: auto; padding: 0 1; }
    MetricEditor #analysis { height: auto; padding: 0 1; }
    MetricEditor #known-names { height: auto; padding: 0 1; display: none; }
    MetricEditor #editor-bottom { height: 1fr; }
    MetricEditor #metric-tree { width: 1fr; height: 1fr; min-height: 3; border: round $panel; }
    MetricEditor #metric-tree.-stale { color: $text-muted; border-title-color: $warning; }
    """

    formula: reactive[str] = reactive("", init=False)

    def __init__(self, value: str = "", *, side: Widget | None = None, **kwargs):
        super().__init__(**kwargs)
        self._initial = value
        self._side = side
        self.node: Node | None = None
        self._error: MetricError | None = None

    def compose(self) -> ComposeResult:
        yield Input(self._initial, placeholder="a metric, e.g. abs(W*W)*mms(G)", id="formula")
        yield Static("", id="parse-status")
        yield Static("", id="known-names")  # shown under an unknown name's error
        yield Static("", id="analysis")
        tree: Tree[str] = Tree("metric", id="metric-tree")
        tree.show_root = False
        tree.border_title = "tree"
        with Horizontal(id="editor-bottom"):
            yield tree
            if self._side is not None:
                yield self._side

    def on_mount(self) -> None:
        self.set_formula(self._initial)

    # ---- API -----------------------------------------------------------------------------------
    @property
    def text(self) -> str:
        return self.query_one("#formula", Input).value

    def set_formula(self, text: str) -> None:
        inp = self.query_one("#formula", Input)
        if inp.value != text:
            inp.value = text  # fires Input.Changed -> _changed
        else:
            self._update(text)
        inp.cursor_position = len(text)

    # ---- live analysis -------------------------------------------------------------------------
    @on(Input.Changed, "#formula")
    def _changed(self, event: Input.Changed) -> None:
        self._update(event.value)

    def _update(self, text: str) -> None:
        status = self.query_one("#parse-status", Static)
        analysis = self.query_one("#analysis", Static)
        self.formula = text
        if not text.strip():
            self.node = None
            self._error = None
            self.query_one("#known-names").display = False
            status.update(Text("type a metric over W, G and X; F1 for help", "dim"))
            analysis.update("")
            self._show_tree(None)
            return
        try:
            node = parse(text)
        except MetricError as e:
            self.node = None
            self._error = e
            self._show_error()
            analysis.update("")
            names = self.query_one("#known-names", Static)
            names.display = e.message.startswith(("unknown operator", "unknown name"))
            names.update(Text(known_names(), "dim"))
            self.set_class(True, "-error")
            tree = self.query_one("#metric-tree", Tree)
            if tree.root.children:  # the last formula that parsed stays, marked as such
                tree.border_title = "tree · stale: of the last formula that parsed"
                tree.add_class("-stale")
            return
        self._error = None
        self.query_one("#known-names").display = False
        self.set_class(False, "-error")
        self.node = node
        head = Text()
        head.append("✓ parses", "bold green")
        uses = ", ".join(sorted(node.terminals)) or "constants only"
        head.append(f"   size {node.size}, depth {node.depth}, uses {uses}", "dim")
        if node.uses_extended:
            head.append("   extended (pzshell only)", "yellow")
        status.update(head)
        analysis.update(Text("simplifying …", "dim"))
        self._show_tree(node)
        self._analyse(text)

    def _show_error(self) -> None:
        status = self.query_one("#parse-status", Static)
        # the caret lines fit the status line's width (the editor's, less the padding)
        width = self.size.width - status.styles.gutter.width
        status.update(caret_text(self._error, width if width > 0 else CARET_WIDTH))

    def on_resize(self) -> None:
        if self._error is not None:
            self._show_error()

    @work(thread=True, exclusive=True, exit_on_error=False, group="analysis")
    def _analyse(self, text: str) -> None:
        result = analyse(text)
        if not get_current_worker().is_cancelled:
            self.post_message(result)

    @on(MetricAnalysed)
    def _analysed(self, msg: MetricAnalysed) -> None:
        if msg.text != self.text:
            return  # stale: the user typed on
        out = Text()
        if msg.error:
            out.append(f"analysis failed: {msg.error}", "yellow")
        else:
            out.append("simplified  ", "bold cyan")
            out.append(f"{msg.simplified}\n")
            out.append("canonical   ", "bold cyan")
            out.append(f"{msg.canonical_key}  ", "magenta")
            out.append(f"{msg.canonical_text}")
            if msg.equivalent_to:
                out.append("\n≡ ", "bold green")
                out.append(f"same pruning rule as {msg.equivalent_to}", "green")
        self.query_one("#analysis", Static).update(out)

    def _show_tree(self, node: Node | None) -> None:
        tree = self.query_one("#metric-tree", Tree)
        tree.clear()
        tree.border_title = "tree"
        tree.remove_class("-stale")
        if node is None:
            return

        def add(parent, n: Node) -> None:
            label = Text(n.data, "bold" if n.is_op else ("green" if n.is_terminal else "yellow"))
            if not n.children:
                parent.add_leaf(label)
                return
            branch = parent.add(label, expand=True)
            for c in n.children:
                add(branch, c)

        add(tree.root, node)
        tree.root.expand()
