"""An allocation at another sparsity: metrics pruned on SmolLM2-135M with and without a fixed
per-block allocation (for example the one `bench/alloc_search.py` chose at 70%), measured on
WikiText-2 test. One command, one table:

    .venv/bin/python bench/alloc_transfer.py        # tanh(A) @ 0.16 at 50%: Wanda and the
                                                    # search benchmark's #1 metric
    .venv/bin/python bench/alloc_transfer.py --ratio 0.6 --allocation D --lambda 0.08

Every row is a real layer-sequential prune with bench/prune.py's settings: calibration 32x512
of wikitext-2 valid.txt, seed 0, the first 8x1024 tokens of wiki.test.raw. The allocation is
given, not chosen on test: the default is the one the allocation search picked on held-out
calibration text at 70% (bench/results/alloc_search.json).
"""

from __future__ import annotations

import argparse
import sys
import time

from benchlib import (
    RESULTS,
    ROOT,
    calib_spec,
    eval_spec,
    print_table,
    require_data,
    table,
    write_json,
)

METRICS = ("W * sqrt(X)", "(W * (X * coln(W)))^2 * tanh(tanh(W) * G)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--allocation", default="tanh(A)", help="allocation formula (or owl)")
    ap.add_argument("--lambda", dest="lam", type=float, default=0.16, help="its spread")
    ap.add_argument("--ratio", type=float, default=0.5, help="unstructured sparsity")
    ap.add_argument("--metric", action="append", help="metrics (default Wanda and search #1)")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--json", default=None, help="default bench/results/alloc_transfer.json")
    args = ap.parse_args()
    require_data()
    metrics = args.metric or list(METRICS)

    from rich.console import Console

    from pzshell.jobs import ModelSpec, PruneJob, run_prune
    from pzshell.lang import load_metric

    console = Console(stderr=True)
    grad = ROOT / "runs" / "grads_smollm2_valid_32x512_seed0.pth"  # bench/search.py's file
    rows = []
    for formula in metrics:
        for alloc in ("uniform", args.allocation):
            job = PruneJob(
                model=ModelSpec(args.model),
                calib=calib_spec(32, 512, seed=0),
                method="metric",
                metric=load_metric(formula),
                sparsity_ratio=args.ratio,
                sparsity_type="unstructured",
                allocation=alloc,
                owl_lambda=args.lam,
                eval=eval_spec(1024, 8),
                gradient_path=str(grad) if "G" in formula else None,
            )
            t = time.perf_counter()
            _, res = run_prune(job)
            sec = round(time.perf_counter() - t, 1)
            console.print(f"{time.strftime('%H:%M:%S')} {formula} / {alloc}: {res['ppl']:.3f}")
            rows.append(
                {
                    "metric": formula,
                    "allocation": alloc,
                    "lambda": None if alloc == "uniform" else args.lam,
                    "test_ppl": res["ppl"],
                    "actual_sparsity": res.get("actual_sparsity"),
                    "block_sparsity": res.get("block_sparsity"),
                    "seconds": sec,
                }
            )
    t = table(
        f"{args.model}, {args.ratio:g} unstructured: uniform vs --allocation '{args.allocation}' "
        f"--owl_lambda {args.lam:g}; test = first 8x1024 tokens of wiki.test.raw, calibration "
        f"32x512 valid.txt seed 0",
        ["metric", "allocation", "test ppl", "vs uniform", "achieved sparsity", "seconds"],
    )
    for r in rows:
        base = next(x for x in rows if x["metric"] == r["metric"])["test_ppl"]
        t.add_row(
            r["metric"],
            r["allocation"] + ("" if r["lambda"] is None else f" @ {r['lambda']:g}"),
            f"{r['test_ppl']:.3f}",
            f"{(r['test_ppl'] / base - 1) * 100:+.1f}%",
            f"{r['actual_sparsity']:.6f}",
            f"{r['seconds']:.0f}",
        )
    print_table(t)
    path = args.json or RESULTS / "alloc_transfer.json"
    write_json(
        path,
        {
            "model": args.model,
            "sparsity_ratio": args.ratio,
            "allocation": args.allocation,
            "owl_lambda": args.lam,
            "calibration": "wikitext-2 valid.txt, 32x512, seed 0",
            "test": "wiki.test.raw, first 8x1024 tokens",
            "rows": rows,
        },
    )
    console.print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
