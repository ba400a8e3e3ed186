"""Immutable metric trees, their printers, and the Pruner-Zero JSON interchange format."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .. import atomic
from .diagnostics import MetricError
from .ops import EXTENDED_TERMINALS, OPS, PREC_ATOM, PREC_POWER, PREC_PREFIX, PREC_SUM, TERMINALS

MAX_DEPTH = 64
"""Deepest tree accepted from text or JSON (a GP search never gets near this)."""
MAX_SIZE = 2000
"""Most nodes accepted in one tree."""
MAX_TEXT = 20_000
"""Longest formula text accepted, in characters."""

EXTENDED_MARK = "pzshell"
"""Root key added to saved JSON trees that use operators the original code cannot read."""


@dataclass(frozen=True)
class Node:
    """A node of a metric tree.

    ``data`` is an operator name (see :mod:`pzshell.lang.ops`), a terminal ``W``/``G``/``X``, or
    a numeric constant written as text (``"2"``, ``"0.5"``) exactly as in Pruner-Zero JSON.
    """

    data: str
    children: tuple[Node, ...] = ()

    # ---- construction -------------------------------------------------------------------------
    @staticmethod
    def const(value: float) -> Node:
        return Node(format_number(value))

    # ---- classification -----------------------------------------------------------------------
    @property
    def is_op(self) -> bool:
        return self.data in OPS

    @property
    def is_terminal(self) -> bool:
        return self.data in TERMINALS

    @property
    def is_const(self) -> bool:
        return not self.is_op and not self.is_terminal

    @property
    def value(self) -> float:
        return float(self.data)

    # ---- measures (cached: nodes are immutable) -----------------------------------------------
    @cached_property
    def size(self) -> int:
        return 1 + sum(c.size for c in self.children)

    @cached_property
    def depth(self) -> int:
        return 1 + max((c.depth for c in self.children), default=0)

    @cached_property
    def terminals(self) -> frozenset[str]:
        if self.is_terminal:
            return frozenset({self.data})
        out: frozenset[str] = frozenset()
        for c in self.children:
            out |= c.terminals
        return out

    @cached_property
    def uses_extended(self) -> bool:
        """An extended operator (``rown``, ``coln``) or terminal (``S``) occurs in the tree."""
        here = (self.is_op and OPS[self.data].extended) or self.data in EXTENDED_TERMINALS
        return here or any(c.uses_extended for c in self.children)

    @cached_property
    def has_constants(self) -> bool:
        return self.is_const or any(c.has_constants for c in self.children)

    @property
    def needs_pzshell(self) -> bool:
        """True when the reference ``GPTree.load_tree`` cannot read this tree: it knows only the
        published operators and the leaves W, G, X (a numeric label raises ``Unknown label``)."""
        return self.uses_extended or self.has_constants

    def walk(self):
        """Yield ``(path, node)`` for every node, pre-order; paths look like ``left.right``."""
        stack: list[tuple[str, Node]] = [("", self)]
        while stack:
            path, node = stack.pop()
            yield path, node
            for key, child in reversed(list(zip(("left", "right"), node.children, strict=False))):
                stack.append((f"{path}.{key}" if path else key, child))

    def __str__(self) -> str:
        return to_infix(self)

    def __repr__(self) -> str:
        return f"Node({to_infix(self)!r})"


def format_number(value: float) -> str:
    """The text form of a constant: integral values without a decimal point (``2``, not ``2.0``)."""
    if not math.isfinite(value):
        raise MetricError(f"constant {value!r} is not a finite number")
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def is_number_text(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# Infix printing (re-parses to the same tree) and LaTeX
# ---------------------------------------------------------------------------------------------


def _prec(node: Node) -> int:
    """How tightly the printed form of ``node`` binds (the registry's ``Op.prec``)."""
    if node.is_const and node.value < 0:
        return PREC_PREFIX  # printed with a unary minus
    return OPS[node.data].prec if node.is_op else PREC_ATOM


def to_infix(node: Node) -> str:
    """Readable formula text; ``parse(to_infix(t)) == t`` for every tree ``t``."""
    if not node.is_op:
        return node.data
    op = OPS[node.data]
    if op.infix:
        left, right = node.children
        a = _wrap(left, _prec(left) < op.prec)
        # left-associative grammar: a right operand of equal precedence needs parentheses
        b = _wrap(right, _prec(right) <= op.prec)
        return f"{a} {op.infix} {b}"
    if op.prefix and not node.children[0].is_const:
        # a literal keeps the call form (`neg(2)`): `-2` would re-parse as the constant -2
        (child,) = node.children
        return f"{op.prefix}{_wrap(child, _prec(child) < op.prec)}"
    if op.exponent is not None and op.prec == PREC_POWER:
        # the base of a power is an atom: `-W^2` parses as -(W^2), so (-W)^2 keeps its parentheses
        (child,) = node.children
        return f"{_wrap(child, _prec(child) < PREC_ATOM)}^{format_number(op.exponent)}"
    args = ", ".join(to_infix(c) for c in node.children)
    return f"{node.data}({args})"


def _wrap(node: Node, paren: bool) -> str:
    text = to_infix(node)
    return f"({text})" if paren else text


def to_latex(node: Node) -> str:
    """LaTeX for the formula with the exact (protected) semantics of each operator."""
    if node.is_terminal:
        return node.data
    if node.is_const:
        return node.data
    op = OPS[node.data]
    args = []
    for i, c in enumerate(node.children):
        s = to_latex(c)
        sum_child = c.is_op and OPS[c.data].prec == PREC_SUM
        signed = (c.is_const and c.value < 0) or c.data == "neg"
        # a sum under a product, a negation or a subtrahend, and a signed operand after an
        # infix operator or under a negation, need parentheses
        after = op.infix == "*" or node.data == "neg" or (op.infix == "-" and i == 1)
        if (sum_child and after) or (signed and (after or (op.infix == "+" and i == 1))):
            s = rf"\left({s}\right)"
        args.append(s)
    return op.latex(*args)


# ---------------------------------------------------------------------------------------------
# Pruner-Zero JSON
# ---------------------------------------------------------------------------------------------


def to_json_obj(node: Node, *, mark_extended: bool = True) -> dict[str, Any]:
    """The Pruner-Zero dict form: ``{"data": name, "left": ..., "right": ...}``.

    Trees the original code cannot read (pzshell's extended operators, numeric constants) get a
    root key ``"pzshell"`` saying so; the original loader ignores unknown keys, but would reject
    those labels anyway.
    """

    def conv(n: Node) -> dict[str, Any]:
        out: dict[str, Any] = {"data": n.data}
        for key, child in zip(("left", "right"), n.children, strict=False):
            out[key] = conv(child)
        return out

    obj = conv(node)
    if mark_extended and node.needs_pzshell:
        mark: dict[str, Any] = {
            "requires": "pzshell",
            "extended_ops": sorted(
                {n.data for _, n in node.walk() if n.is_op and OPS[n.data].extended}
            ),
        }
        extended_leaves = sorted(node.terminals & set(EXTENDED_TERMINALS))
        if extended_leaves:
            mark["extended_terminals"] = extended_leaves
        if node.has_constants:
            # the reference loader accepts only W, G, X and operator names as labels
            mark["constants"] = sorted({n.data for _, n in node.walk() if n.is_const}, key=float)
        obj[EXTENDED_MARK] = mark
    return obj


def to_json(node: Node) -> str:
    """Text exactly as the reference ``GPTree.save_tree`` writes it (indent 4, no newline)."""
    return json.dumps(to_json_obj(node), indent=4)


def from_json_obj(obj: Any, *, origin: str | None = None) -> Node:
    """Build a tree from the Pruner-Zero dict form, naming the path of any problem."""

    def build(o: Any, path: str, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise MetricError(
                f"tree is deeper than the limit of {MAX_DEPTH} levels", path=path, origin=origin
            )
        if not isinstance(o, dict):
            raise MetricError(
                f"expected an object with a 'data' key, found {type(o).__name__}",
                path=path,
                origin=origin,
            )
        if "data" not in o:
            raise MetricError("node has no 'data' key", path=path, origin=origin)
        label = o["data"]
        if isinstance(label, bool) or not isinstance(label, (str, int, float)):
            raise MetricError(
                f"'data' must be an operator name, W, G, X or a number, found {label!r}",
                path=path,
                origin=origin,
            )
        label = format_number(label) if isinstance(label, (int, float)) else label.strip()
        sub = lambda key: f"{path}.{key}" if path else key  # noqa: E731
        if label in OPS:
            arity = OPS[label].arity
            keys = ("left", "right")[:arity]
            for key in keys:
                if o.get(key) is None:
                    raise MetricError(
                        f"operator '{label}' takes {arity} operand{'s' * (arity > 1)} "
                        f"but '{key}' is missing",
                        path=path,
                        origin=origin,
                    )
            if arity == 1 and o.get("right") is not None:
                raise MetricError(
                    f"operator '{label}' is unary (uses 'left' only) but has a 'right' child",
                    path=path,
                    origin=origin,
                )
            return Node(label, tuple(build(o[k], sub(k), depth + 1) for k in keys))
        if label in TERMINALS or is_number_text(label):
            for key in ("left", "right"):
                if o.get(key) is not None:
                    raise MetricError(
                        f"leaf '{label}' cannot have a '{key}' child", path=path, origin=origin
                    )
            return Node(label if label in TERMINALS else format_number(float(label)))
        from .parse import did_you_mean

        raise MetricError(
            f"unknown operator {label!r}{did_you_mean(label)}", path=path, origin=origin
        )

    node = build(obj, "", 1)
    if node.size > MAX_SIZE:
        raise MetricError(
            f"tree has {node.size} nodes, more than the limit of {MAX_SIZE}", origin=origin
        )
    return node


def from_json(text: str | bytes, *, origin: str | None = None) -> Node:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MetricError(
                f"not UTF-8 text (byte {e.start} is 0x{text[e.start]:02x})", origin=origin
            ) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        line = text.splitlines()[e.lineno - 1] if text.splitlines() else ""
        raise MetricError(
            f"malformed JSON: {e.msg} (line {e.lineno})",
            source=line,
            column=e.colno,
            origin=origin,
        ) from None
    except RecursionError:
        raise MetricError(
            f"JSON nested deeper than the limit of {MAX_DEPTH} levels", origin=origin
        ) from None
    return from_json_obj(obj, origin=origin)


def load_tree_file(path: str | Path) -> Node:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MetricError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise MetricError(f"{path} is a directory, expected a JSON tree file") from None
    if len(raw) > 10 * MAX_TEXT * 10:
        raise MetricError(f"{path}: file is {len(raw)} bytes, too large for a metric tree")
    return from_json(raw, origin=str(path))


def save_tree_file(node: Node, path: str | Path) -> None:
    atomic.write_text(path, to_json(node))
