"""The fitness-over-evaluations picture of a search (PNG)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from .. import atomic


def plot_history(
    history: list[dict],
    path: str | Path,
    *,
    title: str = "",
    reference: tuple[str, float] | None = None,
) -> Path:
    """Held-out fitness against evaluations: every full-stage candidate, the running median and
    the best so far, and ``reference`` (a label and its full-stage fitness, e.g. Wanda's) as a
    dashed line. The y range is the interesting one, from just below the best to the 75th
    percentile of the candidates' values (:func:`y_range`): a few degenerate rules 10^10 times
    worse would otherwise flatten every curve; how many lie above it is said in the legend."""
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
    rng = y_range(pts_y, reference[1] if reference else None)
    above = sum(y > rng[1] for y in pts_y) if rng else 0
    label = "candidate (full stage)" + (f"; {above} above the plot" if above else "")
    ax.scatter(pts_x, pts_y, s=8, alpha=0.35, color="tab:gray", label=label)
    ax.plot(xs, med, color="tab:orange", label="median of the last 32 candidates")
    ax.plot(xs, best, color="tab:blue", linewidth=2, label="best so far")
    if reference is not None and math.isfinite(reference[1]):
        ax.axhline(reference[1], color="tab:red", linestyle="--", linewidth=1, label=reference[0])
    if rng is None or rng[2]:
        ax.set_yscale("log")
    if rng is not None:
        ax.set_ylim(rng[0], rng[1])
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


def y_range(values: list[float], reference: float | None = None) -> tuple | None:
    """``(low, top, log)`` for the plot's fitness axis: from just below the best value to the
    75th percentile of ``values`` (at least 1.3 times the best, and above ``reference``), on a
    log scale only when that spans more than a decade. None without values."""
    if not values:
        return None
    ys = sorted(values)
    top = max(ys[int(0.75 * (len(ys) - 1))], ys[0] * 1.3)
    if reference is not None and math.isfinite(reference):
        top = max(top, reference * 1.05)
    low = ys[0] / 1.03
    return low, top, top / low > 10
