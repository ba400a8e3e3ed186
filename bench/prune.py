"""Pruning benchmark: SmolLM2-135M, dense vs magnitude / Wanda / SparseGPT / Pruner-Zero tree at
50% unstructured and 2:4. One command, one table, one JSON:

    .venv/bin/python bench/prune.py            # full run (~12 min on a 2-core CPU)
    .venv/bin/python bench/prune.py --quick    # 4 x 256 calibration, 2 x 512 evaluation
    .venv/bin/python bench/prune.py --suite high   # 60% and 70% unstructured, each method with
                                               # uniform and OWL allocation, Wanda + DSnoT
                                               # (bench/results/prune_high.json, ~30 min)
    .venv/bin/python bench/prune.py --suite refine # Wanda with and without DSnoT at 50%, 60%
                                               # and 70% (bench/results/prune_refine.json)

Settings (the issue's): calibration 32 windows x 512 tokens sampled with seed 0 from
``../shared/data/wikitext-2/valid.txt``; evaluation on the first 8 windows x 1024 tokens of
``../shared/data/wikitext-2-raw/wiki.test.raw``. Each configuration runs in its own process so
its peak RSS is its own. The Pruner-Zero tree's gradient statistic is computed once from the
same 32 calibration windows and its time is reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import CALIB, EVAL, RESULTS, print_table, require_data, table, write_json

REFERENCE = {  # straightforward reference implementations, same settings (from the issue)
    ("dense", "-"): 29.2,
    ("magnitude", "unstructured"): 533,
    ("wanda", "unstructured"): 65.5,
    ("sparsegpt", "unstructured"): 57.2,
    ("pruner-zero", "unstructured"): 73.6,
    ("magnitude", "2:4"): 2165,
    ("wanda", "2:4"): 210.5,
    ("sparsegpt", "2:4"): 105.1,
    ("pruner-zero", "2:4"): 274.6,
}


def one(spec: dict) -> dict:
    """Run one configuration in this process and return its results dict (the dense model
    through ``run_eval``, the others through ``run_prune``: the one job layer)."""
    from pzshell.jobs import CalibSpec, EvalJob, EvalSpec, ModelSpec, PruneJob, run_eval, run_prune

    model = ModelSpec(spec["model"])
    ev = EvalSpec(spec["eval"], spec["eval_seqlen"], spec["eval_windows"])
    if spec["method"] == "dense":
        _, res = run_eval(EvalJob(model, ev))
        res["prune_seconds"] = 0.0
    else:
        job = PruneJob(
            method=spec["method"],
            sparsity_ratio=spec.get("ratio", 0.5),
            allocation=spec.get("allocation", "uniform"),
            refine=spec.get("refine", "none"),
            sparsity_type=spec["type"],
            model=model,
            calib=CalibSpec(spec["calib"], spec["nsamples"], spec["seqlen"], seed=0),
            eval=ev,
            gradient_path=spec.get("gradient_path"),
        )
        _, res = run_prune(job)
    res.pop("layers", None)
    return res


def run_one(spec: dict) -> dict:
    """``one(spec)`` in a fresh Python process (its peak RSS is its own)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        sys.exit(f"benchmark run failed: {spec['method']} {spec['type']}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _configs(args: argparse.Namespace, base: dict) -> list[dict]:
    """The configurations of a suite: ``base`` (the methods at 50%, unstructured and 2:4) or
    ``high`` (60% and 70% unstructured, uniform and OWL, and Wanda refined by DSnoT at 50-70%) or
    ``refine`` (Wanda with and without DSnoT at 50-70%, side by side)."""
    methods = args.methods.split(",")
    if args.suite == "refine":
        return [
            dict(base, method="wanda", type="unstructured", ratio=r, refine=refine)
            for r in (0.5, 0.6, 0.7)
            for refine in ("none", "dsnot")
        ]
    if args.suite == "base":
        types = args.types.split(",")
        return [
            dict(base, method=m, type=t)
            for t in types
            for m in methods
            if m != "dense" or t == types[0]
        ]
    out = [dict(base, method="dense", type="unstructured")] if "dense" in methods else []
    for ratio in (0.6, 0.7):
        for alloc in ("uniform", "owl"):
            for m in methods:
                if m != "dense":
                    out.append(
                        dict(base, method=m, type="unstructured", ratio=ratio, allocation=alloc)
                    )
    out += [
        dict(base, method="wanda", type="unstructured", ratio=r, refine="dsnot")
        for r in (0.5, 0.6, 0.7)
    ]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--methods", default="dense,magnitude,wanda,sparsegpt,pruner-zero")
    ap.add_argument("--types", default="unstructured,2:4")
    ap.add_argument("--suite", default="base", choices=("base", "high", "refine"))
    ap.add_argument("--out", default=None, help="default bench/results/prune[_high].json")
    ap.add_argument(
        "--grad-path",
        default=None,
        help="gradient file to reuse or create (default: a temporary file)",
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return 0
    require_data()
    q = args.quick
    base = {
        "model": args.model,
        "calib": str(CALIB),
        "eval": str(EVAL),
        "nsamples": 4 if q else 32,
        "seqlen": 256 if q else 512,
        "eval_seqlen": 512 if q else 1024,
        "eval_windows": 2 if q else 8,
    }
    if args.grad_path:
        grad_path = Path(args.grad_path)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="pzbench-"))
        grad_path = tmp / f"grads_{base['nsamples']}x{base['seqlen']}.pth"
    name = {"base": "prune.json", "high": "prune_high.json", "refine": "prune_refine.json"}
    out = Path(args.out or RESULTS / name[args.suite])
    rows = []
    for spec in _configs(args, base):
        method, typ = spec["method"], spec["type"]
        if method == "pruner-zero":
            spec["gradient_path"] = str(grad_path)  # computed by the first run, then reused
        t = time.perf_counter()
        res = run_one(spec)
        res.update(
            method=method,
            sparsity_type="-" if method == "dense" else typ,
            wall_seconds=time.perf_counter() - t,
        )
        rows.append(res)
        # written after every configuration, so a long run that is cut short keeps its rows
        write_json(out, {"settings": base, "suite": args.suite, "rows": rows})
        print(
            f"{method:12s} {typ:12s} {spec.get('ratio', 0.5):.2f} "
            f"{spec.get('allocation', 'uniform'):8s} {spec.get('refine', 'none'):6s} "
            f"ppl {res['ppl']:9.2f}  prune {res['prune_seconds']:6.1f}s"
            f"  grad {res.get('grad_seconds', 0):6.1f}s  rss {res['peak_rss_mb']:6.0f} MiB",
            file=sys.stderr,
            flush=True,
        )
    t = table(
        f"pzshell prune benchmark ({args.suite}): {args.model}, calib {base['nsamples']}x"
        f"{base['seqlen']} ({CALIB.name}, seed 0), eval first {base['eval_windows']}x"
        f"{base['eval_seqlen']} of {EVAL.name}, torch threads {os.cpu_count()} cores",
        (
            "method",
            "type",
            "sparsity",
            "allocation",
            "refine",
            "ppl",
            "reference ppl",
            "diff",
            "prune s",
            "alloc s",
            "grad s",
            "peak RSS MiB",
        ),
        left=5,
    )
    for r in rows:
        ratio = r.get("sparsity_ratio", 0.0)
        plain = r.get("allocation", "uniform") == "uniform" and r.get("refine", "none") == "none"
        at_half = r["method"] == "dense" or ratio == 0.5
        ref = (
            REFERENCE.get((r["method"], r["sparsity_type"]))
            if plain and at_half and not q
            else None
        )
        diff = f"{100 * (r['ppl'] / ref - 1):+.1f}%" if ref else "-"
        t.add_row(
            r["method"],
            r["sparsity_type"],
            f"{ratio:.2f}",
            r.get("allocation", "-"),
            r.get("refine", "-"),
            f"{r['ppl']:.2f}",
            f"{ref}" if ref else "-",
            diff,
            f"{r['prune_seconds']:.1f}",
            f"{r.get('allocation_seconds', 0):.1f}",
            f"{r.get('grad_seconds', 0):.1f}",
            f"{r['peak_rss_mb']:.0f}",
        )
    print_table(t)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
