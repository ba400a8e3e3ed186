"""``pzshell parse`` and ``pzshell trees``: look at a metric before pruning with it.

``parse`` shows what a formula means to pzshell: its tree, the formula as pzshell prints it, the
simplified tree, the canonical rank form (the key under which a search caches it, and whether a
shipped metric prunes the same weights), LaTeX and the Pruner-Zero JSON. ``trees`` lists the
shipped trees.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ..errors import PzError
from ..lang import Node, load_metric, load_tree_file, save_tree_file, to_infix, to_latex
from ..lang.algebra import canonical, equivalent_known, explain, simplify
from ..lang.diagnostics import MetricError
from ..lang.library import shipped_tree, shipped_tree_names
from ..lang.ops import EXTENDED_TERMINALS, OPS
from ..lang.tree import to_json, to_json_obj


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "parse",
        help="parse, simplify and explain a metric formula",
        description=(
            "Parse a metric formula (e.g. 'abs(W*W)*mms(G)'), a Pruner-Zero JSON tree file or a "
            "shipped tree name, and show its tree, simplified form, canonical rank key, LaTeX "
            "and JSON. A formula that starts with '-' goes after '--': pzshell parse -- -W*X"
        ),
    )
    p.add_argument(
        "formula",
        help="formula, JSON tree file (a name ending in .json), or shipped tree name; any other "
        "text is a formula, even where a file of that name exists",
    )
    p.add_argument(
        "--file",
        action="store_true",
        help="FORMULA is the path of a JSON tree file, whatever its name",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the rich view"
    )
    p.add_argument("--save", metavar="PATH", help="write the tree (as typed) as Pruner-Zero JSON")
    p.set_defaults(func=run)

    t = subparsers.add_parser(
        "trees",
        help="list the shipped metric trees",
        description="List the shipped metric trees with their formula and canonical key.",
    )
    t.add_argument(
        "--dir",
        action="append",
        default=[],
        metavar="DIR",
        help="also list the *.json trees in DIR (repeatable)",
    )
    t.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    t.set_defaults(func=run_trees)


# ---------------------------------------------------------------------------------------------
# parse
# ---------------------------------------------------------------------------------------------


def describe(node: Node) -> dict[str, Any]:
    """Everything ``pzshell parse --json`` reports about a tree."""
    simple = simplify(node)
    canon = canonical(node)
    return {
        "tree": to_json_obj(node),
        "infix": to_infix(node),
        "simplified": to_infix(simple),
        "canonical": canon.key,
        "canonical_text": canon.text,
        "equivalent_to": equivalent_known(node),
        "latex": to_latex(node),
        "terminals": sorted(node.terminals),
        "size": node.size,
        "depth": node.depth,
        "extended": node.uses_extended,
        "needs_pzshell": node.needs_pzshell,
    }


def _names_a_file(text: str) -> bool:
    try:
        return len(text) < 4096 and Path(text).exists()
    except (OSError, ValueError):  # too long or not a path at all
        return False


def run(args: argparse.Namespace) -> int:
    try:
        node = load_metric(Path(args.formula) if args.file else args.formula)
    except MetricError as e:
        if not args.file and _names_a_file(args.formula):  # meant the file? say how
            e.message += (
                f" (a file or directory {args.formula} exists: to read a tree file, add --file)"
            )
        raise
    if args.save:
        _save(node, args.save)
    info = describe(node)
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return 0
    console = Console(highlight=False, soft_wrap=True)
    console.print(_rich_tree(node))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    grid.add_row("formula", Text(info["infix"]))
    steps = explain(node)
    simplified = Text(info["simplified"])
    if steps:
        simplified.append(f"   ({', '.join(dict.fromkeys(r for r, _, _ in steps))})", "dim")
    else:
        simplified.append("   (already simple)", "dim")
    grid.add_row("simplified", simplified)
    grid.add_row("canonical", Text(f"{info['canonical']}  {info['canonical_text']}"))
    if info["equivalent_to"]:
        grid.add_row("", Text(f"same pruning rule as {info['equivalent_to']}", "green"))
    grid.add_row("latex", Text(info["latex"]))
    grid.add_row(
        "terminals",
        Text(f"{', '.join(info['terminals'])}   size {info['size']}, depth {info['depth']}"),
    )
    if node.needs_pzshell:
        why = []
        ext = sorted({n.data for _, n in node.walk() if n.is_op and OPS[n.data].extended})
        if ext:
            why.append(f"extended operators {', '.join(ext)}")
        leaves = sorted(node.terminals & set(EXTENDED_TERMINALS))
        if leaves:
            why.append(f"the extended terminal {', '.join(leaves)}")
        if node.has_constants:
            why.append("numeric constants")
        grid.add_row(
            "format",
            Text(
                f"needs pzshell ({' and '.join(why)}); the original code cannot load it", "yellow"
            ),
        )
    else:
        grid.add_row("format", Text("loads in the original Pruner-Zero code"))
    if args.save:
        grid.add_row("saved", Text(str(args.save)))
    console.print(grid)
    console.print(Text("Pruner-Zero JSON", style="bold cyan"))
    console.print(Text(to_json(node)))
    return 0


def _save(node: Node, path: str) -> None:
    try:
        save_tree_file(node, path)
    except OSError as e:
        raise PzError(f"cannot write {path}: {e.strerror or e}") from None


def _rich_tree(node: Node) -> Tree:
    def label(n: Node) -> Text:
        if n.is_op:
            return Text(n.data, style="bold magenta" if OPS[n.data].extended else "bold")
        if n.is_terminal:
            return Text(n.data, style="cyan")
        return Text(n.data, style="yellow")

    root = Tree(label(node), guide_style="dim")
    stack = [(root, node)]
    while stack:
        branch, n = stack.pop()
        for child in n.children:
            sub = branch.add(label(child))
            stack.append((sub, child))
    return root


# ---------------------------------------------------------------------------------------------
# trees
# ---------------------------------------------------------------------------------------------


def _rows(dirs: list[str]) -> tuple[list[dict[str, Any]], int]:
    rows: list[dict[str, Any]] = []
    failed = 0
    for name in shipped_tree_names():
        rows.append(_row(name, "shipped", shipped_tree(name)))
    for d in dirs:
        path = Path(d)
        if not path.is_dir():
            raise PzError(f"--dir {d}: not a directory")
        for f in sorted(path.glob("*.json")):
            try:
                node = load_tree_file(f)
            except PzError as e:
                failed += 1
                rows.append({"name": f.stem, "source": str(f), "error": str(e)})
                continue
            rows.append(_row(f.stem, str(f), node))
    return rows, failed


def _row(name: str, source: str, node: Node) -> dict[str, Any]:
    return {
        "name": name,
        "source": source,
        "formula": to_infix(node),
        "canonical": canonical(node).key,
        "extended": node.uses_extended,
        "needs_pzshell": node.needs_pzshell,
    }


def run_trees(args: argparse.Namespace) -> int:
    rows, failed = _rows(args.dir)
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 2 if failed else 0
    table = Table(title="metric trees", title_justify="left")
    cols = ["name", "formula", "canonical key", "extended ops"] + (["source"] if args.dir else [])
    widest = max(len(r["name"]) for r in rows)
    for col in cols:
        if col == "name":
            table.add_column(col, min_width=widest, overflow="fold")
        elif col in ("formula", "source"):
            table.add_column(col, overflow="fold")
        else:
            table.add_column(col, no_wrap=True)
    for r in rows:
        if "error" in r:
            cells = [r["name"], Text("cannot load (see below)", "red"), "", ""]
        else:
            cells = [
                r["name"],
                Text(r["formula"]),
                r["canonical"],
                Text("yes (needs pzshell)", "yellow") if r["extended"] else "no",
            ]
        table.add_row(*cells, *([r["source"]] if args.dir else []))
    console = Console(highlight=False)
    console.print(table)
    for r in rows:
        if "error" in r:
            console.print(Text(f"{r['source']}: {r['error']}", "red"), soft_wrap=True)
    return 2 if failed else 0
