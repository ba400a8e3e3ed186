"""Ordering candidates: the selection key, the Pareto front of fitness against size, and the
rank agreement between fidelity stages."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .fitness import WORST

STAGE_RANK = {"full": 0, "cheap": 1, "proxy": 2}


def sort_key(rec: dict) -> tuple:
    """Full-stage candidates beat cheap-stage rejects, which beat proxy-stage rejects, which
    beat degenerate ones; then by that stage's value, then smaller formulas, then earlier."""
    stage_rank = STAGE_RANK.get(rec["stage"], 3)
    value = {0: rec["fitness"], 1: rec.get("cheap"), 2: rec.get("proxy")}.get(stage_rank)
    return (stage_rank, value if value is not None else WORST, rec["size"], rec["id"])


def finalists(history: list[dict], k: int) -> tuple[list[dict], list[tuple[dict, dict]]]:
    """The best ``k`` full-stage candidates (by :func:`sort_key`) with distinct fitness: one
    whose held-out fitness equals a better-ranked one's (to the 7 significant digits of
    :func:`.fitness.round_fitness`; a mask hit has its twin's by construction) prunes the same
    weights in effect, and a final layer-sequential prune of it would repeat its twin's.
    Returns ``(finalists, [(left out, its twin), ...])``."""
    ranked = sorted((r for r in history if r["stage"] == "full"), key=sort_key)
    kept: dict[float, dict] = {}
    top, twins = [], []
    for r in ranked:
        if len(top) >= k:
            break
        if r["fitness"] in kept:
            twins.append((r, kept[r["fitness"]]))
            continue
        kept[r["fitness"]] = r
        top.append(r)
    return top, twins


def selection_key(rec: dict, parsimony: float) -> tuple:
    """:func:`sort_key` with parsimony pressure on full-stage candidates: ``log(fitness) +
    parsimony * size`` (a size-20 formula must be ``exp(20 * parsimony)`` times better than a
    one-node one to be preferred)."""
    key = sort_key(rec)
    if key[0] == 0 and parsimony and math.isfinite(key[1]) and key[1] > 0:
        return (0, math.log(key[1]) + parsimony * rec["size"], *key[2:])
    return key


def pareto_records(history: list[dict]) -> list[dict]:
    """The full-stage candidates on the Pareto front of fitness vs formula size (the best
    fitness for each size, dominated ones dropped), smallest first."""
    ok = sorted(
        (r for r in history if r["stage"] == "full" and not r.get("hit")),
        key=lambda r: (r["size"], r["fitness"], r["id"]),
    )
    front, best = [], WORST
    for r in ok:
        if r["fitness"] < best:
            front.append(r)
            best = r["fitness"]
    return front


def pareto_front(history: list[dict]) -> list[tuple[int, float, str]]:
    """:func:`pareto_records` as ``(size, fitness, formula)``."""
    return [(r["size"], r["fitness"], r["formula"]) for r in pareto_records(history)]


def multifidelity(history: list[dict]) -> dict:
    """How well each cheaper stage ranks candidates like the full stage (Spearman), over the
    candidates that have both values (mask hits counted once)."""
    out: dict = {}
    own = [r for r in history if not r.get("hit")]
    for stage in ("proxy", "cheap"):
        both = [
            (r[stage], r["full"])
            for r in own
            if r.get(stage) is not None
            and r.get("full") is not None
            and math.isfinite(r[stage])
            and math.isfinite(r["full"])
        ]
        rho = spearman([a for a, _ in both], [b for _, b in both]) if len(both) >= 3 else None
        out[f"{stage}_full_pairs"] = len(both)
        out[f"{stage}_full_spearman"] = rho
    return out


def percentiles(values: Sequence[float]) -> dict:
    """p50 and p95 (nearest rank) of ``values``, and their count."""
    v = sorted(values)
    if not v:
        return {"n": 0, "p50": None, "p95": None}

    def at(q: float) -> float:
        return round(v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))], 3)

    return {"n": len(v), "p50": at(0.5), "p95": at(0.95)}


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


def paired_change(a: Sequence[float] | None, b: Sequence[float] | None) -> dict | None:
    """Perplexity ``a`` against ``b`` window by window, from each window's mean token NLL on the
    same windows: ``change`` (``exp(mean dNLL) - 1``; negative: ``a`` is better), ``se`` (the
    standard error of the mean per-window difference, in the same relative units) and
    ``windows``. None without two or more windows on each side, or with different counts.
    Two models judged on the same windows share the windows' difficulty, so this standard error
    is far smaller than either perplexity's own spread; a change well inside two standard
    errors is the text's noise, not a property of the rules."""
    if not a or not b or len(a) != len(b) or len(a) < 2:
        return None
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    return {
        "change": round(math.exp(mean) - 1, 5),
        "se": round(sd / math.sqrt(len(d)), 5),
        "windows": len(d),
    }


def final_window_nll(rec: dict, labels: Sequence[str]) -> list[float] | None:
    """A final's per-window NLL over every setting (in ``labels``' order, windows within each),
    or None when any setting lacks them (a final logged before they were recorded)."""
    out: list[float] = []
    for label in labels:
        w = (rec.get("settings") or {}).get(label, {}).get("window_nll")
        if not w:
            return None
        out.extend(w)
    return out


def significantly_better(vs: dict | None, margin: float) -> bool:
    """``vs`` (a :func:`paired_change`) says better by at least ``margin`` standard errors (a
    change below zero in any case; with ``margin`` 0, any improvement at all)."""
    if vs is None or vs["change"] >= 0:
        return False
    return -math.log1p(vs["change"]) >= margin * vs["se"]


def choose_best(
    finals: list[dict], reference: dict | None, labels: Sequence[str], margin: float
) -> tuple[dict | None, str]:
    """The search's answer from its ``finals`` (sorted best first) and the ``reference`` rule's
    final on the same windows (each final gets ``vs_reference``, a :func:`paired_change`).
    The best final that beats the reference by ``margin`` standard errors wins; when none
    does, the reference is the answer: a rule that is not measurably better than the known one
    is not worth adopting. Without a usable reference final, or per-window values (an older
    run), the best final wins, as before. Returns ``(record, verdict)``: the verdict says in
    words which case it was, with the figures."""
    ok = [f for f in finals if f.get("fitness") is not None and f["fitness"] < WORST]
    top = ok[0] if ok else (finals[0] if finals else None)
    if reference is None:
        return top, ""
    ref_name = f"the reference {reference['formula']}"
    ref_nll = final_window_nll(reference, labels)
    if reference.get("reason") or reference.get("fitness") is None or ref_nll is None:
        why = reference.get("reason") or "no per-window NLL"
        return top, f"no comparison with {ref_name} ({why}): the best final is the answer"
    for f in finals:
        if f["canonical"] != reference["canonical"]:
            f["vs_reference"] = paired_change(final_window_nll(f, labels), ref_nll)
    if top is not None and top["canonical"] == reference["canonical"]:
        return reference, f"the best final is {ref_name} itself"
    for f in ok:
        vs = f.get("vs_reference")
        if significantly_better(vs, margin):
            return f, (
                f"{_pct(vs)} against {ref_name} on the finals' {vs['windows']} windows "
                f"(at least {margin:g} standard errors better)"
            )
    if top is None:
        return reference, f"no final succeeded: {ref_name} is the answer"
    vs = top.get("vs_reference")
    said = f"{_pct(vs)} on {vs['windows']} windows" if vs else "no paired comparison"
    return reference, (
        f"no final beats {ref_name} by {margin:g} standard errors (the best, {top['formula']}: "
        f"{said}); {ref_name} is the answer"
    )


def _pct(vs: dict) -> str:
    return f"{vs['change']:+.1%} ± {vs['se']:.1%}"
