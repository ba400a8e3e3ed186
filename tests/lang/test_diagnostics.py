"""The one caret renderer: the formula and a caret under the bad column, fitting a width."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pzshell.lang import MetricError, parse
from pzshell.lang.diagnostics import CARET_WIDTH, caret_lines


def test_a_short_formula_is_shown_whole():
    line, caret = caret_lines("W * foo(X)", 5)
    assert line == "  W * foo(X)"
    assert caret == "      ^"


def test_a_column_past_the_end_puts_the_caret_after_the_last_character():
    line, caret = caret_lines("sqrt(W", 7)
    assert caret.index("^") == len(line)


def test_newlines_and_tabs_show_as_spaces_so_the_caret_stays_aligned():
    line, caret = caret_lines("W *\n\tfoo", 6)
    assert line == "  W *  foo"
    assert line[caret.index("^")] == "f"


@pytest.mark.parametrize("width", [20, 40, 80])
def test_a_long_formula_shows_a_window_around_the_column(width):
    formula = "W*G + " * 30 + "foo(X)" + " + W*G" * 30
    column = formula.index("foo") + 1
    line, caret = caret_lines(formula, column, width)
    assert len(line) <= width and len(caret) <= width
    assert line.startswith("  …") and line.endswith("…")
    assert line[caret.index("^")] == "f"


@given(
    st.text(alphabet="WGX*+-() abc", max_size=300),
    st.integers(min_value=1, max_value=320),
    st.integers(min_value=10, max_value=120),
)
def test_both_lines_fit_and_the_caret_is_under_the_column(formula, column, width):
    line, caret = caret_lines(formula, column, width)
    assert len(line) <= width and len(caret) <= width
    at = caret.index("^")
    col = min(column, len(formula) + 1) - 1
    if col < len(formula):
        assert line[at] == formula[col]
    else:
        assert at == len(line)


def test_the_message_of_a_parse_error_fits_80_columns():
    deep = "sqrt(" * 70 + "W" + ")" * 70
    with pytest.raises(MetricError) as e:
        parse(deep)
    head, line, caret = str(e.value).split("\n")
    assert head.endswith(f"(column {e.value.column})")
    assert len(line) <= CARET_WIDTH and len(caret) <= CARET_WIDTH
    assert line[caret.index("^")] == "("
    # another width on request, the same caret column in the formula
    narrow = e.value.render(40).split("\n")
    assert len(narrow[1]) <= 40 and narrow[1][narrow[2].index("^")] == "("


def test_an_error_without_a_column_has_no_caret():
    err = MetricError("no such file: x.json", origin=None)
    assert str(err) == "no such file: x.json"
    assert str(MetricError("bad", path="right.left", origin="t.json")) == "t.json: right.left: bad"
