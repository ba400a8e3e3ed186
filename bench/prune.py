"""Pruning benchmark: SmolLM2-135M, dense vs magnitude / Wanda / SparseGPT / Pruner-Zero tree at
50% unstructured and 2:4. One command, one table, one JSON:

    .venv/bin/python bench/prune.py            # full run (~40 min on a 2-core CPU)
    .venv/bin/python bench/prune.py --quick    # 4 x 256 calibration, 2 x 512 evaluation

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

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
CALIB = SHARED / "wikitext-2" / "valid.txt"
EVAL = SHARED / "wikitext-2-raw" / "wiki.test.raw"

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
    """Run one configuration in this process and return its results dict."""
    sys.path.insert(0, str(ROOT))
    from pzshell.jobs import PruneJob, evaluate_ppl, run_prune
    from pzshell.models import load_model
    from pzshell.util import peak_rss_mb

    if spec["method"] == "dense":
        t = time.perf_counter()
        lm = load_model(spec["model"])
        res = evaluate_ppl(lm, spec["eval"], spec["eval_seqlen"], spec["eval_windows"])
        res.update(prune_seconds=0.0, eval_seconds=time.perf_counter() - t)
        res["peak_rss_mb"] = peak_rss_mb()
        return res
    job = PruneJob(
        model=spec["model"], method=spec["method"], sparsity_ratio=0.5,
        sparsity_type=spec["type"], nsamples=spec["nsamples"], seed=0, calib=spec["calib"],
        seqlen=spec["seqlen"], eval=spec["eval"], eval_seqlen=spec["eval_seqlen"],
        eval_windows=spec["eval_windows"], gradient_path=spec.get("gradient_path"),
    )  # fmt: skip
    _, res = run_prune(job)
    res.pop("layers", None)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--methods", default="dense,magnitude,wanda,sparsegpt,pruner-zero")
    ap.add_argument("--types", default="unstructured,2:4")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "prune.json"))
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
    for f in (CALIB, EVAL):
        if not f.exists():
            sys.exit(f"benchmark data missing: {f} (expected ../shared/data beside the project)")
    base = dict(
        model=args.model, calib=str(CALIB), eval=str(EVAL),
        nsamples=4 if args.quick else 32, seqlen=256 if args.quick else 512,
        eval_seqlen=512 if args.quick else 1024, eval_windows=2 if args.quick else 8,
    )  # fmt: skip
    grad_path = (
        Path(args.grad_path)
        if args.grad_path
        else (
            Path(tempfile.mkdtemp(prefix="pzbench-"))
            / f"grads_{base['nsamples']}x{base['seqlen']}.pth"
        )
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    methods = args.methods.split(",")
    for typ in args.types.split(","):
        for method in methods:
            if method == "dense" and typ != args.types.split(",")[0]:
                continue
            spec = dict(base, method=method, type=typ)
            if method == "pruner-zero":
                spec["gradient_path"] = str(grad_path)  # computed by the first run, then reused
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, __file__, "--one", json.dumps(spec)],
                capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"),
            )  # fmt: skip
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                sys.exit(f"benchmark run failed: {method} {typ}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res.update(method=method, sparsity_type="-" if method == "dense" else typ,
                       wall_seconds=time.perf_counter() - t)  # fmt: skip
            rows.append(res)
            # written after every configuration, so a long run that is cut short keeps its rows
            out.write_text(json.dumps({"settings": base, "rows": rows}, indent=2) + "\n")
            print(f"{method:12s} {typ:12s} ppl {res['ppl']:9.2f}  "
                  f"prune {res['prune_seconds']:6.1f}s"
                  f"  grad {res.get('grad_seconds', 0):6.1f}s  rss {res['peak_rss_mb']:6.0f} MiB",
                  file=sys.stderr, flush=True)  # fmt: skip
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"pzshell prune benchmark: {args.model}, calib {base['nsamples']}x"
              f"{base['seqlen']} ({CALIB.name}, seed 0), eval first {base['eval_windows']}x"
              f"{base['eval_seqlen']} of {EVAL.name}, sparsity 0.5, torch threads "
              f"{os.cpu_count()} cores")  # fmt: skip
    for col in (
        "method",
        "type",
        "ppl",
        "reference ppl",
        "diff",
        "prune s",
        "grad s",
        "peak RSS MiB",
    ):
        t.add_column(col, justify="right" if col not in ("method", "type") else "left")
    for r in rows:
        ref = REFERENCE.get((r["method"], r["sparsity_type"])) if not args.quick else None
        diff = f"{100 * (r['ppl'] / ref - 1):+.1f}%" if ref else "-"
        t.add_row(r["method"], r["sparsity_type"], f"{r['ppl']:.2f}", f"{ref}" if ref else "-",
                  diff, f"{r['prune_seconds']:.1f}", f"{r.get('grad_seconds', 0):.1f}",
                  f"{r['peak_rss_mb']:.0f}")  # fmt: skip
    Console(width=200).print(t)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
