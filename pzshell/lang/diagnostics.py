"""One error type for everything a user can get wrong in the metric language."""

from __future__ import annotations

from ..errors import PzError

CARET_WIDTH = 80
"""The width the caret lines of ``str(MetricError)`` fit in: an 80-column terminal."""

_ELLIPSIS = "…"


def caret_lines(
    source: str, column: int, width: int = CARET_WIDTH, indent: int = 2
) -> tuple[str, str]:
    """The formula and a caret line under its 1-based ``column``: the one rendering of a
    formula error, used by ``str(MetricError)`` (the command line) and the metric editor.

    Both lines start with ``indent`` spaces and are at most ``width`` characters long, so
    neither wraps in a terminal or widget of that width. A formula too long for that shows a
    window around the column, with ``…`` where it is cut. Newlines and tabs show as spaces
    so that the caret stays under its character. A column past the end (a formula that ends
    early) puts the caret just after the last character.
    """
    text = source.replace("\n", " ").replace("\t", " ")
    room = max(width - indent, 8)  # characters of formula that fit, caret position included
    col = max(1, min(column, len(text) + 1)) - 1  # 0-based
    if len(text) < room:
        shown, at = text, col
    else:
        # a window of `room` characters, the caret about in its middle, with an ellipsis in
        # place of the first and/or last character where the formula is cut
        start = max(0, min(col - room // 2, len(text) + 1 - room))
        end = start + room
        shown = text[start:end]
        if start > 0:
            shown = _ELLIPSIS + shown[1:]
        if end < len(text):
            shown = shown[:-1] + _ELLIPSIS
        at = col - start
    pad = " " * indent
    return pad + shown, pad + " " * at + "^"


class MetricError(PzError, ValueError):
    """A formula or tree that cannot be used, with enough context to fix it.

    ``source`` is the formula text (for parse errors) and ``column`` the 1-based column of the
    problem; ``path`` is the location inside a JSON tree (``right.left``). ``str()`` gives a
    one-paragraph message with a caret under the offending column when there is one
    (:func:`caret_lines`), fitting an 80-column terminal; :meth:`render` fits another width.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        column: int | None = None,
        path: str | None = None,
        origin: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.source = source
        self.column = column
        self.path = path
        self.origin = origin  # e.g. a file name

    @property
    def head(self) -> str:
        """The message with its origin (a file) and path (inside a JSON tree), without caret."""
        head = self.message
        if self.path is not None:
            head = f"{self.path or '<root>'}: {head}"
        if self.origin:
            head = f"{self.origin}: {head}"
        return head

    def render(self, width: int = CARET_WIDTH) -> str:
        """The message, and when there is a column the formula and a caret under it, each of
        these two lines at most ``width`` characters (see :func:`caret_lines`)."""
        if self.source is None or self.column is None:
            return self.head
        line, caret = caret_lines(self.source, self.column, width)
        return f"{self.head} (column {self.column})\n{line}\n{caret}"

    def __str__(self) -> str:
        return self.render()


class DegenerateMetric(MetricError):
    """The metric produced values that cannot rank weights (NaN, inf, or constant)."""
