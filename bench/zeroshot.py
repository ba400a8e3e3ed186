"""Zero-shot + recovery benchmark: SmolLM2-135M dense vs 50% unstructured Wanda and Pruner-Zero
tree, before and after a short LoRA recovery. One command, one table, one JSON, the report:

    .venv/bin/python bench/zeroshot.py            # full run (~1 h on a busy 2-core CPU)
    .venv/bin/python bench/zeroshot.py --quick    # 4 x 256 calibration, 1 x 512 evaluation

Settings: calibration 32 windows x 512 tokens sampled with seed 0 from
``../shared/data/wikitext-2/valid.txt`` (the Pruner-Zero tree's gradient statistic ``G`` is
computed from the same windows); perplexity on the first 8 windows x 1024 tokens of
``../shared/data/wikitext-2-raw/wiki.test.raw``; zero-shot accuracy on pzshell's offline
``pzshell_mc`` task (64 items, 4 choices) through lm-eval; LoRA recovery (r 8, alpha 16) on
other windows of the calibration text (seed 1), merged into the weights with the pruning mask
re-applied. Each run's results.json lands in ``bench/results/zeroshot/runs/<run>/`` and
``pzshell report`` draws the plots into ``bench/results/zeroshot/runs/report/``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchlib import (
    CALIB,
    EVAL,
    RESULTS,
    calib_spec,
    copy_model,
    eval_spec,
    print_table,
    require_data,
    table,
    write_json,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny settings, to check the script")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--methods", default="wanda,pruner-zero")
    ap.add_argument("--ft_samples", type=int, default=16, help="LoRA training windows")
    ap.add_argument("--ft_seqlen", type=int, default=256, help="LoRA window length")
    ap.add_argument("--ft_lr", type=float, default=5e-4, help="LoRA learning rate")
    ap.add_argument("--zs_limit", type=int, default=None, help="zero-shot items (default all)")
    args = ap.parse_args()
    require_data()

    from rich.console import Console

    from pzshell.jobs import (
        EvalJob,
        FinetuneSpec,
        ModelSpec,
        PruneJob,
        ZeroShotSpec,
        run_eval,
        run_prune,
        write_results,
    )
    from pzshell.report import write_report

    q = args.quick
    s = {
        "nsamples": 4 if q else 32,
        "seqlen": 256 if q else 512,
        "eval_seqlen": 512 if q else 1024,
        "eval_windows": 1 if q else 8,
        "ft_samples": 2 if q else args.ft_samples,
        "ft_seqlen": 64 if q else args.ft_seqlen,
        "ft_lr": args.ft_lr,
        "zs_limit": 8 if q else args.zs_limit,
        "lora_r": 8,
        "lora_alpha": 16,
        "seed": 0,
    }
    runs_dir = RESULTS / ("zeroshot-quick" if q else "zeroshot") / "runs"
    model = ModelSpec(args.model, device="cpu")
    ev = eval_spec(s["eval_seqlen"], s["eval_windows"])
    zs = ZeroShotSpec(["pzshell_mc"], limit=s["zs_limit"], batch_size=4)
    log = Console(stderr=True)

    t = time.perf_counter()
    dense_lm, dense = run_eval(EvalJob(model=model, eval=ev, zero_shot=zs))
    dense["wall_seconds"] = time.perf_counter() - t
    write_results(runs_dir / "dense" / "results.json", dense)
    log.print(
        f"dense: ppl {dense['ppl']:.2f}  0-shot {dense['zero_shot_mean']:.4f}  "
        f"({dense['wall_seconds']:.0f} s)"
    )
    rows = [dense]
    for method in args.methods.split(","):
        lm = copy_model(dense_lm)
        job = PruneJob(
            method=method,
            sparsity_ratio=0.5,
            sparsity_type="unstructured",
            model=model,
            calib=calib_spec(s["nsamples"], s["seqlen"], s["seed"]),
            eval=ev,
            # G from the same calibration windows; kept so that a rerun reuses it
            gradient_path=str(runs_dir / f"grads_{s['nsamples']}x{s['seqlen']}_seed0.pth"),
            zero_shot=zs,
            finetune=FinetuneSpec(
                method="lora",
                r=s["lora_r"],
                alpha=s["lora_alpha"],
                samples=s["ft_samples"],
                seqlen=s["ft_seqlen"],
                lr=s["ft_lr"],
                seed=s["seed"],
            ),
        )
        t = time.perf_counter()
        _, res = run_prune(job, lm=lm)
        res["wall_seconds"] = time.perf_counter() - t
        write_results(runs_dir / f"{method}50" / "results.json", res)
        rows.append(res)
        log.print(
            f"{method}: ppl {res['ppl']:.2f} -> {res['ppl_after_finetune']:.2f}  0-shot "
            f"{res['zero_shot_mean']:.4f} -> {res['zero_shot_mean_after_finetune']:.4f}  "
            f"({res['wall_seconds']:.0f} s)"
        )
        del lm

    rep = write_report([runs_dir], runs_dir / "report")

    tab = table(
        f"pzshell zero-shot + recovery benchmark: {args.model}, 50% unstructured; calib "
        f"{s['nsamples']}x{s['seqlen']} of {CALIB.name} (seed 0); ppl on first "
        f"{s['eval_windows']}x{s['eval_seqlen']} tokens of {EVAL.name}; 0-shot pzshell_mc "
        f"({dense['zero_shot']['tasks']['pzshell_mc']['n']} items, lm-eval); LoRA r{s['lora_r']} "
        f"on {s['ft_samples']}x{s['ft_seqlen']} tokens, lr {s['ft_lr']}, 1 epoch; "
        f"{os.cpu_count()} CPU cores",
        (
            "method",
            "sparsity",
            "ppl",
            "ppl after LoRA",
            "0-shot acc",
            "0-shot after LoRA",
            "prune s",
            "grad s",
            "LoRA s",
            "zero-shot s",
        ),
    )

    def acc(zs_res: dict | None) -> str:
        if not zs_res:
            return "-"
        r = zs_res["tasks"]["pzshell_mc"]
        return f"{r['acc']:.3f} ± {r['acc_stderr']:.3f}"

    for r in rows:
        dense_row = r["method"] == "dense"
        ft = r.get("finetune") or {}
        sp = f"{r['actual_sparsity']:.4f}"
        if not dense_row:
            sp += f" -> {r['sparsity_after_finetune']:.4f}"
        tab.add_row(
            r["method"],
            sp,
            f"{r['ppl']:.2f}",
            "-" if dense_row else f"{r['ppl_after_finetune']:.2f}",
            acc(r.get("zero_shot")),
            acc(r.get("zero_shot_after_finetune")),
            "-" if dense_row else f"{r['prune_seconds']:.0f}",
            "-" if dense_row else f"{r['grad_seconds']:.0f}",
            f"{ft['seconds']:.0f}" if ft else "-",
            f"{r['zero_shot']['seconds']:.0f}",
        )
    print_table(tab)
    summary = {
        "settings": s,
        "runs_dir": str(runs_dir),
        "report": str(rep["report"]),
        "plots": [str(p) for p in rep["plots"]],
        "rows": [{k: v for k, v in r.items() if k != "layers"} for r in rows],
    }
    out = write_json(RESULTS / ("zeroshot-quick.json" if q else "zeroshot.json"), summary)
    print(f"wrote {out}; report {rep['report']}")
    for p in rep["plots"]:
        print(f"plot {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
