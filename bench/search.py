"""Search benchmark: `pzshell search`'s default configuration for a time budget on SmolLM2-135M,
then the top of its hall of fame under the full layer-sequential prune on WikiText-2 test, next
to Wanda, the published Pruner-Zero tree and SparseGPT. One command, one table:

    .venv/bin/python bench/search.py                      # 60 minutes, unstructured 50% and 2:4
    .venv/bin/python bench/search.py --strategy random    # the random-search baseline
    .venv/bin/python bench/search.py --minutes 5 --top 1  # a quick look

The search runs with the settings of `pzshell search` given no flag (SearchSettings()), except
the calibration text (wikitext-2 valid.txt, as in bench/prune.py), the sparsity settings
(`--types`, default both: one search with a two-setting fitness) and the time limit, which
counts model loading and statistics; the finals inside the search are skipped (the test prunes
below are the full layer-sequential ones). Search fitness: perplexity on held-out windows of the
*calibration* text (its last 10%, clear of the calibration windows), never the evaluation set;
the search's calibration windows are the test prunes' own (32x512 of valid.txt, seed 0).

The test rows use bench/prune.py's settings: calibration 32x512 of valid.txt, seed 0, the first
8x1024 tokens of wiki.test.raw. The baselines (Wanda, Pruner-Zero, SparseGPT) are read from
bench/results/prune.json when it holds them with these settings, else pruned here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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

BASELINES = ("wanda", "pruner-zero", "sparsegpt")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0, help="search time, statistics included")
    ap.add_argument("--strategy", choices=("gp", "random"), default="gp")
    ap.add_argument("--types", default="unstructured,2:4", help="the search's sparsity types")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--top", type=int, default=5, help="hall-of-fame rules pruned on test")
    ap.add_argument(
        "--test-only", action="store_true", help="skip the search: prune the existing run's top"
    )
    ap.add_argument("--no-reconstruct", action="store_true", help="skip the best + reconstruct")
    ap.add_argument("--out", default=None, help="run directory (default runs/bench-search-S)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--grad-path", default=None, help="gradient file for the test-set prunes")
    ap.add_argument("--json", default=None, help="default bench/results/search[_random].json")
    args = ap.parse_args()
    require_data()
    out = Path(args.out or ROOT / "runs" / f"bench-search-{args.strategy}")
    json_path = Path(
        args.json or RESULTS / ("search.json" if args.strategy == "gp" else "search_random.json")
    )

    from rich.console import Console

    from pzshell.cli.search_cmd import PlainLog
    from pzshell.jobs import ModelSpec, PruneJob, run_prune
    from pzshell.lang import load_metric
    from pzshell.search import Search, SearchSettings
    from pzshell.search.cache import FitnessCache

    console = Console(stderr=True)
    base = SearchSettings()
    fit = dataclasses.replace(
        base.fitness, model=args.model, calib=str(CALIB), sparsity_type=args.types
    )
    settings = dataclasses.replace(
        base, fitness=fit, strategy=args.strategy, final_top=0, time_limit=args.minutes * 60
    )
    # the CLI's own plain-text progress (every message, counters at each batch end, each new
    # best and at least every 30 s), each line with the clock time
    on_event = PlainLog(
        lambda text, **kw: console.print(f"{time.strftime('%H:%M:%S')} {text}", **kw)
    )

    # a fresh cache file: the benchmark measures this run's work, not an earlier run's
    cache_path = out.parent / f"{out.name}-fitness.sqlite"
    if not args.resume and not args.test_only:
        cache_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    search = (
        None
        if args.test_only
        else Search(
            settings,
            out,
            backend="processes" if args.workers > 1 else "in-process",
            workers=args.workers,
            cache=FitnessCache(cache_path),
            on_event=on_event,
            resume=args.resume,
        )
    )
    if search is not None:
        search.run()
    search_wall = None if search is None else time.perf_counter() - t0
    # with --test-only, test prunes already in the JSON (same rule, setting, reconstruct) are
    # reused rather than recomputed
    done = {}
    if args.test_only and json_path.exists():
        for r in json.loads(json_path.read_text()).get("test", []):
            if r.get("formula"):
                done[(str(load_metric(r["formula"])), r["setting"], "reconstruct" in r["name"])] = r
        prior_summary = json.loads(json_path.read_text()).get("search_wall_seconds")
        search_wall = prior_summary
    summary = json.loads((out / "summary.json").read_text())
    top = _top(out, args.top)

    # ---- the test set ---------------------------------------------------------------------------
    pairs = fit.settings()
    grad_path = args.grad_path or str(out.parent / "grads_smollm2_valid_32x512_seed0.pth")
    common = {"model": ModelSpec(args.model), "calib": calib_spec(32, 512, seed=0)}
    known = _baselines_from_prune_json()
    rows = []

    def prune(name: str, p, **kw) -> dict:
        formula = str(kw["metric"]) if kw.get("metric") is not None else None
        key = (formula, p.label, bool(kw.get("reconstruct")))
        if formula and key in done:
            return dict(done[key], name=name, reused=True)
        job = PruneJob(
            sparsity_ratio=p.ratio,
            sparsity_type=p.sparsity_type,
            eval=eval_spec(1024, 8),
            gradient_path=grad_path,
            **common,
            **kw,
        )
        t = time.perf_counter()
        _, res = run_prune(job)
        res.pop("layers", None)
        res.update(name=name, setting=p.label, test_seconds=round(time.perf_counter() - t, 1))
        console.print(f"{name} at {p.label}: test ppl {res['ppl']:.3f}")
        return res

    for p in pairs:
        for b in BASELINES:
            res = known.get((b, p.sparsity_type, p.ratio))
            if res is None:
                res = prune(b, p, method=b)
            rows.append(dict(res, name=b, setting=p.label))
        for rank, r in enumerate(top, 1):
            tree = load_metric(r["formula"])
            rows.append(
                dict(prune(f"#{rank}", p, method="metric", metric=tree), formula=r["formula"])
            )
        # a multi-setting fitness can hide a rule that wins at one setting only: the best
        # held-out value at this setting, when it is not already among the top
        best_here = _best_at(out, p.label)
        if best_here and best_here["formula"] not in {r["formula"] for r in top}:
            tree = load_metric(best_here["formula"])
            res = prune(f"best at {p.label}", p, method="metric", metric=tree)
            rows.append(dict(res, formula=best_here["formula"]))
        if top and not args.no_reconstruct:
            tree = load_metric(top[0]["formula"])
            res = prune("#1 + reconstruct", p, method="metric", metric=tree, reconstruct=True)
            rows.append(dict(res, formula=top[0]["formula"]))

    # ---- the table ------------------------------------------------------------------------------
    t = table(
        f"pzshell search benchmark: {args.model}, {fit.describe()}, strategy {args.strategy}, "
        f"{args.minutes:.0f}-minute search (statistics included), seed 0",
        ("figure", "value"),
    )
    st = summary["stage_seconds"]

    def pct(stage):
        d = st.get(stage) or {}
        return f"p50 {d.get('p50')} s, p95 {d.get('p95')} s (n={d.get('n')})"

    t.add_row("screened (distinct rules, proxy stage)", str(summary["screened"]))
    t.add_row("full-fidelity evaluations", str(summary["full"]))
    t.add_row(
        "screened / full per hour (search loop)",
        f"{summary['screened_per_hour']:.0f} / {summary['full_per_hour']:.0f}",
    )
    t.add_row("mask hits / rule hits", f"{summary['mask_hits']} / {summary['cache_hits']}")
    t.add_row("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(summary["outcomes"].items())))
    t.add_row("restarts (stagnation)", str(summary["restarts"]))
    t.add_row("seconds: screen", pct("screen"))
    t.add_row("seconds: perplexity stages", pct("eval"))
    t.add_row(
        "model load / statistics",
        f"{summary.get('load_seconds')} s / {summary.get('statistics_seconds')} s "
        f"({'cached' if summary.get('statistics_cached') else 'computed'})",
    )
    rho = summary.get("proxy_full_spearman")
    t.add_row(
        "proxy vs full Spearman",
        f"{rho:.3f} over {summary['proxy_full_pairs']} pairs" if rho is not None else "-",
    )
    for rank, r in enumerate(top, 1):
        t.add_row(f"#{rank} (held-out {r['fitness']:.3f}, size {r['size']})", r["formula"])
    for p in pairs:
        for r in (r for r in rows if r["setting"] == p.label):
            label = r["name"] if r["name"] in BASELINES else f"{r['name']} {r.get('formula', '')}"
            t.add_row(f"test ppl at {p.label}: {label}", f"{r['ppl']:.3f}")
    t.caption = (
        f"test: first 8x1024 tokens of {EVAL.name}; calibration 32x512 of {CALIB.name}, seed 0; "
        f"search fitness on held-out {fit.heldout_windows}x{fit.heldout_seqlen} tokens of the "
        f"calibration text; baselines from bench/results/prune.json where it has them"
    )
    print_table(t, width=None)
    doc = {
        "settings": settings.to_dict(),
        "minutes": args.minutes,
        "search_wall_seconds": round(search_wall, 1) if search_wall else None,
        "summary": summary,
        "top": top,
        "test": rows,
        "targets": _targets(rows, pairs),
    }
    write_json(json_path, doc, default=str)
    for line in doc["targets"]:
        print(line)
    return 0


def _top(out: Path, k: int) -> list[dict]:
    """The final hall of fame's best ``k``: the Pareto front of held-out fitness vs size
    (full-stage candidates, no mask twins), best fitness first."""
    from pzshell.search.ranking import pareto_records

    recs = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines() if x]
    recs = [r for r in recs if r.get("stage") != "final"]
    front = pareto_records(recs)
    return sorted(front, key=lambda r: (r["fitness"], r["size"], r["id"]))[:k]


def _best_at(out: Path, label: str) -> dict | None:
    """The full-stage candidate with the best held-out perplexity at one setting."""
    recs = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines() if x]
    ok = [
        r
        for r in recs
        if r.get("stage") == "full" and (r.get("settings", {}).get(label) or {}).get("full")
    ]
    return min(ok, key=lambda r: (r["settings"][label]["full"], r["size"], r["id"]), default=None)


def _baselines_from_prune_json() -> dict:
    path = RESULTS / "prune.json"
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    s = doc.get("settings", {})
    if (s.get("nsamples"), s.get("seqlen"), s.get("eval_windows"), s.get("eval_seqlen")) != (
        32,
        512,
        8,
        1024,
    ):
        return {}
    out = {}
    for r in doc.get("rows", []):
        if r.get("method") in BASELINES and math.isfinite(r.get("ppl", math.inf)):
            ratio = 0.5 if r["sparsity_type"] != "unstructured" else r["sparsity_ratio"]
            out[(r["method"], r["sparsity_type"], ratio)] = dict(r, source=str(path))
    return out


def _targets(rows: list[dict], pairs) -> list[str]:
    """The issue's targets, met or not, in words."""
    lines = []
    for p in pairs:
        here = {r["name"]: r["ppl"] for r in rows if r["setting"] == p.label}
        wanda, sgpt = here.get("wanda"), here.get("sparsegpt")
        best = here.get("#1")
        rec = here.get("#1 + reconstruct")
        alone = here.get(f"best at {p.label}")
        if alone is not None and wanda is not None:
            gain = 1 - alone / wanda
            lines.append(
                f"{p.label}: this setting's best held-out rule {alone:.3f} vs Wanda {wanda:.3f} "
                f"({gain:+.1%})"
            )
        if best is not None and wanda is not None:
            gain = 1 - best / wanda
            goal = 0.03 if not p.n else 0.10
            met = "met" if gain >= goal else "NOT met"
            lines.append(
                f"{p.label}: best discovered {best:.3f} vs Wanda {wanda:.3f} "
                f"({gain:+.1%}; target >= {goal:.0%} better): {met}"
            )
        if rec is not None and sgpt is not None:
            met = "met" if rec <= sgpt else "NOT met"
            lines.append(f"{p.label}: best + reconstruct {rec:.3f} vs SparseGPT {sgpt:.3f}: {met}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
