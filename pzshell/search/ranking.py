"""Ordering candidates: the selection key, the Pareto front of fitness against size, and the
rank agreement between fidelity stages."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .fitness import WORST


def sort_key(rec: dict) -> tuple:
    """Full-stage candidates beat cheap-stage rejects, which beat degenerate ones; then by
    fitness, then smaller formulas, then earlier candidates."""
    stage_rank = {"full": 0, "cheap": 1}.get(rec["stage"], 2)
    value = rec["fitness"] if stage_rank == 0 else (rec.get("cheap") or WORST)
    return (stage_rank, value if value is not None else WORST, rec["size"], rec["id"])


def pareto_front(history: list[dict]) -> list[tuple[int, float, str]]:
    """Pareto front of fitness vs formula size (best fitness for each size, dominated ones
    dropped)."""

    ok = sorted(
        (r for r in history if r["stage"] == "full"), key=lambda r: (r["size"], r["fitness"])
    )
    front, best = [], WORST
    for r in ok:
        if r["fitness"] < best:
            front.append((r["size"], r["fitness"], r["formula"]))
            best = r["fitness"]
    return front


def multifidelity(history: list[dict]) -> dict:
    """How well the cheap stage ranks candidates like the full stage (Spearman)."""
    both = [
        (r["cheap"], r["full"])
        for r in history
        if r.get("cheap") is not None
        and r.get("full") is not None
        and math.isfinite(r["cheap"])
        and math.isfinite(r["full"])
    ]
    rho = spearman([a for a, _ in both], [b for _, b in both]) if len(both) >= 3 else None
    return {"cheap_full_pairs": len(both), "cheap_full_spearman": rho}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = math.sqrt(sum((x - ma) ** 2 for x in ra))
    vb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (va * vb) if va and vb else 0.0
