"""How much does a metric's perplexity move when its gradient statistic ``G`` moves by rounding
noise? One command, one table, one JSON:

    .venv/bin/python bench/sensitivity.py --grad-path runs/grads.pth      # G from bench/prune.py

The Pruner-Zero tree ``abs(W*W)*mms(G)`` is applied to SmolLM2-135M at 50% unstructured and 2:4
with ``G`` as computed (seed "-") and with ``G`` multiplied elementwise by ``exp(eps * N(0,1))``
(seeds 0, 1, 2): ``eps`` defaults to 2^-11, the relative rounding step of fp16, the format the
published code stores ``G`` in. A figure that moves by several percent under this noise cannot
be compared with another implementation's to better than that. Perplexity on the first
8 x 1024 tokens of ``../shared/data/wikitext-2-raw/wiki.test.raw``; the statistic needs no
calibration pass (the tree uses only W and G).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

from benchlib import (
    EVAL,
    RESULTS,
    copy_model,
    eval_spec,
    print_table,
    require_data,
    table,
    write_json,
)

OUT = RESULTS / "sensitivity.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--grad-path", required=True, help="a G file (pzshell grad / bench/prune.py)")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--metric", default="abs(W*W)*mms(G)")
    ap.add_argument("--types", default="unstructured,2:4")
    ap.add_argument("--eps", type=float, default=2.0**-11, help="relative noise (default 2^-11)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--eval-seqlen", type=int, default=1024)
    ap.add_argument("--out", default=str(OUT), help=f"results JSON (default {OUT})")
    args = ap.parse_args()
    require_data(EVAL)
    if not Path(args.grad_path).exists():
        sys.exit(f"no gradient file at {args.grad_path}: make one with `pzshell grad`")

    import torch
    from rich.console import Console

    from pzshell.engine.prune import PruneConfig, prune_model
    from pzshell.engine.stats import load_gradients
    from pzshell.jobs import Evaluation
    from pzshell.lang import load_metric
    from pzshell.models import load_model

    lm = load_model(args.model, device="cpu")
    grads = load_gradients(args.grad_path, lm.model)
    # tokenized once; every pruned copy is measured on these same windows
    evaluation = Evaluation(lm, eval_spec(args.eval_seqlen, args.eval_windows), args.eval_seqlen)
    metric = load_metric(args.metric)
    rows = []
    log = Console(stderr=True)
    for typ in args.types.split(","):
        for seed in [None, *range(args.seeds)]:
            g = grads
            if seed is not None:
                gen = torch.Generator().manual_seed(seed)
                g = {
                    k: (v.float() * torch.exp(args.eps * torch.randn(v.shape, generator=gen)))
                    for k, v in grads.items()
                }
            pruned = copy_model(lm)
            t = time.perf_counter()
            prune_model(pruned.model, PruneConfig("metric", 0.5, typ, metric=metric), None, g)
            prune_s = time.perf_counter() - t
            ppl = evaluation.measure(pruned)["ppl"]
            rows.append({"sparsity_type": typ, "seed": seed, "ppl": ppl, "prune_seconds": prune_s})
            log.print(f"{typ:12s} noise seed {seed!s:4s} ppl {ppl:8.2f}  ({prune_s:.1f} s prune)")
            del pruned

    title = (
        f"{args.metric} on {args.model}, sparsity 0.5; G from {Path(args.grad_path).name} times "
        f"exp({args.eps:.2g}*N(0,1)); ppl on first {args.eval_windows}x{args.eval_seqlen} "
        f"tokens of {EVAL.name}"
    )
    tab = table(
        title, ("type", "ppl, G as computed", "ppl with noise (seeds)", "spread", "max change")
    )
    summary = {}
    for typ in args.types.split(","):
        base = next(r["ppl"] for r in rows if r["sparsity_type"] == typ and r["seed"] is None)
        noisy = [r["ppl"] for r in rows if r["sparsity_type"] == typ and r["seed"] is not None]
        spread = (max(noisy) - min(noisy)) if noisy else 0.0
        change = max((abs(p - base) / base for p in noisy), default=0.0)
        summary[typ] = {
            "base": base,
            "noisy": noisy,
            "spread": spread,
            "max_rel_change": change,
            "noisy_mean": statistics.fmean(noisy) if noisy else math.nan,
        }
        tab.add_row(
            typ,
            f"{base:.2f}",
            ", ".join(f"{p:.2f}" for p in noisy),
            f"{spread:.2f}",
            f"{change:.1%}",
        )
    print_table(tab)
    doc = {
        "settings": {**vars(args), "eval": str(EVAL), "cpu_cores": os.cpu_count()},
        "rows": rows,
        "summary": summary,
    }
    out = write_json(args.out, doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
