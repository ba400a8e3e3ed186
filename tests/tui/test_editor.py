"""Type a formula: parse status with a caret, simplified form, canonical key, tree, equivalence."""

from __future__ import annotations

import pytest
from textual.widgets import Tree

from .conftest import static_text, wait_for

pytestmark = pytest.mark.asyncio


async def test_typing_a_formula_shows_parse_simplified_canonical_and_equivalence(make_app):
    app = make_app()
    async with app.run_test() as pilot:
        await pilot.press(*"abs(W*W)*mms(G)")
        assert app.editor.text == "abs(W*W)*mms(G)"
        assert "✓ parses" in static_text(app, "#parse-status")
        await wait_for(
            pilot, lambda: "same pruning rule" in static_text(app, "#analysis"), what="the analysis"
        )
        analysis = static_text(app, "#analysis")
        assert "simplified  W^2 * mms(G)" in analysis
        assert "canonical   f78a3b2fdcb5cdab" in analysis
        assert "same pruning rule as pruner_zero" in analysis
        tree = app.query_one("#metric-tree", Tree)
        labels = [str(n.label) for n in tree.root.children]
        assert labels == ["mul"]
        assert len(list(_walk(tree.root))) == 8  # root + 7 nodes


def _walk(node):
    yield node
    for c in node.children:
        yield from _walk(c)


async def test_rank_equivalent_formula_names_wanda(make_app):
    app = make_app(formula="W^2*X")
    async with app.run_test() as pilot:
        await wait_for(
            pilot,
            lambda: "same pruning rule as wanda" in static_text(app, "#analysis"),
            what="the wanda equivalence",
        )


async def test_parse_error_shows_the_caret_at_the_column(make_app):
    app = make_app()
    async with app.run_test() as pilot:
        app.editor.set_formula("W * foo(X)")
        await pilot.pause()
        status = static_text(app, "#parse-status").splitlines()
        assert status[0].startswith("✗ ") and "(column 5)" in status[0]
        assert status[1] == "  W * foo(X)"
        assert status[2] == "      ^"  # under the 'f' of foo, column 5
        assert app.editor.has_class("-error")
        assert app.editor.node is None
        assert static_text(app, "#analysis") == ""
        # fixing it clears the error
        app.editor.set_formula("W * sqrt(X)")
        await pilot.pause()
        assert "✓ parses" in static_text(app, "#parse-status")
        assert not app.editor.has_class("-error")


async def test_run_refuses_a_formula_that_does_not_parse(make_app, fake):
    app = make_app(formula="W*")
    async with app.run_test(notifications=True) as pilot:
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert len(app.queue) == 0
        assert not any(type(j).__name__ == "PruneRequest" for j in fake.jobs)
        assert any("does not parse" in n.message for n in app._notifications)


async def test_a_long_formula_error_keeps_its_caret_at_a_narrow_width(make_app):
    app = make_app()
    formula = "W*G + " * 20 + "foo(X)" + " + W*G" * 20
    async with app.run_test(size=(60, 24)) as pilot:
        app.editor.set_formula(formula)
        await pilot.pause()
        for width in (60, 40):
            *_, line, caret = static_text(app, "#parse-status").splitlines()
            assert len(line) <= width - 2 and len(caret) <= width - 2  # the padding
            assert line[caret.index("^")] == "f"
            await pilot.resize_terminal(40, 24)
            await pilot.pause()


# ---- the user review's rough edges -------------------------------------------------------------


# before: the tree of the last valid formula stayed under an error without saying so
async def test_the_tree_under_an_error_says_it_is_stale(make_app):
    app = make_app()
    async with app.run_test() as pilot:
        app.editor.set_formula("abs(W*W)")
        await pilot.pause()
        tree = app.query_one("#metric-tree", Tree)
        assert tree.border_title == "tree" and tree.root.children
        app.editor.set_formula("abs(W*W")
        await pilot.pause()
        assert "stale" in tree.border_title and tree.has_class("-stale")
        app.editor.set_formula("abs(W)")
        await pilot.pause()
        assert tree.border_title == "tree" and not tree.has_class("-stale")


# before: the editor said only "unknown operator 'foo'"; it now lists what the language knows,
# and keeps the command line's "did you mean" and caret (one renderer: MetricError.render)
async def test_an_unknown_operator_lists_the_operators(make_app):
    from pzshell.lang import PUBLISHED, MetricError, parse

    app = make_app()
    async with app.run_test() as pilot:
        app.editor.set_formula("foo(W)")
        await pilot.pause()
        status = static_text(app, "#parse-status")
        assert "unknown operator 'foo'" in status
        names = static_text(app, "#known-names")  # below the caret
        assert app.query_one("#known-names").display
        assert "operators: " + ", ".join(PUBLISHED) in names and "terminals: W, G, X" in names
        app.editor.set_formula("W*lgo(G)")
        await pilot.pause()
        status = static_text(app, "#parse-status")
        with pytest.raises(MetricError) as e:
            parse("W*lgo(G)")
        assert "did you mean 'log'?" in status
        width = app.editor.size.width - 2
        head, line, caret = e.value.render(width).rsplit("\n", 2)  # the CLI's rendering
        assert status.startswith("✗ " + head) and status.endswith(f"\n{line}\n{caret}")
        app.editor.set_formula("W*log(G)")
        await pilot.pause()
        assert not app.query_one("#known-names").display
