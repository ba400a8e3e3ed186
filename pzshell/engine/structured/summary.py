"""Reports of a structured run: the unit table as CSV, the kept-fraction plot, the per-kind
summary."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ... import atomic
from .allocation import Plan
from .anatomy import KIND_NAMES


def write_units_csv(plan: Plan, path: str | Path) -> None:
    """One row per unit: block, kind, unit, importance, cost, kept."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=["block", "kind", "unit", "importance", "cost", "kept"])
    w.writeheader()
    for row in plan.table.rows():
        row["importance"] = f"{row['importance']:.6g}"
        w.writerow(row)
    atomic.write_text(path, buf.getvalue())


def plot_kept(blocks: list[dict], path: str | Path, title: str = "") -> None:
    """Bar chart per block of the fraction of KV groups and MLP channels kept (matplotlib Agg);
    removed blocks are marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x = [b["block"] for b in blocks]
    attn = [b["kv_groups_kept"] / max(b["kv_groups_before"], 1) for b in blocks]
    mlp = [b["intermediate_kept"] / max(b["intermediate_before"], 1) for b in blocks]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(blocks) + 2), 3.6), dpi=110)
    width = 0.4
    ax.bar([i - width / 2 for i in x], attn, width, label="attention: KV groups kept")
    ax.bar([i + width / 2 for i in x], mlp, width, label="MLP: channels kept")
    for b in blocks:
        if b.get("removed"):
            ax.axvspan(b["block"] - 0.5, b["block"] + 0.5, color="red", alpha=0.12, lw=0)
        if b.get("frozen"):
            ax.text(b["block"], 1.02, "*", ha="center", va="bottom", fontsize=9)
    ax.set_xlabel("block (red: removed, *: frozen)")
    ax.set_ylabel("fraction kept")
    ax.set_ylim(0, 1.12)
    ax.set_xlim(-0.7, (max(x) if x else 0) + 0.7)
    if len(x) <= 40:
        ax.set_xticks(x)
        ax.tick_params(axis="x", labelsize=7)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    try:
        with atomic.writing_file(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def kind_summary(plan: Plan) -> dict:
    """Parameters removed per kind (attention / mlp), for reports."""
    out = {}
    t = plan.table
    for k, name in enumerate(KIND_NAMES):
        sel = t.kind == k
        out[name] = {
            "units": int(sel.sum()),
            "units_removed": int((sel & ~t.kept).sum()),
            "params": int(t.cost[sel].sum()),
            "params_removed": int(t.cost[sel & ~t.kept].sum()),
        }
    return out
