"""The fitness-over-evaluations picture of a search (PNG)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from .. import atomic


def plot_history(history: list[dict], path: str | Path, *, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in history if not r.get("cached")]
    xs, best, med, pts_x, pts_y = [], [], [], [], []
    cur = math.inf
    window: list[float] = []
    for i, r in enumerate(evals, 1):
        f = r.get("fitness")
        if r.get("stage") == "full" and f is not None and math.isfinite(f):
            cur = min(cur, f)
            window.append(f)
            pts_x.append(i)
            pts_y.append(f)
        if math.isfinite(cur):
            xs.append(i)
            best.append(cur)
            med.append(statistics.median(window[-32:]))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.scatter(pts_x, pts_y, s=8, alpha=0.35, color="tab:gray", label="candidate (full stage)")
    ax.plot(xs, med, color="tab:orange", label="median of the last 32 candidates")
    ax.plot(xs, best, color="tab:blue", linewidth=2, label="best so far")
    ax.set_yscale("log")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("held-out perplexity (lower is better)")
    ax.set_title(title or "pzshell search", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic.writing_file(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path
