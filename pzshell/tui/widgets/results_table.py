"""Every finished run, with the dense model and Wanda as reference rows; sortable by any column
(click a header, or press s to cycle); Enter opens the row's formula in the editor; Delete
removes a row and u brings it back."""

from __future__ import annotations

import math

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from ...worker.protocol import how_suffix
from ..messages import OpenFormula

COLUMNS = (
    ("formula", "formula"),
    ("sparsity", "sparsity"),
    ("type", "type"),
    ("ppl", "ppl"),
    ("seconds", "time"),
    ("model", "model"),
    ("eval", "eval"),
)


def _num(x) -> float:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else math.inf


def sort_value(row: dict, column: str):
    if column == "formula":
        return (row.get("kind") == "metric", row.get("formula") or "")
    if column == "sparsity":
        return _num(row.get("sparsity_ratio"))
    if column == "type":
        return type_label(row)
    if column == "ppl":
        return _num(row.get("ppl"))
    if column == "seconds":
        return _num(row.get("seconds"))
    if column == "model":
        return row.get("model") or ""
    return row.get("finished_at") or ""


def type_label(row: dict) -> str:
    """The type column: the sparsity pattern (``+ swaps`` when the mask was refined, ``+ refit``
    when the kept weights were refitted), or "dense" for the dense reference (whose results record
    the pattern "unstructured" at ratio 0, like every job's)."""
    if row.get("kind") == "dense":
        return "dense"
    return str(row.get("sparsity_type") or "") + how_suffix(row.get("refine"), row.get("refit"))


def cells(row: dict) -> list:
    ref = row.get("kind") != "metric"
    style = "italic cyan" if ref else ""
    name = f"({row.get('kind')})" if ref else (row.get("formula") or "?")
    ppl = row.get("ppl")
    ppl_s = f"{ppl:.2f}" if isinstance(ppl, (int, float)) and math.isfinite(ppl) else "—"
    ev = ""
    if row.get("eval_windows"):
        ev = f"{row['eval_windows']}×{row.get('eval_seqlen')}"
    return [
        Text(name, style=style, overflow="ellipsis", no_wrap=True),
        Text("—" if ref and row.get("kind") == "dense" else f"{row.get('sparsity_ratio', 0):.0%}"),
        Text(type_label(row)),
        Text(ppl_s, style="bold", justify="right"),
        Text(f"{row.get('seconds', 0):.1f}s", justify="right"),
        Text(str(row.get("model") or "")),
        Text(ev, style="dim"),
    ]


def header(label: str, reverse: bool | None) -> Text:
    """A column's header: its name and a cell for the sort arrow (blank: not sorted by it)."""
    arrow = " " if reverse is None else ("▼" if reverse else "▲")
    return Text(f"{label}{arrow}")


class ResultsTable(DataTable):
    DEFAULT_CSS = """
    ResultsTable { height: 1fr; }
    """
    BINDINGS = [
        Binding("s", "cycle_sort", "Sort"),
        Binding("r", "reverse_sort", "Reverse"),
        Binding("delete", "delete_row", "Delete row", show=False),
        Binding("u", "app.undo_delete", "Undo delete", show=False),
    ]

    def __init__(self, **kwargs):
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.rows_by_key: dict[str, dict] = {}
        self.sort_column = "ppl"
        self.sort_reverse = False

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            # every header keeps a cell for the sort arrow, so that it shows on any column
            width = {"formula": 20, "ppl": 8}.get(key)
            self.add_column(header(label, None), key=key, width=width)

    def load(self, rows: list[dict]) -> None:
        self.clear()
        self.rows_by_key = {}
        for row in rows:
            self.add_result(row, resort=False)
        self.resort()

    def add_result(self, row: dict, resort: bool = True) -> None:
        key = row["id"]
        self.rows_by_key[key] = row
        self.add_row(*cells(row), key=key)
        if resort:
            self.resort()
            self.move_cursor(row=self.get_row_index(key))

    def resort(self) -> None:
        col = self.sort_column
        rows = self.rows_by_key
        order = sorted(rows.values(), key=lambda r: sort_value(r, col), reverse=self.sort_reverse)
        cursor_key = None
        if self.row_count and self.cursor_row < self.row_count:
            cursor_key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        self.clear()
        for r in order:
            self.add_row(*cells(r), key=r["id"])
        for key, label in COLUMNS:
            self.columns[key].label = header(label, self.sort_reverse if key == col else None)
        if cursor_key in rows:
            self.move_cursor(row=self.get_row_index(cursor_key))
        self.refresh()

    def sort_by(self, column: str) -> None:
        if column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = column, False
        self.resort()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(str(event.column_key.value))

    def action_cycle_sort(self) -> None:
        keys = [k for k, _ in COLUMNS]
        i = keys.index(self.sort_column) if self.sort_column in keys else -1
        self.sort_column, self.sort_reverse = keys[(i + 1) % len(keys)], False
        self.resort()

    def action_reverse_sort(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self.resort()

    def selected(self) -> dict | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return self.rows_by_key.get(key)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        row = self.rows_by_key.get(event.row_key.value)
        if row and row.get("formula"):
            self.post_message(OpenFormula(row["formula"], "results"))
        elif row:
            self.notify(f"({row.get('kind')}) is a reference row with no formula")

    def action_delete_row(self) -> None:
        row = self.selected()
        if row:
            self.app.delete_result(row["id"])  # type: ignore[attr-defined]
