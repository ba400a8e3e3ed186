"""``pzshell parse`` / ``pzshell trees``, and every kind of bad input through the CLI."""

from __future__ import annotations

import json

import pytest

from pzshell.cli import main
from pzshell.lang import Node, from_json, parse, to_infix, to_json
from pzshell.lang.library import shipped_tree_path
from pzshell.lang.tree import MAX_DEPTH, MAX_SIZE, MAX_TEXT


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(capsys, argv, *fragments, column=None, under=None):
    """Exit status 2, a one-paragraph message without a traceback, and (with ``column``) a
    caret under the offending character (``under``; by default the formula's character at
    ``column``)."""
    rc, out, err = run(capsys, *argv)
    text = out + err
    assert rc == 2, text
    assert "Traceback" not in text
    assert err.startswith("error: "), err
    for f in fragments:
        assert f in err, f"{f!r} not in {err!r}"
    if column is not None:
        assert f"(column {column})" in err
        lines = err.splitlines()
        at = [i for i, line in enumerate(lines) if line.strip() == "^"]
        assert at, err
        caret, source = lines[at[0]], lines[at[0] - 1]
        formula = argv[-1]
        if under is None and column <= len(formula):
            under = formula[column - 1]
        if under is not None:
            assert source[caret.index("^")] == under, err
    return err


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def test_empty_formula(capsys):
    assert_user_error(capsys, ["parse", ""], "empty formula", column=1)
    assert_user_error(capsys, ["parse", "   "], "empty formula", column=1)


def test_unknown_name_suggests(capsys):
    assert_user_error(
        capsys,
        ["parse", "W * sqrtt(X)"],
        "unknown operator 'sqrtt'",
        "did you mean 'sqrt'",
        column=5,
    )
    assert_user_error(capsys, ["parse", "W * w"], "unknown name 'w'", "did you mean 'W'", column=5)
    assert_user_error(capsys, ["parse", "Mms(G)"], "did you mean 'mms'", column=1)


def test_wrong_number_of_arguments(capsys):
    assert_user_error(capsys, ["parse", "mul(W)"], "'mul' takes 2 arguments, got 1", column=1)
    assert_user_error(
        capsys, ["parse", "W + sqrt(W, G)"], "'sqrt' takes 1 argument, got 2", column=5
    )
    assert_user_error(capsys, ["parse", "W * mms"], "'mms' is an operator", column=5)


def test_unbalanced_parentheses(capsys):
    assert_user_error(capsys, ["parse", "(W + G"], "a '(' is never closed", column=7)
    assert_user_error(capsys, ["parse", "W + G)"], "this ')' has no matching '('", column=6)
    assert_user_error(capsys, ["parse", "sqrt(W"], "never closed", "expected", column=7)


def test_trailing_garbage(capsys):
    assert_user_error(capsys, ["parse", "W G"], "trailing input", column=3)
    assert_user_error(capsys, ["parse", "W * X $"], "unexpected character '$'", column=7)
    assert_user_error(capsys, ["parse", "W ^ 3"], "unsupported exponent 3", column=5)


def test_depth_past_the_limit(capsys):
    deep = "sqrt(" * (MAX_DEPTH + 6) + "W" + ")" * (MAX_DEPTH + 6)
    column = len("sqrt(") * (MAX_DEPTH + 1)  # the first '(' past the limit
    assert_user_error(capsys, ["parse", deep], f"limit of {MAX_DEPTH}", column=column)
    assert_user_error(capsys, ["parse", "--", "-" * 100 + "W"], f"limit of {MAX_DEPTH}")


def test_size_past_the_limit(capsys):
    t = Node("W")
    for _ in range(11):  # a balanced tree: 4095 nodes, depth 12
        t = Node("add", (t, t))
    text = to_infix(t)
    assert len(text) <= MAX_TEXT and t.size > MAX_SIZE and t.depth <= MAX_DEPTH
    assert_user_error(capsys, ["parse", text], f"more than the limit of {MAX_SIZE}")


def test_huge_input(capsys, tmp_path):
    assert_user_error(capsys, ["parse", "W+" * MAX_TEXT + "W"], "characters long")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 3_000_000 + b'{"data": "W"}')
    assert_user_error(capsys, ["parse", str(big)], "too large")


def test_non_utf8(capsys, tmp_path):
    f = tmp_path / "latin1.json"
    f.write_bytes(b'{"data": "W\xff"}')
    assert_user_error(capsys, ["parse", str(f)], "not UTF-8", "0xff", str(f))
    # undecodable command-line bytes reach Python as lone surrogates
    assert_user_error(capsys, ["parse", "W*\udcffX"], "not UTF-8", column=3, under="?")


def test_malformed_json(capsys, tmp_path):
    err = assert_user_error(capsys, ["parse", '{"data": "mul",'], "malformed JSON", column=16)
    assert "line 1" in err
    f = tmp_path / "bad.json"
    f.write_text('{\n    "data": "mul"\n    "left": {"data": "W"}\n}')
    assert_user_error(
        capsys, ["parse", str(f)], "malformed JSON", "line 3", str(f), column=5, under='"'
    )


def test_json_unknown_operator_names_the_path(capsys, tmp_path):
    tree = {
        "data": "mul",
        "left": {"data": "W"},
        "right": {"data": "add", "left": {"data": "foo"}, "right": {"data": "G"}},
    }
    f = tmp_path / "t.json"
    f.write_text(json.dumps(tree))
    assert_user_error(capsys, ["parse", str(f)], "right.left: unknown operator 'foo'")
    tree["right"]["left"]["data"] = "sqrtt"
    assert_user_error(capsys, ["parse", json.dumps(tree)], "right.left", "did you mean 'sqrt'")


def test_json_missing_children(capsys):
    assert_user_error(
        capsys,
        ["parse", '{"data": "mul", "left": {"data": "W"}}'],
        "<root>: operator 'mul' takes 2 operands but 'right' is missing",
    )
    assert_user_error(
        capsys,
        ["parse", '{"data": "sqrt", "left": {"data": "W"}, "right": {"data": "G"}}'],
        "unary",
    )
    assert_user_error(capsys, ["parse", '{"data": "W", "left": {"data": "G"}}'], "leaf 'W'")
    assert_user_error(capsys, ["parse", '{"left": {"data": "G"}}'], "no 'data' key")
    assert_user_error(capsys, ["parse", "[1, 2]"], "unexpected character '['", column=1)


def test_missing_file(capsys, tmp_path):
    assert_user_error(capsys, ["parse", str(tmp_path / "nope.json")], "no such file")
    # a path that is not a .json name is a formula; the error says how to read the file
    assert_user_error(capsys, ["parse", str(tmp_path)], "exists: to read a tree file, add --file")
    assert_user_error(capsys, ["parse", str(tmp_path), "--file"], "is a directory")


def test_user_text_that_looks_like_markup_is_printed_verbatim(capsys):
    err = assert_user_error(capsys, ["parse", '{"data": "[/foo]"}'], "unknown operator")
    assert "[/foo]" in err


# ---------------------------------------------------------------------------------------------
# pzshell parse
# ---------------------------------------------------------------------------------------------


def test_parse_json_output(capsys):
    rc, out, _ = run(capsys, "parse", "--json", "abs(W*W)*mms(G)")
    assert rc == 0
    info = json.loads(out)  # exactly one JSON object
    assert {"tree", "infix", "simplified", "canonical", "latex"} <= set(info)
    assert info["tree"] == json.loads(shipped_tree_path("pruner_zero").read_text())
    assert info["infix"] == "abs(W * W) * mms(G)"
    assert info["simplified"] == "W^2 * mms(G)"
    assert info["equivalent_to"] == "pruner_zero"
    assert len(info["canonical"]) == 16
    assert info["terminals"] == ["G", "W"] and info["size"] == 7 and info["depth"] == 4
    assert info["extended"] is False


def test_parse_json_tree_is_the_formula_as_typed(capsys):
    rc, out, _ = run(capsys, "parse", "--json", "skp(W) * sqrt(X)")
    info = json.loads(out)
    assert from_json(json.dumps(info["tree"])) == parse("skp(W) * sqrt(X)")
    assert info["simplified"] == "W * sqrt(X)" and info["equivalent_to"] == "wanda"


def test_parse_accepts_files_and_shipped_names(capsys):
    rc, out, _ = run(capsys, "parse", "--json", "ria")
    info = json.loads(out)
    assert rc == 0 and info["extended"] is True and info["tree"]["pzshell"]["requires"]
    rc, out, _ = run(capsys, "parse", "--json", str(shipped_tree_path("wanda")))
    assert json.loads(out)["infix"] == "W * sqrt(X)"


def test_parse_rich_view(capsys):
    rc, out, _ = run(capsys, "parse", "W^2 * X")
    assert rc == 0
    for fragment in (
        "sqr",
        "W^2 * X",
        "same pruning rule as wanda",
        "W*sqrt(X)",
        r"W^{2} \cdot X",
        '"data": "mul"',
        "loads in the original",
    ):
        assert fragment in out, fragment
    rc, out, _ = run(capsys, "parse", "rown(W) * 2")
    assert "needs pzshell" in out and "rown" in out


def test_parse_save(capsys, tmp_path):
    dest = tmp_path / "best.json"
    rc, _, _ = run(capsys, "parse", "abs(W*W)*mms(G)", "--save", str(dest))
    assert rc == 0
    assert dest.read_text() == shipped_tree_path("pruner_zero").read_text()
    assert to_json(from_json(dest.read_text())) == dest.read_text()
    assert_user_error(
        capsys, ["parse", "W", "--save", str(tmp_path / "no" / "dir.json")], "cannot write"
    )


def test_parse_leading_minus_after_double_dash(capsys):
    rc, out, _ = run(capsys, "parse", "--json", "--", "-W*X")
    assert rc == 0 and json.loads(out)["infix"] == "-W * X"


# ---------------------------------------------------------------------------------------------
# pzshell trees
# ---------------------------------------------------------------------------------------------


def test_trees_lists_the_shipped_trees(capsys):
    rc, out, _ = run(capsys, "trees")
    assert rc == 0
    for name in ("magnitude", "wanda", "pruner_zero", "ria"):
        assert name in out
    assert "yes (needs pzshell)" in out


def test_trees_json_and_user_dir(capsys, tmp_path):
    (tmp_path / "mine.json").write_text(to_json(parse("W * G")))
    rc, out, _ = run(capsys, "trees", "--json", "--dir", str(tmp_path))
    rows = {r["name"]: r for r in json.loads(out)}
    assert rc == 0
    assert set(rows) == {"magnitude", "wanda", "pruner_zero", "ria", "mine"}
    assert rows["ria"]["extended"] and not rows["wanda"]["extended"]
    assert rows["mine"]["formula"] == "W * G" and rows["mine"]["source"].endswith("mine.json")
    (tmp_path / "broken.json").write_text('{"data": "nope"}')
    rc, out, _ = run(capsys, "trees", "--dir", str(tmp_path))
    assert rc == 2 and "broken" in out and "unknown operator" in out and "mine" in out
    assert_user_error(capsys, ["trees", "--dir", str(tmp_path / "missing")], "not a directory")


@pytest.mark.parametrize("argv", [["parse", "--help"], ["trees", "--help"]])
def test_help(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_a_formula_is_never_read_as_a_file(tmp_path, monkeypatch, capsys):
    """`W/G` is a division even where a file ./W/G exists; a tree file ends in .json or is
    named with --file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "W").mkdir()
    (tmp_path / "W" / "G").write_text(to_json(parse("abs(W)")))
    assert main(["parse", "W/G", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["infix"] == "W / G"
    tree = tmp_path / "mytree"  # no .json suffix: only --file reads it
    tree.write_text(to_json(parse("W*sqrt(X)")))
    assert main(["parse", str(tree), "--file", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["infix"] == "W * sqrt(X)"
    assert main(["parse", str(tmp_path / "missing"), "--file"]) == 2
    assert "missing" in capsys.readouterr().err
