"""Formula text -> :class:`Node`, through the Lark grammar in ``grammar/metric.lark``."""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from ..paths import grammar_path
from .diagnostics import MetricError
from .ops import OPS, TERMINALS
from .tree import MAX_DEPTH, MAX_SIZE, MAX_TEXT, Node, format_number, from_json, load_tree_file

_NAMES = tuple(OPS) + TERMINALS

# What the user can write where Lark says a terminal of this name was expected; a terminal that
# is a fixed string (an infix symbol, a parenthesis, a comma) reads as that string in quotes.
_EXPECT_WORDS = {
    "NAME": "a name (W, G, X or an operator)",
    "NUMBER": "a number",
    "POW": "'^' or '**'",
    "$END": "the end of the formula",
}


def operator_rules() -> str:
    """The grammar rules ``expr`` down to ``factor``, generated from the operator registry.

    One left-associative rule per precedence level of the binary infix operators, loosest
    first, each level's operands being the next level; then ``factor``, the prefix operators
    over ``power`` (the rule for ``a^e`` in ``grammar/metric.lark``).
    """
    infix = [op for op in OPS.values() if op.infix]
    levels = sorted({op.prec for op in infix})
    names = ["expr"] + [f"prec{p}" for p in levels[1:]] + ["factor"]
    lines = []
    for i, prec in enumerate(levels):
        rule, operand = names[i], names[i + 1]
        alts = [f'{rule} "{op.infix}" {operand} -> {op.name}' for op in infix if op.prec == prec]
        lines.append(f"?{rule}: " + "\n    | ".join([*alts, operand]))
    alts = [f'"{op.prefix}" factor -> {op.name}' for op in OPS.values() if op.prefix]
    lines.append("?factor: " + "\n    | ".join([*alts, "power"]))
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=1)
def parser() -> Lark:
    """The LALR parser, built once per process."""
    grammar = Path(grammar_path("metric.lark")).read_text(encoding="utf-8")
    return Lark(grammar + "\n" + operator_rules(), parser="lalr", maybe_placeholders=False)


@lru_cache(maxsize=1)
def _literals() -> dict[str, str]:
    """Terminal name -> the fixed string it matches (``PLUS`` -> ``+``)."""
    return {t.name: t.pattern.value for t in parser().terminals if t.pattern.type == "str"}


def did_you_mean(name: str) -> str:
    close = [n for n in _NAMES if n.lower() == name.lower()]
    if not close:
        close = difflib.get_close_matches(name, _NAMES, n=2, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class _Error(Exception):
    """Raised inside the transformer; carries the column of the offending token."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


_BY_EXPONENT = {op.exponent: op.name for op in OPS.values() if op.exponent is not None}


@v_args(inline=True)
class _ToTree(Transformer):
    """Lark parse tree -> :class:`Node`. The handlers of the binary infix operators (one per
    operator, named as the operator) are added from the registry below the class."""

    def neg(self, a):
        # `-2` is the constant -2; `neg(2)` (call form) stays an operator applied to 2.
        if a.is_const:
            return Node.const(-a.value)
        return Node("neg", (a,))

    def power(self, base, _pow, exponent: Token):
        e = float(exponent)
        if e in _BY_EXPONENT:
            return Node(_BY_EXPONENT[e], (base,))
        raise _Error(
            f"unsupported exponent {exponent}: the language has squares (x^2) and square "
            f"roots (x^0.5 or sqrt(x)) only",
            exponent.column,
        )

    def number(self, tok: Token):
        try:
            return Node(format_number(float(tok)))
        except (MetricError, ValueError):
            raise _Error(f"number {tok} is out of range", tok.column) from None

    def name(self, tok: Token):
        if tok in TERMINALS:
            return Node(str(tok))
        if tok in OPS:
            n = OPS[tok].arity
            raise _Error(
                f"'{tok}' is an operator taking {n} argument{'s' * (n > 1)}; "
                f"write {tok}({', '.join('xy'[:n])})",
                tok.column,
            )
        raise _Error(f"unknown name '{tok}'{did_you_mean(str(tok))}", tok.column)

    def arglist(self, *args):
        return list(args)

    def call(self, tok: Token, args=None):
        args = args or []
        if tok not in OPS:
            hint = did_you_mean(str(tok))
            if tok in TERMINALS:
                raise _Error(f"'{tok}' is a terminal, not a function", tok.column)
            raise _Error(f"unknown operator '{tok}'{hint}", tok.column)
        arity = OPS[tok].arity
        if len(args) != arity:
            raise _Error(
                f"'{tok}' takes {arity} argument{'s' * (arity > 1)}, got {len(args)}",
                tok.column,
            )
        return Node(str(tok), tuple(args))


def _binary(name: str):
    def handler(self, a: Node, b: Node) -> Node:
        return Node(name, (a, b))

    handler.__name__ = name
    return handler


for _op in OPS.values():
    if _op.infix:
        setattr(_ToTree, _op.name, v_args(inline=True)(_binary(_op.name)))


def parse(text: str) -> Node:
    """Parse a formula such as ``abs(W*W)*mms(G)``; raises :class:`MetricError` with a caret."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MetricError(f"formula is not UTF-8 text (byte {e.start})") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # undecodable command-line bytes arrive as lone surrogates
        raise MetricError(
            "formula is not UTF-8 text (an undecodable byte)",
            source=text.encode("utf-8", "replace").decode("utf-8"),
            column=e.start + 1,
        ) from None
    if len(text) > MAX_TEXT:
        raise MetricError(
            f"formula is {len(text)} characters long, more than the limit of {MAX_TEXT}"
        )
    if not text.strip():
        raise MetricError(
            "empty formula: expected an expression over W, G, X such as W*sqrt(X)",
            source=text,
            column=1,
        )
    # Nesting is bounded before parsing so that pathological input cannot exhaust the stack.
    depth = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
            if depth > MAX_DEPTH:
                raise MetricError(
                    f"formula nests deeper than the limit of {MAX_DEPTH} parentheses",
                    source=text,
                    column=i + 1,
                )
        elif ch == ")":
            depth -= 1
    try:
        tree = parser().parse(text)
        node = _ToTree().transform(tree)
    except UnexpectedInput as e:
        raise _syntax_error(text, e) from None
    except VisitError as e:
        if isinstance(e.orig_exc, _Error):
            raise MetricError(e.orig_exc.message, source=text, column=e.orig_exc.column) from None
        raise
    except RecursionError:
        raise MetricError(
            f"formula nests deeper than the limit of {MAX_DEPTH} levels", source=text, column=1
        ) from None
    if node.depth > MAX_DEPTH:
        raise MetricError(
            f"formula is {node.depth} levels deep, more than the limit of {MAX_DEPTH}",
            source=text,
            column=1,
        )
    if node.size > MAX_SIZE:
        raise MetricError(
            f"formula has {node.size} nodes, more than the limit of {MAX_SIZE}",
            source=text,
            column=1,
        )
    return node


def _syntax_error(text: str, e: UnexpectedInput) -> MetricError:
    column = getattr(e, "column", None)
    if isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END"):
        column = len(text.rstrip()) + 1
        expected = _expected(getattr(e, "expected", None) or getattr(e, "accepts", None))
        opened = text.count("(") - text.count(")")
        what = (
            "unbalanced parentheses: a '(' is never closed" if opened > 0 else "formula ends early"
        )
        return MetricError(f"{what}; expected {expected}", source=text, column=column)
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "?"
        return MetricError(
            f"unexpected character {ch!r}; expected {_expected(e.allowed)}",
            source=text,
            column=e.column,
        )
    if isinstance(e, UnexpectedToken):
        tok = e.token
        expected = _expected(e.accepts or e.expected)
        if tok.type == "RPAR" and text[: tok.start_pos].count("(") < text[: tok.end_pos].count(")"):
            return MetricError(
                "unbalanced parentheses: this ')' has no matching '('",
                source=text,
                column=tok.column,
            )
        if "$END" in (e.accepts or e.expected) and tok.type not in ("LPAR",):
            return MetricError(
                f"unexpected {tok.value!r} after a complete formula (trailing input); "
                f"expected {expected}",
                source=text,
                column=tok.column,
            )
        return MetricError(
            f"unexpected {tok.value!r}; expected {expected}", source=text, column=tok.column
        )
    return MetricError(f"syntax error: {e}", source=text, column=column or 1)


def _expected(names) -> str:
    if not names:
        return "an expression"
    words = sorted({_word(n) for n in names})
    operand = {"a name (W, G, X or an operator)", "a number", "'('", "'-'"}
    if operand <= set(words):
        words = [w for w in words if w not in operand] + [
            "an operand (W, G, X, a number, a call or '(')"
        ]
    return ", ".join(words[:-1]) + (" or " if len(words) > 1 else "") + words[-1]


def _word(terminal: str) -> str:
    if terminal in _EXPECT_WORDS:
        return _EXPECT_WORDS[terminal]
    literal = _literals().get(terminal)
    return f"'{literal}'" if literal is not None else terminal.lower()


def load_metric(spec: str | Path) -> Node:
    """A formula, a Pruner-Zero JSON tree (inline, or a file: a :class:`Path`, or a string ending
    in ``.json``), or a shipped tree's name. Any other string is a formula, even if a file of
    that name exists (``W/G`` is a division, never the file ``./W/G``)."""
    if isinstance(spec, Path):
        return load_tree_file(spec)
    s = spec.strip()
    if s.startswith("{"):
        return from_json(s)
    if s.endswith(".json"):
        return load_tree_file(s)
    from .library import shipped_tree, shipped_tree_names

    if s in shipped_tree_names() and s not in TERMINALS:
        return shipped_tree(s)
    return parse(spec)


__all__ = ["parse", "load_metric", "parser", "did_you_mean", "MetricError"]
