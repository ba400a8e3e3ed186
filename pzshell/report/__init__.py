"""Comparison reports: runs' ``results.json`` files -> a Markdown table and PNG plots.

A *run* is any ``results.json`` written by ``pzshell prune``, ``pzshell eval`` or
``pzshell finetune`` (found recursively under the given directories). The plots use matplotlib's
object API on an Agg canvas (no pyplot state, no display needed):

* perplexity per method at each sparsity (log y; dashed: after recovery fine-tuning), one figure
  per model and evaluation data, so every curve is comparable with its neighbours;
* per-block sparsity (from the runs' ``layers``);
* per layer, the output error that ``--refine swaps`` or ``--refit`` left, relative to before
  them, one figure per run that has them;
* zero-shot accuracy per task, with standard-error bars.
"""

from __future__ import annotations

from pathlib import Path

from .. import atomic
from .plots import (
    plot_allocation,
    plot_layer_errors,
    plot_layers,
    plot_perplexity,
    plot_zero_shot,
)
from .runs import ReportError, SavedRun, find_runs
from .tables import COLUMNS, markdown_table, table_rows, zero_shot_table


def write_report(paths: list[str | Path], out_dir: str | Path) -> dict:
    """Read the runs under ``paths``; write ``report.md`` and the PNGs into ``out_dir``."""
    out = Path(out_dir)
    why = atomic.why_not_writable(out, is_dir=True)  # before reading any run
    if why:
        raise ReportError(
            f"--out {out}: {why}; --out is the directory that report.md and the plots go into"
        )
    runs = find_runs(paths)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_perplexity(runs, out) + plot_allocation(runs, out) + plot_layer_errors(runs, out)
    for extra in (plot_layers(runs, out), plot_zero_shot(runs, out)):
        if extra is not None:
            plots.append(extra)
    table = markdown_table(runs)
    zs = zero_shot_table(runs)
    parts = [
        "# pzshell report",
        "",
        f"{len(runs)} run(s) from {', '.join(str(p) for p in paths)}. Sparsity is counted over "
        "the linear weights of the decoder blocks; perplexity is exp(mean token NLL) over "
        "non-overlapping windows (eval data: windows x length = tokens).",
        "",
        "## Runs",
        "",
        table,
    ]
    if zs:
        parts += ["", "## Zero-shot accuracy per task", "", zs]
    if plots:
        parts += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    md = out / "report.md"
    atomic.write_text(md, "\n".join(parts) + "\n")
    return {"report": md, "plots": plots, "runs": runs, "table": table}


__all__ = [
    "COLUMNS",
    "ReportError",
    "SavedRun",
    "find_runs",
    "markdown_table",
    "plot_allocation",
    "plot_layer_errors",
    "plot_layers",
    "plot_perplexity",
    "plot_zero_shot",
    "table_rows",
    "write_report",
    "zero_shot_table",
]
