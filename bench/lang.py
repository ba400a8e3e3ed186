"""Benchmark of the metric language: parse -> simplify -> canonical key on GP-style trees.

    .venv/bin/python bench/lang.py [--n 1000] [--seed 0] [--depth 5]

Generates random trees as Pruner-Zero's GP would (published operators, ramped grow/full, depth
<= 5), times ``parse(to_infix(t))``, :func:`simplify` and :func:`canonical` for each tree, and
reports how many trees a search could skip (their canonical key was already seen) and how many
are degenerate on random statistics. Prints one table and writes ``bench/results/lang.json``.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import sympy
import torch
from benchlib import RESULTS, ROOT, print_table, table, write_json

from pzshell.lang import DegenerateMetric, evaluate, parse, to_infix
from pzshell.lang.algebra import canonical, simplify, to_sympy
from pzshell.lang.random_trees import random_tree


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "lang.json"))
    args = ap.parse_args()

    rng = random.Random(args.seed)
    trees = [random_tree(rng, args.depth, "full" if i % 2 else "grow") for i in range(args.n)]
    # warm-up: build the LALR parser and import sympy's machinery outside the timings
    canonical(parse("abs(W*W)*mms(G) + log(exp(X))"))
    for f in (simplify, to_sympy, canonical):
        f.cache_clear()

    stages = {"parse(to_infix(t))": [], "simplify": [], "canonical key": [], "total": []}
    keys: list[str] = []
    changed = fallbacks = 0
    clock = time.perf_counter
    for t in trees:
        t0 = clock()
        p = parse(to_infix(t))
        t1 = clock()
        s = simplify(p)
        t2 = clock()
        c = canonical(p)
        t3 = clock()
        assert p == t
        stages["parse(to_infix(t))"].append((t1 - t0) * 1e3)
        stages["simplify"].append((t2 - t1) * 1e3)
        stages["canonical key"].append((t3 - t2) * 1e3)
        stages["total"].append((t3 - t0) * 1e3)
        keys.append(c.key)
        changed += s != p
        fallbacks += c.fallback is not None

    seen: set[str] = set()
    repeats = 0
    for k in keys:
        repeats += k in seen
        seen.add(k)

    g = torch.Generator().manual_seed(args.seed)
    W = torch.randn(64, 128, generator=g)
    G = torch.rand(64, 128, generator=g)
    X = torch.rand(1, 128, generator=g)
    degenerate = 0
    for t in trees:
        try:
            evaluate(t, W, G, X)
        except DegenerateMetric:
            degenerate += 1

    n = len(trees)
    result = {
        "trees": n,
        "seed": args.seed,
        "max_depth": args.depth,
        "generator": "random_tree(ops=PUBLISHED, grow/full alternating, min depth 3, no constants)",
        "mean_size": statistics.fmean(t.size for t in trees),
        "ms": {
            k: {"median": statistics.median(v), "p95": pct(v, 0.95), "max": max(v)}
            for k, v in stages.items()
        },
        "seconds_total": sum(stages["total"]) / 1e3,
        "collapsed_to_seen_key": repeats / n,
        "distinct_keys": len(seen),
        "degenerate_64x128": degenerate / n,
        "simplify_changed": changed / n,
        "structural_fallbacks": fallbacks,
        "python": platform.python_version(),
        "sympy": sympy.__version__,
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    out = write_json(args.out, result)

    tab = table(
        f"metric language: {n} GP trees (depth <= {args.depth}, seed {args.seed}, "
        f"mean size {result['mean_size']:.1f})",
        ("measure", "median ms", "p95 ms", "value"),
        title_justify="left",
    )
    for k, v in result["ms"].items():
        tab.add_row(k, f"{v['median']:.2f}", f"{v['p95']:.2f}", "")
    tab.add_section()
    rate = n / result["seconds_total"]
    tab.add_row("trees per second (all three stages)", "", "", f"{rate:.0f}")
    tab.add_row("collapse to an already-seen canonical key", "", "", f"{repeats / n:.1%}")
    tab.add_row("distinct canonical keys", "", "", str(len(seen)))
    tab.add_row("degenerate on random 64x128 W/G/X", "", "", f"{degenerate / n:.1%}")
    tab.add_row("changed by simplify", "", "", f"{changed / n:.1%}")
    tab.add_row("structural-key fallbacks", "", "", str(fallbacks))
    print_table(tab, width=None, highlight=False)
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
