"""Allocation-search benchmark: `pzshell search --allocation search` for a fixed metric on
SmolLM2-135M, then uniform, OWL and the allocation it chose pruned for real and measured on
WikiText-2 test. One command, one table:

    .venv/bin/python bench/alloc_search.py                        # Wanda at 70%, budget 60
    .venv/bin/python bench/alloc_search.py --ratio 0.5 --budget 20

The search runs with the settings of `pzshell search` given no flag, except the calibration text
(wikitext-2 valid.txt, as in bench/prune.py), the sparsity (unstructured, `--ratio`) and the
budget; its fitness is held-out perplexity on the calibration text (its last 10%), never the
evaluation set. The test rows use bench/prune.py's settings: calibration 32x512 of valid.txt,
seed 0, the first 8x1024 tokens of wiki.test.raw.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from benchlib import (
    CALIB,
    RESULTS,
    ROOT,
    calib_spec,
    eval_spec,
    print_table,
    require_data,
    table,
    write_json,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--metric", default="W * sqrt(X)", help="the fixed metric (default Wanda)")
    ap.add_argument("--ratio", type=float, default=0.7, help="unstructured sparsity (default 0.7)")
    ap.add_argument("--budget", type=int, default=60, help="allocations screened (default 60)")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--out", default=None, help="run directory (default runs/bench-alloc-R)")
    ap.add_argument("--json", default=None, help="default bench/results/alloc_search.json")
    args = ap.parse_args()
    require_data()
    out = ROOT / "runs" / f"bench-alloc-{args.ratio:g}" if args.out is None else args.out
    json_path = args.json or RESULTS / "alloc_search.json"

    import shutil

    from rich.console import Console

    from pzshell.jobs import ModelSpec, PruneJob, run_prune
    from pzshell.lang import load_metric
    from pzshell.search import SearchSettings
    from pzshell.search.alloc_search import AllocationSearch, AllocationSearchSettings

    console = Console(stderr=True)
    fit = dataclasses.replace(
        SearchSettings().fitness,
        model=args.model,
        calib=str(CALIB),
        sparsity_ratio=args.ratio,
        sparsity_type="unstructured",
    )
    settings = AllocationSearchSettings(metric=args.metric, fitness=fit, budget=args.budget)
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)  # the benchmark's own directory: a fresh run

    def on_event(ev):
        last = ev.last or {}
        if "final" in last:
            f = last["final"]
            console.print(
                f"{time.strftime('%H:%M:%S')} final {f['formula']} @ {f['lambda']:g}: "
                f"{f['final']:.3f} ({f['seconds']:.0f} s)"
            )
        elif ev.screened % 10 == 0 and not last.get("hit") and last.get("reason") is None:
            console.print(
                f"{time.strftime('%H:%M:%S')} {ev.screened}/{ev.budget} screened, "
                f"{ev.ratio_hits} ratio hits, {ev.refused} refused; best "
                f"{ev.best_fitness:.3f} {ev.best_formula} @ {ev.best_lambda:g} "
                f"(uniform {ev.baseline:.3f})"
            )

    t0 = time.perf_counter()
    summary = AllocationSearch(settings, out, on_event=on_event).run()
    search_wall = time.perf_counter() - t0

    # ---- the test set: uniform, OWL, the chosen allocation, by the real prune ------------------
    best = summary["best"]
    picks = [("uniform", "uniform", 0.08), ("owl", "D", 0.08)]
    if (best["formula"], best["lambda"]) not in {("uniform", 0.0), ("D", 0.08)}:
        picks.append(("searched", best["formula"], best["lambda"]))
    rows = []
    for name, formula, lam in picks:
        job = PruneJob(
            model=ModelSpec(args.model),
            calib=calib_spec(32, 512, seed=0),
            method="metric",
            metric=load_metric(args.metric),
            sparsity_ratio=args.ratio,
            sparsity_type="unstructured",
            allocation="uniform" if formula == "uniform" else formula,
            owl_lambda=lam,
            eval=eval_spec(1024, 8),
        )
        t = time.perf_counter()
        _, res = run_prune(job)
        held = next(
            (
                f["final"]
                for f in summary["finals"]
                if f["formula"] == formula and (formula == "uniform" or f["lambda"] == lam)
            ),
            None,
        )
        rows.append(
            {
                "name": name,
                "allocation": formula,
                "lambda": lam if formula != "uniform" else None,
                "heldout_final": held,
                "test_ppl": res["ppl"],
                "actual_sparsity": res.get("actual_sparsity"),
                "block_sparsity": res.get("block_sparsity"),
                "test_seconds": round(time.perf_counter() - t, 1),
            }
        )
        console.print(f"{name} ({formula}): test ppl {res['ppl']:.3f}")

    t = table(
        f"allocation search: {args.metric} at {args.ratio:g} unstructured, {args.model}; "
        f"{summary['screened']} screened, {summary['ratio_hits']} ratio hits, "
        f"{summary['refused']} refused in {search_wall:.0f} s; test = first 8x1024 tokens of "
        f"wiki.test.raw, calibration 32x512 valid.txt seed 0",
        ["allocation", "lambda", "held-out (real prune)", "test ppl", "vs uniform"],
    )
    base = rows[0]["test_ppl"]
    for r in rows:
        t.add_row(
            f"{r['name']}: {r['allocation']}",
            "-" if r["lambda"] is None else f"{r['lambda']:g}",
            "-" if r["heldout_final"] is None else f"{r['heldout_final']:.3f}",
            f"{r['test_ppl']:.3f}",
            f"{(r['test_ppl'] / base - 1) * 100:+.1f}%",
        )
    print_table(t)
    write_json(
        json_path,
        {
            "model": args.model,
            "metric": args.metric,
            "sparsity_ratio": args.ratio,
            "calibration": "wikitext-2 valid.txt, 32x512, seed 0",
            "test": "wiki.test.raw, first 8x1024 tokens",
            "search_wall_seconds": round(search_wall, 1),
            "search": {
                k: summary[k]
                for k in (
                    "screened",
                    "ratio_hits",
                    "refused",
                    "seconds",
                    "baseline_uniform",
                    "top_screened",
                    "finals",
                    "best",
                    "exhausted",
                )
            },
            "rows": rows,
        },
    )
    console.print(f"-> {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
