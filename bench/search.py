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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
CALIB = SHARED / "wikitext-2" / "valid.txt"
EVAL = SHARED / "wikitext-2-raw" / "wiki.test.raw"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-search"))
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--final-top", type=int, default=3)
    ap.add_argument("--grad-path", default=None, help="gradient file for the test-set prunes")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "search.json"))
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from pzshell.jobs import PruneJob, run_prune
    from pzshell.lang import load_metric
    from pzshell.search import FitnessSettings, Search, SearchSettings
    from pzshell.search.cache import FitnessCache
    from pzshell.search.events import SearchProgress

    console = Console(stderr=True)
    fit = FitnessSettings(
        model=args.model, sparsity_ratio=0.5, sparsity_type="unstructured", calib=str(CALIB),
        nsamples=32, grad_samples=16, seqlen=512, heldout_windows=4, heldout_seqlen=256,
        cheap_windows=1, cheap_seqlen=128, seed=0,
    )  # fmt: skip
    settings = SearchSettings(
        fitness=fit, population=24, budget=100_000, batch=8, seed=0, final_top=args.final_top,
        time_limit=args.minutes * 60,
    )  # fmt: skip
    last = {}

    def on_event(ev):
        if isinstance(ev, SearchProgress):
            last["p"] = ev
            if ev.evaluations % 10 == 0:
                console.print(f"{time.strftime('%H:%M:%S')} evals {ev.evaluations} "
                              f"{ev.evals_per_minute:.1f}/min hits {ev.cache_hits} best "
                              f"{ev.best_fitness:.3f} {ev.best_formula}")  # fmt: skip

    t0 = time.perf_counter()
    search = Search(settings, args.out, backend="processes" if args.workers > 1 else "in-process",
                    workers=args.workers, cache=FitnessCache(), on_event=on_event,
                    resume=args.resume)  # fmt: skip
    fin = search.run()
    search_seconds = time.perf_counter() - t0
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    p = last.get("p")
    evals = fin.evaluations
    hits = p.cache_hits if p else 0
    # the search stopped at its time limit; its finals ran after it
    best_tree = load_metric(str(Path(args.out) / "best.json"))

    rows = []
    common = dict(model=args.model, sparsity_ratio=0.5, nsamples=32, seed=0, calib=str(CALIB),
                  seqlen=512, eval=str(EVAL), eval_seqlen=1024, eval_windows=8)  # fmt: skip
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

    t = Table(title=f"pzshell search benchmark: {args.model}, 50% unstructured, "
              f"{args.minutes:.0f}-minute search (in-process, {args.workers} worker)")  # fmt: skip
    t.add_column("figure")
    t.add_column("value", justify="right")
    hours = max(search_seconds / 3600, 1e-9)
    t.add_row("evaluations (distinct pruning rules)", str(evals))
    t.add_row("evaluations per hour (incl. setup and finals)", f"{evals / hours:.0f}")
    t.add_row("evaluations per minute (search loop)", f"{p.evals_per_minute:.1f}" if p else "-")
    t.add_row(
        "cache hits (duplicate rules not evaluated)", f"{hits} ({hits / max(hits + evals, 1):.0%})"
    )
    rho = summary.get("cheap_full_spearman")
    pairs = summary["cheap_full_pairs"]
    t.add_row("cheap vs full stage Spearman rho",
              f"{rho:.3f} over {pairs} pairs" if rho is not None else "-")  # fmt: skip
    t.add_row("best discovered metric", str(best_tree))
    t.add_row("its held-out fitness (sequential prune)", f"{fin.best_fitness:.3f}")
    for r in rows:
        t.add_row(f"WikiText-2 test ppl, {r['name']} ({r['metric']})",
                  f"{r['ppl']:.3f}")  # fmt: skip
    t.caption = (f"test: first 8x1024 tokens of {EVAL.name}; calibration 32x512 of "
                 f"{CALIB.name}, seed 0; search fitness on held-out 4x256 tokens of the "
                 f"calibration text")  # fmt: skip
    Console().print(t)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "settings": settings.to_dict(), "evaluations": evals, "cache_hits": hits,
        "search_seconds": search_seconds, "evals_per_hour": evals / hours,
        "summary": summary, "best": str(best_tree), "test": rows,
    }, indent=2, default=str) + "\n")  # fmt: skip
    beat = rows[0]["ppl"] < rows[1]["ppl"]
    print(
        f"discovered metric {'beats' if beat else 'does not beat'} Wanda on the test set "
        f"({rows[0]['ppl']:.3f} vs {rows[1]['ppl']:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
