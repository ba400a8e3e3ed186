"""Fitness fidelity: how well does the search's fitness predict the real result? For a fixed set
of metrics, the search's full-stage fitness under two configurations, next to each metric's test
perplexity after the full layer-sequential prune (WikiText-2 test, bench/prune.py's settings),
and each configuration's Spearman rank correlation with it. One command, one table:

    .venv/bin/python bench/fidelity.py

Configurations (``FitnessSettings`` fields):

* ``every token`` — the search's defaults: X as Wanda's layer-sequential prune sees it per
  setting, the prune jobs' own calibration windows, 2 held-out windows of 1024 tokens clear of
  them, every held-out token scored;
* ``skip <unk>`` — the same, with ``heldout_skip="<unk>"``: the tokens of WikiText's ``<unk>``
  placeholder (with SmolLM2, 5% of the full stage's 2x1024 held-out tokens of valid.txt, 18% of
  the finals' 8x1024; the raw test text has none) are read as context but not scored.

The metrics: a fixed set of hand-made and earlier-found rules at both settings, plus, at each
setting, the top rules of that setting's search benchmark (bench/results/search_50.json,
search_24.json) — the close rules a search has to tell apart. The test perplexities are read
from bench/results/search*.json and prune.json where those hold the same rule, setting and
protocol (calibration 32x512 of valid.txt, seed 0; first 8x1024 tokens of wiki.test.raw), else
pruned here (about 90 s each on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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

FORMULAS = (
    "W * sqrt(X)",
    "W * sqrt(sqrt(X))",
    "tanh(W * (W * sqrt(X)) * (sqrt(sqrt(X)) * G))",
    "W * sqrt(mms(W * X) * mms(G))",
    "W * sqrt(X * G)",
    "W * (W * X) * (W * G) * sqrt(5.1 - X)",
    "abs(W * W) * mms(G)",
    "(W * (X * coln(W)))^2 * tanh(tanh(W) * G)",
    "(W * (X * coln(W)))^2 * tanh(W * G)",
    "tanh(W) * (W * X)",
    "tanh(W) * sqrt(X)",
)
# the searches' top rules, each at its own setting only
EXTRA = {
    "0.5 unstructured": (
        "G * ((W * X)^2 * coln(rown(W)^2))",
        "(G + W) * ((W * X)^2 * coln(W^2))",
        "coln(rown(W)^2) * ((W * X)^2 * coln(G + W))",
    ),
    "2:4": (
        "rown(W) * (W * (rown(W) + sqrt(X)) * tanh(tanh(tanh(G))))",
        "tanh(tanh(W)) * (W * (rown(W) + sqrt(X)) * tanh(tanh(tanh(G))))",
        "tanh(W) * (W * (rown(W) + sqrt(X)) * tanh(tanh(tanh(G))))",
        "tanh(tanh(W)) * (W * (rown(W) + sqrt(X)) * tanh(G))",
        "tanh(tanh(W)) * (W * sqrt(X) * tanh(tanh(G)))",
        "tanh(tanh(W)) * (W * sqrt(X) * tanh(G))",
    ),
}
METHOD_OF = {"W * sqrt(X)": "wanda", "abs(W * W) * mms(G)": "pruner-zero"}
SKIP = "<unk>"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--types", default="unstructured,2:4")
    ap.add_argument("--formula", action="append", help="metrics to compare (repeatable)")
    ap.add_argument("--json", default=str(RESULTS / "fidelity.json"))
    args = ap.parse_args()
    require_data()

    from pzshell.jobs import ModelSpec, PruneJob, run_prune
    from pzshell.lang import load_metric
    from pzshell.search import Evaluator, FitnessSettings
    from pzshell.search.ranking import spearman

    formulas = args.formula or list(FORMULAS)
    now = FitnessSettings(
        model=args.model, calib=str(CALIB), sparsity_type=args.types, heldout_skip=""
    )
    configs = {"every token": now, f"skip {SKIP}": dataclasses.replace(now, heldout_skip=SKIP)}
    pairs = now.settings()
    extra = {} if args.formula else {p.label: list(EXTRA.get(p.label, ())) for p in pairs}

    def rules(label: str) -> list[str]:
        return formulas + [f for f in extra.get(label, []) if f not in formulas]

    # ---- the truth: the full layer-sequential prune on the test set ----------------------------
    known = _known_test_ppl()
    grad_path = ROOT / "runs" / f"grads_{args.model}_valid_32x512_seed0.pth"
    truth: dict = {}
    for p in pairs:
        for f in rules(p.label):
            key = (str(load_metric(f)), p.label)
            if key in known:
                truth[key] = known[key]
                continue
            t = time.perf_counter()
            job = PruneJob(
                model=ModelSpec(args.model),
                calib=calib_spec(32, 512, seed=0),
                method=METHOD_OF.get(f, "metric"),
                metric=None if f in METHOD_OF else load_metric(f),
                sparsity_ratio=p.ratio,
                sparsity_type=p.sparsity_type,
                eval=eval_spec(1024, 8),
                gradient_path=str(grad_path),  # computed once, then reused (bench/search.py's)
            )
            _, res = run_prune(job)
            truth[key] = {
                "ppl": res["ppl"],
                "source": f"pruned here in {time.perf_counter() - t:.0f} s",
            }
            print(f"{f} at {p.label}: test ppl {res['ppl']:.3f}", file=sys.stderr)

    # ---- the search's fitness under each configuration -----------------------------------------
    fitness: dict = {}
    seconds: dict = {}
    for name, fs in configs.items():
        t = time.perf_counter()
        ev = Evaluator(fs)
        setup = time.perf_counter() - t
        t = time.perf_counter()
        every = list(dict.fromkeys(f for p in pairs for f in rules(p.label)))
        for f in every:
            res = ev.run(load_metric(f), None)
            for p in pairs:
                fitness[(name, str(load_metric(f)), p.label)] = res["settings"][p.label]["full"]
        seconds[name] = {
            "setup": round(setup, 1),
            "per_candidate": round((time.perf_counter() - t) / len(every), 2),
        }
        del ev

    # ---- the table ---------------------------------------------------------------------------
    rows, corr = [], {}
    for p in pairs:
        keys = [str(load_metric(f)) for f in rules(p.label)]
        test = [truth[(k, p.label)]["ppl"] for k in keys]
        for name in configs:
            vals = [fitness[(name, k, p.label)] for k in keys]
            corr[f"{name} {p.label}"] = spearman(vals, test)
            if extra.get(p.label):  # the close rules alone, with the reference rule
                close = [0] + [keys.index(str(load_metric(f))) for f in extra[p.label]]
                corr[f"{name} {p.label} (top rules and Wanda)"] = spearman(
                    [vals[i] for i in close], [test[i] for i in close]
                )
        for f, k, tv in zip(rules(p.label), keys, test, strict=True):
            rows.append(
                {
                    "formula": f,
                    "setting": p.label,
                    "test": tv,
                    **{name: fitness[(name, k, p.label)] for name in configs},
                    "test_source": truth[(k, p.label)].get("source"),
                }
            )
    names = list(configs)
    t = table(
        f"search fitness vs the real prune: {args.model}, calibration {CALIB.name} 32x512 seed 0, "
        f"test = wiki.test.raw 8x1024 after the layer-sequential prune",
        ("setting", "formula", "test ppl", *(f"fitness, {n}" for n in names)),
        left=2,
    )
    for r in rows:
        t.add_row(r["setting"], r["formula"], f"{r['test']:.3f}", *(f"{r[n]:.3f}" for n in names))
    for p in pairs:
        for what in ("", " (top rules and Wanda)"):
            if f"{names[0]} {p.label}{what}" in corr:
                t.add_row(
                    p.label,
                    f"Spearman with test{what}",
                    "",
                    *(f"{corr[f'{n} {p.label}{what}']:.3f}" for n in names),
                )
    t.add_row(
        "",
        "seconds per candidate (both settings)",
        "",
        *(f"{seconds[n]['per_candidate']}" for n in names),
    )
    print_table(t)
    write_json(
        args.json,
        {
            "settings": {name: dataclasses.asdict(fs) for name, fs in configs.items()},
            "rows": rows,
            "spearman": corr,
            "seconds": seconds,
        },
    )
    return 0


def _known_test_ppl() -> dict:
    """Test perplexities already measured with this protocol, keyed by (canonical formula text,
    setting label)."""
    from pzshell.lang import load_metric

    out: dict = {}
    for path in sorted(RESULTS.glob("search*.json")):
        for r in json.loads(path.read_text()).get("test", []):
            if r.get("reconstruct") or "reconstruct" in r.get("name", "") or not r.get("metric"):
                continue
            if (r.get("nsamples"), r.get("seqlen"), r.get("eval_windows")) != (32, 512, 8):
                continue
            key = (str(load_metric(r["metric"])), r["setting"])
            row = {"ppl": r["ppl"], "source": f"{path.name} ({r.get('method')})"}
            # the metric path (the one every searched rule takes) over a named method's
            if key not in out or (
                r.get("method") == "metric" and "(metric)" not in out[key]["source"]
            ):
                out[key] = row
    return out


if __name__ == "__main__":
    sys.exit(main())
