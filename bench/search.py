"""Search benchmark: `pzshell search`'s default configuration for a time budget on SmolLM2-135M,
then the top of its hall of fame under the full layer-sequential prune on WikiText-2 test, next
to Wanda, the published Pruner-Zero tree and SparseGPT. One command, one table:

    .venv/bin/python bench/search.py                      # 60 minutes, unstructured 50% and 2:4
    .venv/bin/python bench/search.py --strategy random    # the random-search baseline
    .venv/bin/python bench/search.py --minutes 5 --top 1  # a quick look

The search runs with the settings of `pzshell search` given no flag (SearchSettings()), except
the calibration text (wikitext-2 valid.txt, as in bench/prune.py), the sparsity settings
(`--types`, default both: one search with a two-setting fitness) and the time limit, which
counts model loading and statistics (`--heldout-windows` changes the full stage's held-out text,
for an experiment; the default is the CLI's).
The search's own finals run after it, as they do for a user
(`--final-top`, the CLI's default): the top rules re-run with a full layer-sequential prune, judged
on the finals' held-out windows (`--final-windows`, 8x1024 tokens: the search's 2 and 6 more from
the calibration text's last 10%), and the best of them, the run's best.json, is *the search's
pick*: the rule the targets are judged on. Search fitness: perplexity on held-out windows of the
*calibration* text (its last 10%, clear of the calibration windows), never the evaluation set; the
search's calibration windows are the test prunes' own (32x512 of valid.txt, seed 0). A run made
with `--final-top 0` gets its finals afterwards with `--test-only` (the same selection and prune,
on the same windows, marked post hoc in the JSON).

With `--reconstruct iterative` the search scores every candidate inside SparseGPT's loop (the
search's own `--reconstruct`), and each top rule is pruned that way on test as well.

The pick is also pruned with SparseGPT's weight update on its mask (`+ reconstruct`, the
issue's reconstruct target) and inside SparseGPT's loop choosing each block's mask from the
weights as updated so far (`+ iterative`, `pzshell prune --method metric+iterative`), reported
beside the targets.

The test rows use bench/prune.py's settings: calibration 32x512 of valid.txt, seed 0, the first
8x1024 tokens of wiki.test.raw, and the G the search scored every candidate with (the run's
grads.pth: 16x512 windows by default; `--grad-path` for another file). A stored row whose rule
reads G is reused only when its `gradient_fingerprint` is that G's. The baselines (Wanda,
Pruner-Zero, SparseGPT) are read from bench/results/prune.json or a search benchmark's JSON when
one holds them with these settings *and* was measured in this environment (the same
`model_fingerprint`, which hashes every tensor and the tokenizer, and the same library
`versions`), else pruned here. `--test-only` reuses
the JSON's own test rows under the same condition, and reads the run's summary, top and finals
from the JSON when the run directory is gone.
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
    ap.add_argument(
        "--heldout-windows",
        type=int,
        default=None,
        help="the full stage's held-out windows of 1024 tokens (default: the CLI's, 2)",
    )
    ap.add_argument(
        "--reconstruct",
        choices=("none", "iterative"),
        default="none",
        help="the search's --reconstruct: iterative scores every candidate inside SparseGPT's "
        "loop (then each top rule is also pruned that way on test)",
    )
    ap.add_argument(
        "--terminals",
        default=None,
        help="the search's --terminals (default: the CLI's, W,G,X); W,G,X,S adds SparseGPT's "
        "column curvature",
    )
    ap.add_argument(
        "--refit",
        type=int,
        default=0,
        help="the search's --refit (CG iterations; default 0: none): every candidate scored with "
        "its kept weights refitted, every rule pruned on test with that refit, and SparseGPT "
        "and Wanda with it beside them",
    )
    ap.add_argument("--top", type=int, default=5, help="hall-of-fame rules pruned on test")
    ap.add_argument(
        "--test-only", action="store_true", help="skip the search: prune the existing run's top"
    )
    ap.add_argument(
        "--final-top",
        type=int,
        default=None,
        help="rules the search re-runs with a layer-sequential prune (default: the CLI's)",
    )
    ap.add_argument(
        "--no-reconstruct",
        action="store_true",
        help="skip the best + reconstruct and + iterative prunes",
    )
    ap.add_argument("--out", default=None, help="run directory (default runs/bench-search-S)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: the CLI's)"
    )
    ap.add_argument(
        "--grad-path",
        default=None,
        help="gradient file for the test-set prunes (default: the run's grads.pth, the G the "
        "search scored with)",
    )
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
        base.fitness,
        model=args.model,
        calib=str(CALIB),
        sparsity_type=args.types,
        reconstruct=args.reconstruct,
        refit=args.refit,
    )
    if args.heldout_windows is not None:
        fit = dataclasses.replace(fit, heldout_windows=args.heldout_windows)
    final_top = base.final_top if args.final_top is None else args.final_top
    settings = dataclasses.replace(
        base,
        fitness=fit,
        strategy=args.strategy,
        final_top=final_top,
        time_limit=args.minutes * 60,
        terminals=args.terminals or base.terminals,
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
    from pzshell.search.backends import local_backend

    backend, workers = local_backend(args.workers, "cpu")
    t0 = time.perf_counter()
    search = (
        None
        if args.test_only
        else Search(
            settings,
            out,
            backend=backend,
            workers=workers,
            cache=FitnessCache(cache_path),
            on_event=on_event,
            resume=args.resume,
        )
    )
    if search is not None:
        search.run()
    search_wall = None if search is None else time.perf_counter() - t0
    # with --test-only, test prunes already in the JSON (same rule, setting, reconstruct, in this
    # environment: fingerprint and versions, with per-window NLL) are reused, not recomputed
    here = _environment(args.model)
    # the test prunes read the G the search scored every candidate with (the run's grads.pth):
    # rules with tanh(G) or G + W depend on G's scale, which grows with its windows
    grad_path = args.grad_path or (
        str(out / "grads.pth")
        if (out / "grads.pth").exists()
        else str(out.parent / "grads_smollm2_valid_32x512_seed0.pth")
    )
    from pzshell.engine.stats import gradient_fingerprint, load_gradients

    here_g = gradient_fingerprint(load_gradients(grad_path)) if Path(grad_path).exists() else None
    console.print(f"test prunes read G from {grad_path} (fingerprint {here_g or 'to be made'})")
    done = {}
    prior = json.loads(json_path.read_text()) if args.test_only and json_path.exists() else {}
    for r in prior.get("test", []):
        if r.get("formula"):
            why = _not_reusable(r, here, here_g)
            if why:
                console.print(
                    f"{r['name']} at {r['setting']} in {json_path.name}: {why}: pruned again"
                )
                continue
            key = (str(load_metric(r["formula"])), r["setting"], _mode(r["name"]))
            done[(*key, r.get("refit") or 0)] = r
    if args.test_only:
        search_wall = prior.get("search_wall_seconds")
    # the run directory is scratch: when it is gone, the JSON's own record of the run is used
    from_json = args.test_only and not (out / "candidates.jsonl").exists()
    if from_json:
        if not prior:
            console.print(f"error: --test-only needs {out}/candidates.jsonl or {json_path}")
            return 2
        console.print(f"{out} holds no run: its summary, top and finals are read from {json_path}")
        summary = prior["summary"]
    else:
        summary = json.loads((out / "summary.json").read_text())
    top = prior["top"][: args.top] if from_json else _top(out, args.top)
    finals, post_hoc = summary.get("finals") or [], from_json and bool(prior.get("finals_post_hoc"))
    if from_json:
        finals = prior.get("finals") or []
    elif not finals and final_top > 0:
        console.print(f"the run has no finals: the top {final_top} re-run now (post hoc)")
        finals, post_hoc = _finals_after(out, fit, final_top), True
    scored = [f for f in finals if f.get("fitness") is not None]
    # the search's answer: a final that beat the reference (Wanda) on the finals' windows by the
    # run's margin, else the reference itself (summary.json says which); older runs: best final
    answer = summary.get("best")
    reference = summary.get("reference") or {}
    pick = next((f for f in scored if f["formula"] == answer), None)
    if pick is None and answer and reference.get("best_is_reference"):
        pick = {"formula": answer, "reference": True}
    if pick is None:
        pick = scored[0] if scored else None

    # ---- the test set ---------------------------------------------------------------------------
    pairs = fit.settings()
    common = {"model": ModelSpec(args.model), "calib": calib_spec(32, 512, seed=0)}
    known = _known_baselines(here, here_g, {(p.sparsity_type, p.ratio) for p in pairs}, console)
    rows = []

    # a run with --refit: every rule is pruned with its refit, as the search scored it
    run_refit = (prior["settings"]["fitness"].get("refit") or 0) if from_json else fit.refit

    def prune(name: str, p, **kw) -> dict:
        formula = str(kw["metric"]) if kw.get("metric") is not None else None
        if formula and run_refit:
            kw["refit"], name = run_refit, name + " + refit"
        key = (formula, p.label, _mode(name), kw.get("refit") or 0)
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
        if formula:  # the same rule under another name (the pick among the top) is not re-pruned
            done[key] = dict(res, formula=formula)
        return res

    for p in pairs:
        for b in BASELINES:
            res = known.get((b, p.sparsity_type, p.ratio))
            if res is None:
                res = prune(b, p, method=b)
            rows.append(dict(res, name=b, setting=p.label))
        for b in ("wanda", "sparsegpt") if run_refit else ():  # the baselines refitted alike
            rows.append(dict(prune(f"{b} + refit", p, method=b, refit=run_refit), setting=p.label))
        for rank, r in enumerate(top, 1):
            tree = load_metric(r["formula"])
            rows.append(
                dict(prune(f"#{rank}", p, method="metric", metric=tree), formula=r["formula"])
            )
            if fit.reconstruct == "iterative":  # as the search scored it
                res = prune(f"#{rank} + iterative", p, method="metric", metric=tree, iterative=True)
                rows.append(dict(res, formula=r["formula"]))
        if pick is not None:
            tree = load_metric(pick["formula"])
            rows.append(
                dict(prune("pick", p, method="metric", metric=tree), formula=pick["formula"])
            )
        # a multi-setting fitness can hide a rule that wins at one setting only: the best
        # held-out value at this setting, when it is not already among the top
        best_here = (
            next(
                (
                    {"formula": r["formula"]}
                    for r in prior["test"]
                    if r["name"] == f"best at {p.label}"
                ),
                None,
            )
            if from_json
            else _best_at(out, p.label)
        )
        if best_here and best_here["formula"] not in {r["formula"] for r in top}:
            tree = load_metric(best_here["formula"])
            res = prune(f"best at {p.label}", p, method="metric", metric=tree)
            rows.append(dict(res, formula=best_here["formula"]))
        best = pick or (top[0] if top else None)
        if best is not None and not args.no_reconstruct:
            tree = load_metric(best["formula"])
            who = "pick" if pick is not None else "#1"
            res = prune(f"{who} + reconstruct", p, method="metric", metric=tree, reconstruct=True)
            rows.append(dict(res, formula=best["formula"]))
            # SparseGPT's loop with the rule choosing each block's (each group's) mask from
            # the weights as updated so far: `pzshell prune --method metric+iterative`
            res = prune(f"{who} + iterative", p, method="metric", metric=tree, iterative=True)
            rows.append(dict(res, formula=best["formula"]))

    # ---- each rule against Wanda, window by window ----------------------------------------------
    for p in pairs:
        wanda = next((r for r in rows if r["setting"] == p.label and r["name"] == "wanda"), None)
        sgpt_fit = next(
            (r for r in rows if r["setting"] == p.label and r["name"] == "sparsegpt + refit"), None
        )
        for r in (r for r in rows if r["setting"] == p.label and r["name"] != "wanda"):
            r["vs_wanda"] = paired_vs(r, wanda)
            if r["name"].endswith(" + refit"):  # against SparseGPT with the same refit
                r["vs_sparsegpt_refit"] = paired_vs(r, sgpt_fit)

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
    # the run's own fitness settings (a run read from the JSON may predate today's defaults);
    # runs from before --final-windows judged their finals on the full stage's held-out windows
    run_fit = prior["settings"]["fitness"] if from_json else dataclasses.asdict(fit)
    final_windows = run_fit.get("final_windows") or run_fit["heldout_windows"]
    for f in finals:
        tokens = f.get("final_tokens") or (
            "?" if run_fit.get("final_windows") else final_windows * run_fit["heldout_seqlen"]
        )
        t.add_row(
            f"final{' (post hoc)' if post_hoc else ''}: held-out {_fmt(f['fitness'])} "
            f"on {tokens} tokens after a layer-sequential prune "
            f"(search fitness {_fmt(f.get('fast_fitness'))}"
            + (
                f"; {f['vs_reference']['change']:+.1%} ± {f['vs_reference']['se']:.1%} vs the "
                f"reference"
                if f.get("vs_reference")
                else ""
            )
            + ")",
            f["formula"],
        )
    if pick is not None:
        what = "the reference: no final beat it" if pick.get("reference") else "best final"
        t.add_row(f"the search's pick ({what})", pick["formula"])
    if summary.get("verdict"):
        t.add_row("finals against the reference", summary["verdict"])
    for p in pairs:
        for r in (r for r in rows if r["setting"] == p.label):
            label = r["name"] if r["name"] in BASELINES else f"{r['name']} {r.get('formula', '')}"
            vs, vs_fit = r.get("vs_wanda"), r.get("vs_sparsegpt_refit")
            t.add_row(
                f"test ppl at {p.label}: {label}",
                f"{r['ppl']:.3f}"
                + (f" ({vs['change']:+.1%} ± {vs['se']:.1%} vs Wanda)" if vs else "")
                + (
                    f" ({vs_fit['change']:+.1%} ± {vs_fit['se']:.1%} vs SparseGPT + refit)"
                    if vs_fit
                    else ""
                ),
            )
    t.caption = (
        f"test: first 8x1024 tokens of {EVAL.name}; calibration 32x512 of {CALIB.name}, seed 0; "
        f"search fitness on held-out {run_fit['heldout_windows']}x{run_fit['heldout_seqlen']} "
        f"tokens of the calibration text, finals on up to "
        f"{final_windows}x{run_fit['heldout_seqlen']}; "
        f"baselines reused only where measured in this environment"
    )
    print_table(t, width=None)
    doc = {
        "settings": prior["settings"] if from_json else settings.to_dict(),
        "minutes": prior.get("minutes") if from_json else args.minutes,
        "search_wall_seconds": round(search_wall, 1) if search_wall else None,
        "summary": summary,
        "top": top,
        "finals": finals,
        "finals_post_hoc": post_hoc,
        "pick": pick and pick["formula"],
        "test": rows,
        "targets": _targets(rows, pairs) + _refit_lines(rows, pairs),
    }
    write_json(json_path, doc, default=str)
    # the fitness-over-time plot travels with the JSON (the run directory is scratch)
    plot = out / "fitness.png"
    if plot.exists():
        dest = json_path.with_name(json_path.stem + "_fitness.png")
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.write_bytes(plot.read_bytes())
        tmp.replace(dest)
        print(f"fitness plot: {dest}")
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


def _mode(name: str) -> str:
    """A test row's prune mode from its name: plain, reconstruct or iterative (a refit is the
    row's ``refit`` field, kept beside it)."""
    name = name.removesuffix(" + refit")
    return next((m for m in ("reconstruct", "iterative") if name.endswith(m)), "")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _finals_after(out: Path, fit, k: int) -> list[dict]:
    """A finished run's finals, as the search makes them (its top ``k`` full-stage rules by
    held-out fitness, each pruned layer-sequentially and measured on the finals' windows),
    for a run that was made without them. Nothing is written to the run directory."""
    from pzshell.lang import load_metric
    from pzshell.search.fitness import Evaluator
    from pzshell.search.ranking import finalists

    recs = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines() if x]
    ranked, _ = finalists(recs, k)  # the search's own choice: distinct held-out fitness
    ev = Evaluator(fit)
    finals = []
    for r in ranked:
        res = ev.final_fitness(load_metric(r["formula"]))
        finals.append(
            {
                "id": r["id"],
                "formula": r["formula"],
                "fitness": None if res["reason"] else res["final"],
                "fast_fitness": r["fitness"],
                "final_tokens": res.get("final_tokens"),
                "reason": res["reason"],
                "seconds": round(res["seconds"], 3),
                "settings": res["settings"],
                "size": r["size"],
            }
        )
    return sorted(finals, key=lambda f: (f["fitness"] is None, f["fitness"] or 0.0, f["id"]))


def _best_at(out: Path, label: str) -> dict | None:
    """The full-stage candidate with the best held-out perplexity at one setting."""
    recs = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines() if x]
    ok = [
        r
        for r in recs
        if r.get("stage") == "full" and (r.get("settings", {}).get(label) or {}).get("full")
    ]
    return min(ok, key=lambda r: (r["settings"][label]["full"], r["size"], r["id"]), default=None)


def _environment(model: str) -> dict:
    """What a test perplexity depends on beyond its settings: the weights and tokenizer as
    loaded (the full fingerprint) and the versions of the libraries that compute and read them
    (Wanda's rule at 2:4 gave test 210.92 in one session and 213.53 in another, on the same
    model file, with equal torch and transformers and the older, sampled fingerprint)."""
    from pzshell.models import load_model
    from pzshell.util import runtime_versions

    return {
        "model_fingerprint": load_model(model).fingerprint(),
        **{k: v for k, v in runtime_versions().items() if k not in ("python", "pzshell")},
    }


def _reads_g(row: dict) -> bool:
    """Whether the row's method reads the gradient statistic G (the Pruner-Zero tree, a rule
    with the terminal G)."""
    if row.get("method") == "pruner-zero":
        return True
    from pzshell.lang import load_metric

    metric = row.get("formula") or row.get("metric")
    return metric is not None and "G" in load_metric(metric).terminals


def _not_reusable(row: dict, here: dict, here_g: str | None) -> str:
    """Why a stored test row cannot stand beside this run's, in words ('' when it can): it was
    measured in another environment (the keys of ``here`` in which it differs), with another G
    (``here_g``, the test prunes' gradient fingerprint) where its rule reads G, or it lacks the
    per-window NLL the paired comparison with Wanda needs."""
    then = {"model_fingerprint": row.get("model_fingerprint"), **(row.get("versions") or {})}
    keys = [k for k in here if then.get(k) != here[k]]
    if keys:
        return "measured with another " + ", ".join(
            f"{k} {then.get(k) or 'not recorded'} (here {here[k]})" for k in keys
        )
    if _reads_g(row) and row.get("gradient_fingerprint") != here_g:
        return (
            f"its rule reads G, and its G ({row.get('gradient_fingerprint') or 'not recorded'}) "
            f"is not this run's ({here_g})"
        )
    return "" if row.get("eval_window_nll") else "no per-window NLL (for the paired comparison)"


def _known_baselines(here: dict, here_g: str | None, wanted: set, console) -> dict:
    """Baselines already measured with the test settings in this environment: the rows of
    bench/results/prune.json and of every search benchmark's JSON (their baseline rows) whose
    weights and versions match ``here``. Any other row is pruned again (and said, for the
    ``wanted`` settings: ``(sparsity_type, ratio)``)."""
    found, stale = {}, []
    paths = [RESULTS / "prune.json", *sorted(RESULTS.glob("search*.json"))]
    for path in (p for p in paths if p.exists()):
        doc = json.loads(path.read_text())
        rows = doc.get("rows", []) if path.name == "prune.json" else doc.get("test", [])
        for r in rows:
            if r.get("method") not in BASELINES or not math.isfinite(r.get("ppl") or math.inf):
                continue
            if (r.get("seqlen"), r.get("eval_windows"), r.get("eval_seqlen"), r.get("seed")) != (
                512,
                8,
                1024,
                0,
            ) or r.get("nsamples") not in (0, 32):
                continue
            ratio = 0.5 if r["sparsity_type"] != "unstructured" else r["sparsity_ratio"]
            key = (r["method"], r["sparsity_type"], ratio)
            if _not_reusable(r, here, here_g):
                stale.append((key, f"{r['method']} at {r['sparsity_type']} ({path.name})"))
            elif key not in found:
                found[key] = dict(r, source=str(path.relative_to(ROOT)))
    left = sorted({said for key, said in stale if key not in found and key[1:] in wanted})
    if left:
        console.print(
            "measured with other weights, versions or G, not reused: "
            + "; ".join(left[:6])
            + (f" and {len(left) - 6} more" if len(left) > 6 else "")
        )
    return found


# the issue's figures: test ppl to reach (best discovered, best + reconstruct) per sparsity type;
# the reconstruct figure is SparseGPT's as measured when the issue was filed
ISSUE_TARGETS = {"unstructured": (63.9, 55.6), "2:4": (190.0, 97.4)}


def paired_vs(row: dict, base: dict | None) -> dict | None:
    """``row``'s perplexity against ``base``'s on the same test windows, window by window: the
    change (``exp(mean dNLL) - 1``, negative = better) and its standard error (of the mean
    per-window NLL difference, in the same relative units). Differences well inside two standard
    errors are noise of the test set, not a property of the rules."""
    from pzshell.search.ranking import paired_change

    if not row or not base or row is base:
        return None
    if row.get("eval_fingerprint") != base.get("eval_fingerprint"):
        return None  # not the same tokens
    return paired_change(row.get("eval_window_nll"), base.get("eval_window_nll"))


def _than(gain: float) -> str:
    """A perplexity's change against a baseline in words: ``4.6% better`` / ``7.8% worse``."""
    return f"{abs(gain):.1%} {'better' if gain >= 0 else 'worse'}"


def _targets(rows: list[dict], pairs) -> list[str]:
    """The issue's targets, met or not, in words: against this run's baselines and against the
    issue's stated figures."""
    lines = []
    for p in pairs:
        row = {r["name"]: r for r in rows if r["setting"] == p.label}
        here = {name: r["ppl"] for name, r in row.items()}
        paired = {name: r.get("vs_wanda") for name, r in row.items()}
        wanda, sgpt = here.get("wanda"), here.get("sparsegpt")
        # the search's pick (its best final) when it has finals, else the best held-out rule
        best = here.get("pick", here.get("#1"))
        rec = here.get("pick + reconstruct", here.get("#1 + reconstruct"))
        it = here.get("pick + iterative", here.get("#1 + iterative"))
        alone = here.get(f"best at {p.label}")
        if alone is not None and wanda is not None:
            lines.append(
                f"{p.label}: this setting's best held-out rule {alone:.3f} vs Wanda {wanda:.3f} "
                f"({_than(1 - alone / wanda)})"
            )
        if best is not None and wanda is not None:
            gain = 1 - best / wanda
            goal = 0.03 if not p.n else 0.10
            met = "met" if gain >= goal else "NOT met"
            vs = paired.get("pick") or paired.get("#1")
            noise = (
                f", ± {vs['se']:.1%} window by window over {vs['windows']} windows" if vs else ""
            )
            lines.append(
                f"{p.label}: best discovered {best:.3f} vs Wanda {wanda:.3f} "
                f"({_than(gain)}{noise}; target >= {goal:.0%} better): {met}"
            )
        stated = ISSUE_TARGETS.get(p.sparsity_type)
        if best is not None and stated is not None and (p.n or p.ratio == 0.5):
            met = "met" if best <= stated[0] else "NOT met"
            lines.append(f"{p.label}: best discovered {best:.3f} vs stated <= {stated[0]}: {met}")
        if rec is not None and sgpt is not None:
            met = "met" if rec <= sgpt else "NOT met"
            lines.append(f"{p.label}: best + reconstruct {rec:.3f} vs SparseGPT {sgpt:.3f}: {met}")
        if rec is not None and stated is not None and (p.n or p.ratio == 0.5):
            met = "met" if rec <= stated[1] else "NOT met"
            lines.append(f"{p.label}: best + reconstruct {rec:.3f} vs stated <= {stated[1]}: {met}")
        if it is not None and sgpt is not None:  # not one of the issue's targets: beside them
            vs = paired_vs(
                row.get("pick + iterative", row.get("#1 + iterative")), row.get("sparsegpt")
            )
            noise = (
                f" ({vs['change']:+.1%} ± {vs['se']:.1%} window by window over "
                f"{vs['windows']} windows)"
                if vs
                else ""
            )
            lines.append(
                f"{p.label}: (beside the targets) best + iterative {it:.3f} vs SparseGPT "
                f"{sgpt:.3f}{noise}: {'better' if it <= sgpt else 'worse'}"
            )
    return lines


def _refit_lines(rows: list[dict], pairs) -> list[str]:
    """With --refit: the search's rule (refitted as it was scored) against SparseGPT with the
    same refit, the comparison that counts once weights are refitted (the issue's reconstruct
    figures are SparseGPT's without one, and every refitted rule here is below them)."""
    lines = []
    for p in pairs:
        row = {r["name"]: r for r in rows if r["setting"] == p.label}
        base = row.get("sparsegpt + refit")
        if base is None:
            continue
        for name in (
            "pick + refit",
            "pick + iterative + refit",
            "#1 + refit",
            "#1 + iterative + refit",
        ):
            r = row.get(name)
            if r is None:
                continue
            vs = r.get("vs_sparsegpt_refit")
            noise = f" ({vs['change']:+.1%} ± {vs['se']:.1%} window by window)" if vs else ""
            better = vs is not None and vs["change"] + 2 * vs["se"] < 0
            lines.append(
                f"{p.label}: {name} {r['ppl']:.3f} vs SparseGPT + refit {base['ppl']:.3f}{noise}: "
                f"{'better by 2 standard errors' if better else 'not measurably better'}"
            )
    return lines


if __name__ == "__main__":
    sys.exit(main())
