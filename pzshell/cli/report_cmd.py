"""``pzshell report``: compare saved runs in a Markdown table and PNG plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from ..report import COLUMNS, table_rows, write_report
from .common import console

# the columns worth a terminal's width; report.md has them all
_SHOWN = {
    "run": "run",
    "method": "method",
    "sparsity": "sparsity",
    "type": "type",
    "ppl": "ppl",
    "ppl after finetune": "ppl+ft",
    "zero-shot mean": "0-shot",
}


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="compare runs: results.json files -> Markdown table and PNG plots",
        description="Search the given directories recursively for results.json (written by "
        "prune / eval / finetune --save) and write report.md with perplexity, per-block "
        "sparsity and zero-shot plots.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run directories (searched recursively)")
    p.add_argument("--out", default=None, help="output directory (default: DIR/report)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.dirs[0]) / "report"
    rep = write_report(args.dirs, out)
    t = Table(title=f"pzshell report: {len(rep['runs'])} run(s)", title_justify="left")
    idx = [COLUMNS.index(c) for c in _SHOWN]
    for c, head in _SHOWN.items():
        t.add_column(head, justify="left" if c in ("run", "method", "type") else "right")
    for row in table_rows(rep["runs"]):
        t.add_row(*(row[i] for i in idx))
    console.print(t)
    console.print(f"report: {rep['report']}")
    for p in rep["plots"]:
        console.print(f"plot:   {p}")
    return 0
