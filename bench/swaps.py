"""Least-squares swaps benchmark: SmolLM2-135M at 50% unstructured and 2:4, masks refined by
``--refine swaps`` (each row's exact output error on the calibration tokens lowered by swapping
pruned and kept weights; the weights themselves unchanged) beside DSnoT, the metrics alone,
SparseGPT and the refit. One command, one table, one JSON:

    .venv/bin/python bench/swaps.py                  # ~50 min on a 2-core CPU
    .venv/bin/python bench/swaps.py --types 2:4      # one setting
    .venv/bin/python bench/swaps.py --knobs          # the defaults against more work, ~17 min

Settings as bench/prune.py's and bench/refit.py's: calibration 32 windows x 512 tokens of
``../shared/data/wikitext-2/valid.txt`` (seed 0); test on the first 8 x 1024 tokens of
``../shared/data/wikitext-2-raw/wiki.test.raw``. SparseGPT (with and without a refit) is not
pruned again: its rows are read from ``bench/results/refit.json`` (same settings, same code
path), and every row here is compared with them window by window (the change in perplexity and
its paired standard error). The rules: Wanda, the published Pruner-Zero tree, and the plain
search benchmarks' picks (bench/results/search_50.json, search_24.json), as they were found.
Every prune runs in this process, one after another; the JSON is rewritten after each row, so an
interrupted run keeps what it measured.

``--knobs`` measures the swaps' defaults instead (``bench/results/swaps_knobs.json``): Wanda +
swaps with the default shortlist (unstructured) and rounds (N:M), against a longer shortlist and
more rounds, each compared window by window with the default.
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
    calib_spec,
    eval_spec,
    mask_bench_settings,
    print_table,
    require_data,
    table,
    write_json,
)

from pzshell.engine.refine import SWAP_ROUNDS, SWAP_SHORTLIST
from pzshell.engine.refit import REFIT_ITERS

# the plain search benchmarks' picks, as they were found
PICKS = {
    "unstructured": ("search pick (50% plain)", "G * ((W * X)^2 * coln(rown(W)^2))"),
    "2:4": ("search pick (2:4 plain)", "rown(W) * (W * (rown(W) + sqrt(X)) * tanh(tanh(tanh(G))))"),
}


def rows_for(sparsity_type: str) -> list[dict]:
    pick_name, pick = PICKS[sparsity_type]
    out = [
        dict(name="Wanda", method="wanda"),
        dict(name="Wanda", method="wanda", refine="dsnot"),
        dict(name="Wanda", method="wanda", refine="swaps"),
        dict(name="Pruner-Zero", method="pruner-zero", refine="swaps"),
        dict(name=pick_name, method="metric", metric=pick),
        dict(name=pick_name, method="metric", metric=pick, refine="swaps"),
    ]
    return [dict({"refine": "none", "refit": 0}, **r, sparsity_type=sparsity_type) for r in out]


# the swaps' knobs against their defaults: (setting, knob, value)
KNOBS = (
    ("unstructured", "swap_shortlist", SWAP_SHORTLIST),
    ("unstructured", "swap_shortlist", 48),
    ("2:4", "swap_rounds", SWAP_ROUNDS),
    ("2:4", "swap_rounds", 8),
)


def knob_rows(types: list[str]) -> list[dict]:
    return [
        dict(
            name="Wanda",
            method="wanda",
            refine="swaps",
            refit=0,
            sparsity_type=t,
            knob=k,
            value=v,
            default=v == (SWAP_SHORTLIST if k == "swap_shortlist" else SWAP_ROUNDS),
        )
        for t, k, v in KNOBS
        if t in types
    ]


def knob_table(rows: list[dict], paired_change, model: str) -> None:
    t = table(
        f"Least-squares swaps' knobs: {model}, Wanda + swaps, calib 32x512 of valid.txt (seed 0), "
        f"test 8x1024 of wiki.test.raw, 50% sparsity",
        ["setting", "knob", "test ppl", "vs default", "swaps", "layer error", "prune s"],
        left=2,
    )
    for r in rows:
        base = next(d for d in rows if d["default"] and d["sparsity_type"] == r["sparsity_type"])
        r["vs_default"] = None if r is base else paired_change(r["window_nll"], base["window_nll"])
        t.add_row(
            r["sparsity_type"],
            f"{r['knob']} {r['value']}" + (" (default)" if r["default"] else ""),
            f"{r['ppl']:.3f}",
            _fmt(r["vs_default"]),
            f"{r['refine_swaps']:,}",
            f"{r['refine_error_median']:.3f}",
            f"{r['prune_seconds']:.0f}",
        )
    print_table(t)


def sparsegpt_rows(path: Path) -> list[dict]:
    """SparseGPT with and without a refit, from the refit benchmark's JSON."""
    if not path.exists():
        return []
    prior = json.loads(path.read_text())
    return [
        dict(r, refine="none", source=str(path))
        for r in prior["rows"]
        if r["method"] == "sparsegpt" and r["refit"] in (0, REFIT_ITERS)
    ]


def _compare(rows: list[dict], refs: list[dict], paired_change) -> None:
    def ref(setting: str, refit: int) -> dict | None:
        return next(
            (d for d in refs if d["refit"] == refit and d["sparsity_type"] == setting), None
        )

    for r in rows:
        wanda = next(
            (
                d
                for d in rows
                if d["method"] == "wanda"
                and d["refine"] == "none"
                and not d["refit"]
                and d["sparsity_type"] == r["sparsity_type"]
            ),
            None,
        )
        b0 = ref(r["sparsity_type"], 0)
        bk = ref(r["sparsity_type"], REFIT_ITERS)
        r["vs_wanda"] = (
            paired_change(r["window_nll"], wanda["window_nll"])
            if wanda and wanda is not r
            else None
        )
        r["vs_sparsegpt"] = paired_change(r["window_nll"], b0["window_nll"]) if b0 else None
        r["vs_sparsegpt_refit"] = (  # a refitted row against SparseGPT with the same refit
            paired_change(r["window_nll"], bk["window_nll"]) if bk and r["refit"] else None
        )


def _fmt(c: dict | None) -> str:
    return f"{c['change']:+.1%} ± {c['se']:.1%}" if c else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--types", default="unstructured,2:4", help="sparsity types, comma-separated")
    ap.add_argument("--grad-path", default="runs/grads_smollm2_valid_32x512_seed0.pth")
    ap.add_argument("--refit-json", default=str(RESULTS / "refit.json"))
    ap.add_argument("--out", default=str(RESULTS / "swaps.json"))
    ap.add_argument(
        "--from-json", action="store_true", help="print the table of the run in --out again"
    )
    ap.add_argument(
        "--knobs",
        action="store_true",
        help="measure the swaps' defaults against a longer shortlist and more rounds "
        "(default --out: bench/results/swaps_knobs.json)",
    )
    args = ap.parse_args()
    if args.knobs and args.out == str(RESULTS / "swaps.json"):
        args.out = str(RESULTS / "swaps_knobs.json")
    require_data(CALIB, EVAL)
    types = [t.strip() for t in args.types.split(",")]
    for t in types:
        if t not in PICKS:
            ap.error(f"--types: {t!r} is not one of {', '.join(PICKS)}")

    from pzshell.jobs import ModelSpec, PruneJob, run_prune
    from pzshell.lang import load_metric
    from pzshell.search.ranking import paired_change

    settings = mask_bench_settings(
        args.model, swap_rounds=SWAP_ROUNDS, swap_shortlist=SWAP_SHORTLIST, refit=REFIT_ITERS
    )
    refs = [r for r in sparsegpt_rows(Path(args.refit_json)) if r["sparsity_type"] in types]
    done: list[dict] = []
    if args.from_json:
        prior = json.loads(Path(args.out).read_text())
        settings, done, refs = prior["settings"], prior["rows"], prior["sparsegpt"]
    if args.knobs:
        refs = []
    todo = (
        []
        if args.from_json
        else knob_rows(types)
        if args.knobs
        else [r for t in types for r in rows_for(t)]
    )
    for spec in todo:
        job = PruneJob(
            method=spec["method"],
            sparsity_ratio=0.5,
            sparsity_type=spec["sparsity_type"],
            metric=load_metric(spec["metric"]) if spec.get("metric") else None,
            refine=spec["refine"],
            refit=spec["refit"],
            model=ModelSpec(args.model),
            calib=calib_spec(32, 512, seed=0),
            eval=eval_spec(1024, 8),
            gradient_path=args.grad_path,
            **({spec["knob"]: spec["value"]} if "knob" in spec else {}),
        )
        t = time.perf_counter()
        _, res = run_prune(job)
        row = dict(
            spec,
            label=res["method"] + ("" if spec["refine"] == "none" else f" + {spec['refine']}"),
            metric=res.get("metric"),
            ppl=res["ppl"],
            window_nll=res["eval_window_nll"],
            refine_swaps=res.get("refine_swaps"),
            refine_error_median=res.get("refine_error_median"),
            refit_error_median=res.get("refit_error_median"),
            actual_sparsity=res["actual_sparsity"],
            prune_seconds=round(res["prune_seconds"], 1),
            seconds=round(time.perf_counter() - t, 1),
        )
        done.append(row)
        print(
            f"{spec['sparsity_type']} {row['name']} ({row['label']}): ppl {row['ppl']:.3f} "
            f"[{row['seconds']:.0f} s]",
            flush=True,
        )
        if not args.knobs:
            _compare(done, refs, paired_change)
        write_json(args.out, {"settings": settings, "rows": done, "sparsegpt": refs})
    if args.knobs or (done and "knob" in done[0]):
        knob_table(done, paired_change, args.model)
        write_json(args.out, {"settings": settings, "rows": done, "sparsegpt": refs})
        print(f"wrote {args.out}")
        return 0
    _compare(done, refs, paired_change)
    if args.from_json:  # the comparisons recomputed, as bench/refit.py does
        write_json(args.out, {"settings": settings, "rows": done, "sparsegpt": refs})

    t = table(
        f"Least-squares swaps: {args.model}, calib 32x512 of valid.txt (seed 0), test 8x1024 of "
        f"wiki.test.raw, 50% sparsity; SparseGPT rows from {Path(args.refit_json).name}",
        [
            "setting",
            "rule",
            "mask",
            "weights",
            "test ppl",
            "vs Wanda",
            "vs SparseGPT",
            "layer error",
            "prune s",
        ],
        left=4,
    )
    for r in refs:
        t.add_row(
            r["sparsity_type"],
            "SparseGPT",
            "sparsegpt",
            "update + refit" if r["refit"] else "SparseGPT update",
            f"{r['ppl']:.3f}",
            "-",
            "-",
            "-",
            f"{r['prune_seconds']:.0f}",
        )
    for r in done:
        t.add_row(
            r["sparsity_type"],
            r["name"] + (f"\n{r['metric']}" if r["method"] == "metric" else ""),
            r["refine"] if r["refine"] != "none" else "metric",
            "refit" if r["refit"] else "unchanged",
            f"{r['ppl']:.3f}",
            _fmt(r["vs_wanda"]),
            _fmt(r["vs_sparsegpt"]),
            f"{r['refine_error_median']:.3f}" if r.get("refine_error_median") else "-",
            f"{r['prune_seconds']:.0f}",
        )
    print_table(t)
    print("layer error: the median layer's output error after the swaps / before them")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
