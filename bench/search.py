"""Search benchmark: a time-limited GP search on SmolLM2-135M at 50% unstructured, then the best
discovered metric, Wanda and the published Pruner-Zero tree under the full layer-sequential
prune, evaluated on WikiText-2 test (same settings as bench/prune.py). One command, one table:

    .venv/bin/python bench/search.py                 # 60-minute search (the issue's figure)
    .venv/bin/python bench/search.py --minutes 3     # a quick look

Search fitness: perplexity on held-out windows of the *calibration* text (the last 10% of
wikitext-2/valid.txt), never the evaluation set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchlib import (
    CALIB,
    EVAL,
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-search"))
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--final-top", type=int, default=3)
    ap.add_argument("--grad-path", default=None, help="gradient file for the test-set prunes")
    ap.add_argument("--json", default=str(RESULTS / "search.json"))
    args = ap.parse_args()
    require_data()

    from rich.console import Console

    from pzshell.jobs import ModelSpec, PruneJob, run_prune
    from pzshell.lang import load_metric
    from pzshell.search import FitnessSettings, Search, SearchSettings
    from pzshell.search.cache import FitnessCache
    from pzshell.search.events import SearchProgress

    console = Console(stderr=True)
    fit = FitnessSettings(
        model=args.model,
        sparsity_ratio=0.5,
        sparsity_type="unstructured",
        calib=str(CALIB),
        nsamples=32,
        grad_samples=16,
        seqlen=512,
        heldout_windows=4,
        heldout_seqlen=256,
        cheap_windows=1,
        cheap_seqlen=128,
        seed=0,
    )
    settings = SearchSettings(
        fitness=fit,
        population=24,
        budget=100_000,
        batch=8,
        seed=0,
        final_top=args.final_top,
        time_limit=args.minutes * 60,
    )
    last = {}

    def on_event(ev):
        if isinstance(ev, SearchProgress):
            last["p"] = ev
            if ev.evaluations % 10 == 0:
                console.print(
                    f"{time.strftime('%H:%M:%S')} evals {ev.evaluations} "
                    f"{ev.evals_per_minute:.1f}/min hits {ev.cache_hits} best "
                    f"{ev.best_fitness:.3f} {ev.best_formula}"
                )

    t0 = time.perf_counter()
    search = Search(
        settings,
        args.out,
        backend="processes" if args.workers > 1 else "in-process",
        workers=args.workers,
        cache=FitnessCache(),
        on_event=on_event,
        resume=args.resume,
    )
    fin = search.run()
    search_seconds = time.perf_counter() - t0
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    p = last.get("p")
    evals = fin.evaluations
    hits = p.cache_hits if p else 0
    # the search stopped at its time limit; its finals ran after it
    best_tree = load_metric(str(Path(args.out) / "best.json"))

    rows = []
    common = {
        "model": ModelSpec(args.model),
        "sparsity_ratio": 0.5,
        "calib": calib_spec(32, 512, seed=0),
        "eval": eval_spec(1024, 8),
    }
    grad_path = args.grad_path or str(Path(args.out) / "grads_32x512_seed0.pth")
    for name, job in (
        (
            "discovered",
            PruneJob(method="metric", metric=best_tree, gradient_path=grad_path, **common),
        ),
        ("wanda", PruneJob(method="wanda", **common)),
        ("pruner-zero", PruneJob(method="pruner-zero", gradient_path=grad_path, **common)),
    ):
        _, res = run_prune(job)
        res.pop("layers", None)
        res["name"] = name
        rows.append(res)
        console.print(f"{name}: {res['metric']} -> test ppl {res['ppl']:.3f}")

    t = table(
        f"pzshell search benchmark: {args.model}, 50% unstructured, "
        f"{args.minutes:.0f}-minute search (in-process, {args.workers} worker)",
        ("figure", "value"),
    )
    hours = max(search_seconds / 3600, 1e-9)
    t.add_row("evaluations (distinct pruning rules)", str(evals))
    t.add_row("evaluations per hour (incl. setup and finals)", f"{evals / hours:.0f}")
    t.add_row("evaluations per minute (search loop)", f"{p.evals_per_minute:.1f}" if p else "-")
    t.add_row(
        "cache hits (duplicate rules not evaluated)", f"{hits} ({hits / max(hits + evals, 1):.0%})"
    )
    rho = summary.get("cheap_full_spearman")
    pairs = summary["cheap_full_pairs"]
    t.add_row(
        "cheap vs full stage Spearman rho",
        f"{rho:.3f} over {pairs} pairs" if rho is not None else "-",
    )
    t.add_row("best discovered metric", str(best_tree))
    t.add_row("its held-out fitness (sequential prune)", f"{fin.best_fitness:.3f}")
    for r in rows:
        t.add_row(f"WikiText-2 test ppl, {r['name']} ({r['metric']})", f"{r['ppl']:.3f}")
    t.caption = (
        f"test: first 8x1024 tokens of {EVAL.name}; calibration 32x512 of "
        f"{CALIB.name}, seed 0; search fitness on held-out 4x256 tokens of the "
        f"calibration text"
    )
    print_table(t, width=None)
    doc = {
        "settings": settings.to_dict(),
        "evaluations": evals,
        "cache_hits": hits,
        "search_seconds": search_seconds,
        "evals_per_hour": evals / hours,
        "summary": summary,
        "best": str(best_tree),
        "test": rows,
    }
    write_json(args.json, doc, default=str)
    beat = rows[0]["ppl"] < rows[1]["ppl"]
    print(
        f"discovered metric {'beats' if beat else 'does not beat'} Wanda on the test set "
        f"({rows[0]['ppl']:.3f} vs {rows[1]['ppl']:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
