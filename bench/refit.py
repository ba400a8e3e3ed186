"""Least-squares refit benchmark: SmolLM2-135M at 50% unstructured and 2:4, each rule with and
without ``--refit`` (the kept weights re-solved by least squares once the mask is chosen). One
command, one table, one JSON:

    .venv/bin/python bench/refit.py                 # ~40 min on a 2-core CPU
    .venv/bin/python bench/refit.py --types 2:4 --iters 10,30,100   # the iteration count

Settings as bench/prune.py's: calibration 32 windows x 512 tokens of
``../shared/data/wikitext-2/valid.txt`` (seed 0); test on the first 8 x 1024 tokens of
``../shared/data/wikitext-2-raw/wiki.test.raw``. The rules: SparseGPT; Wanda's mask with no
update; and the search benchmarks' picks, pruned as they were found (``metric+iterative`` for
the searches with ``--reconstruct iterative``, the plain mask for the plain 2:4 search). Each row
is compared with SparseGPT (no refit) window by window (the change in perplexity and its paired
standard error). Every prune runs in this process, one after another; the JSON is rewritten
after each row, so an interrupted run keeps what it measured.
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

from pzshell.engine.refit import REFIT_ITERS

# the search benchmarks' picks (bench/results/search_*.json), as they were found
PICKS = {
    "unstructured": [
        ("search pick (50% iterative)", "W * mms(W * tanh(G)) * mms(X + (sqrt(X) + W))", True),
    ],
    "2:4": [
        (
            "search pick (2:4 plain)",
            "rown(W) * (W * (rown(W) + sqrt(X)) * tanh(tanh(tanh(G))))",
            False,
        ),
        ("evolved (2:4 iterative, S)", "sqrt(S) * (W * sqrt(sqrt(G)))", True),
    ],
}


def rows_for(sparsity_type: str, iters: list[int]) -> list[dict]:
    out = [dict(name="SparseGPT", method="sparsegpt", refit=0)]
    out += [dict(name="SparseGPT", method="sparsegpt", refit=k) for k in iters]
    out += [dict(name="Wanda", method="wanda", refit=0)]
    out += [dict(name="Wanda", method="wanda", refit=REFIT_ITERS)]
    for name, formula, iterative in PICKS[sparsity_type]:
        for k in (0, REFIT_ITERS):
            out.append(
                dict(name=name, method="metric", metric=formula, iterative=iterative, refit=k)
            )
    return [dict(r, sparsity_type=sparsity_type) for r in out]


def _compare(rows: list[dict], paired_change) -> None:
    """Each row against SparseGPT at its setting, window by window: ``vs_sparsegpt`` (the
    published SparseGPT, no refit) and, for a refitted row, ``vs_sparsegpt_refit`` (SparseGPT
    with the same number of refit iterations: the fair comparison once weights are refitted)."""

    def base(setting: str, refit: int) -> dict | None:
        return next(
            (
                d
                for d in rows
                if d["method"] == "sparsegpt"
                and d["refit"] == refit
                and d["sparsity_type"] == setting
            ),
            None,
        )

    for r in rows:
        b0 = base(r["sparsity_type"], 0)
        bk = base(r["sparsity_type"], r["refit"]) if r["refit"] else None
        r["vs_sparsegpt"] = (
            paired_change(r["window_nll"], b0["window_nll"]) if b0 and b0 is not r else None
        )
        r["vs_sparsegpt_refit"] = (
            paired_change(r["window_nll"], bk["window_nll"]) if bk and bk is not r else None
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--types", default="unstructured,2:4", help="sparsity types, comma-separated")
    ap.add_argument(
        "--iters",
        default=str(REFIT_ITERS),
        help="SparseGPT's refit iterations, comma-separated (the other rules: the default)",
    )
    ap.add_argument("--grad-path", default="runs/grads_smollm2_valid_32x512_seed0.pth")
    ap.add_argument("--out", default=str(RESULTS / "refit.json"))
    ap.add_argument(
        "--from-json", action="store_true", help="print the table of the run in --out again"
    )
    args = ap.parse_args()
    require_data(CALIB, EVAL)
    iters = [int(x) for x in args.iters.split(",")]
    types = [t.strip() for t in args.types.split(",")]
    for t in types:
        if t not in PICKS:
            ap.error(f"--types: {t!r} is not one of {', '.join(PICKS)}")

    from pzshell.jobs import ModelSpec, PruneJob, run_prune
    from pzshell.lang import load_metric
    from pzshell.search.ranking import paired_change

    settings = mask_bench_settings(args.model)
    done: list[dict] = []
    if args.from_json:  # print the table of a finished run again (comparisons recomputed)
        prior = json.loads(Path(args.out).read_text())
        settings, done = prior["settings"], prior["rows"]
    todo = [] if args.from_json else [r for t in types for r in rows_for(t, iters)]
    for spec in todo:
        job = PruneJob(
            method=spec["method"],
            sparsity_ratio=0.5,
            sparsity_type=spec["sparsity_type"],
            metric=load_metric(spec["metric"]) if spec.get("metric") else None,
            iterative=spec.get("iterative", False),
            refit=spec["refit"],
            model=ModelSpec(args.model),
            calib=calib_spec(32, 512, seed=0),
            eval=eval_spec(1024, 8),
            gradient_path=args.grad_path,
        )
        t = time.perf_counter()
        _, res = run_prune(job)
        res.pop("layers", None)
        row = dict(
            spec,
            label=res["method"],
            ppl=res["ppl"],
            window_nll=res["eval_window_nll"],
            refit_error_median=res.get("refit_error_median"),
            prune_seconds=round(res["prune_seconds"], 1),
            seconds=round(time.perf_counter() - t, 1),
        )
        done.append(row)
        print(
            f"{spec['sparsity_type']} {row['name']} ({row['label']}): ppl {row['ppl']:.3f} "
            f"[{row['seconds']:.0f} s]",
            flush=True,
        )
        _compare(done, paired_change)
        write_json(args.out, {"settings": settings, "rows": done})
    _compare(done, paired_change)
    if args.from_json:
        write_json(args.out, {"settings": settings, "rows": done})

    t = table(
        f"Least-squares refit: {args.model}, calib 32x512 of valid.txt (seed 0), test 8x1024 of "
        f"wiki.test.raw, 50% sparsity",
        [
            "setting",
            "rule",
            "mode",
            "refit",
            "test ppl",
            "vs SparseGPT",
            "vs SparseGPT+refit",
            "layer error",
            "prune s",
        ],
        left=3,
    )
    for r in done:
        vs, vs_fit = r["vs_sparsegpt"], r.get("vs_sparsegpt_refit")
        t.add_row(
            r["sparsity_type"],
            r["name"] + (f"\n{r['metric']}" if r.get("metric") else ""),
            r["label"],
            str(r["refit"] or "-"),
            f"{r['ppl']:.3f}",
            f"{vs['change']:+.1%} ± {vs['se']:.1%}" if vs else "-",
            f"{vs_fit['change']:+.1%} ± {vs_fit['se']:.1%}" if vs_fit else "-",
            f"{r['refit_error_median']:.3f}" if r["refit_error_median"] is not None else "-",
            f"{r['prune_seconds']:.0f}",
        )
    print_table(t)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
