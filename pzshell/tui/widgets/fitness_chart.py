"""Fitness over evaluations as a Unicode (braille) chart: every candidate as a dot, the best so
far as a bright step line, perplexity on a log axis (bad candidates reach 10^4 and more)."""

from __future__ import annotations

import math

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # braille bit per (row, col)


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v < 1e4 else f"{v:.0e}"


def render_chart(points: list[tuple[int, float]], width: int, height: int) -> Text:
    """``points``: (evaluation number, fitness). Returns ``height`` lines of ``width`` cells."""
    pts = [(x, y) for x, y in points if y is not None and math.isfinite(y) and y > 0]
    if width < 12 or height < 3:
        return Text("")
    if not pts:
        return Text(
            "\n" * (height // 2) + "  waiting for the first evaluation …".center(width), style="dim"
        )
    label_w = 7
    plot_w, plot_h = width - label_w - 1, height - 1
    cols, rows = plot_w * 2, plot_h * 4
    ys = [math.log10(y) for _, y in pts]
    best_line = []
    best = math.inf
    for x, y in sorted(pts):
        best = min(best, y)
        best_line.append((x, best))
    lo = min(ys)
    hi = min(max(ys), lo + 3)  # at most three decades: the interesting part is near the best
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    x_min = min(x for x, _ in pts)
    x_max = max(max(x for x, _ in pts), x_min + 1)
    cells = [[0] * plot_w for _ in range(plot_h)]
    bright = [[False] * plot_w for _ in range(plot_h)]

    def put(x: float, logy: float, hot: bool) -> None:
        c = min(cols - 1, int((x - x_min) / (x_max - x_min) * (cols - 1)))
        r = min(rows - 1, max(0, int((hi - min(logy, hi)) / (hi - lo) * (rows - 1))))
        cells[r // 4][c // 2] |= _DOTS[r % 4][c % 2]
        if hot:
            bright[r // 4][c // 2] = True

    for (x, _), ly in zip(pts, ys, strict=True):
        put(x, ly, False)
    for i, (x, y) in enumerate(best_line):  # step line: horizontal run to the next point
        nxt = best_line[i + 1][0] if i + 1 < len(best_line) else x_max
        steps = max(1, int((nxt - x) / (x_max - x_min) * cols))
        for k in range(steps + 1):
            put(x + (nxt - x) * k / steps, math.log10(y), True)
    out = Text(no_wrap=True)
    for r in range(plot_h):
        if r == 0:
            label = _fmt(10**hi)
        elif r == plot_h - 1:
            label = _fmt(10**lo)
        else:
            label = ""
        out.append(f"{label:>{label_w}}│", "dim")
        for c in range(plot_w):
            ch = chr(0x2800 + cells[r][c]) if cells[r][c] else " "
            out.append(ch, "bold green" if bright[r][c] else "blue")
        out.append("\n")
    axis = f"{x_min}{'evaluations':^{plot_w - len(str(x_max)) - len(str(x_min))}}{x_max}"
    out.append(" " * label_w + "└" + axis[:plot_w], "dim")
    return out


class FitnessChart(Widget):
    DEFAULT_CSS = """
    FitnessChart { height: 1fr; min-height: 4; border: round $panel; }
    """
    points: reactive[list] = reactive(list, always_update=True)

    def on_mount(self) -> None:
        self.border_title = "held-out ppl (log) per evaluation"

    def add(self, x: int, fitness: float) -> None:
        self.points = [*self.points, (x, fitness)]

    def clear(self) -> None:
        self.points = []

    def render(self) -> Text:
        return render_chart(self.points, self.content_size.width, self.content_size.height)
