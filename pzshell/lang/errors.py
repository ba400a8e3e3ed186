"""One error type for everything a user can get wrong in the metric language."""

from __future__ import annotations

from ..errors import PzError


class MetricError(PzError, ValueError):
    """A formula or tree that cannot be used, with enough context to fix it.

    ``source`` is the formula text (for parse errors) and ``column`` the 1-based column of the
    problem; ``path`` is the location inside a JSON tree (``right.left``). ``str()`` gives a
    one-paragraph message with a caret under the offending column when there is one.
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

    def __str__(self) -> str:
        head = self.message
        if self.path is not None:
            head = f"{self.path or '<root>'}: {head}"
        if self.origin:
            head = f"{self.origin}: {head}"
        if self.source is None or self.column is None:
            return head
        line = self.source.replace("\n", " ").replace("\t", " ")
        col = max(1, min(self.column, len(line) + 1))
        # keep very long formulas readable: show a window around the column
        start = 0
        if len(line) > 76:
            start = max(0, min(col - 38, len(line) - 76))
            line = line[start : start + 76]
        return f"{head} (column {self.column})\n  {line}\n  {' ' * (col - 1 - start)}^"


class DegenerateMetric(MetricError):
    """The metric produced values that cannot rank weights (NaN, inf, or constant)."""
