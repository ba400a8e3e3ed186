"""``pzshell structured``: GQA-aware structured pruning (KV groups, MLP channels, whole blocks)
with global or layer-wise allocation and optional LoRA / full recovery fine-tuning."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rich.table import Table

from ..engine.structured import BUILTIN_IMPORTANCE, LAYER_IMPORTANCE, STRATEGIES
from ..errors import PzError
from ..jobs import StructuredJob, run_structured, write_run_dir
from ..jobs.structured_job import save_pruned_model
from ..models.structure import check_model_target
from .common import (
    add_calib_args,
    add_eval_args,
    add_model_args,
    calib_spec,
    check_outputs,
    console,
    eval_spec,
    model_spec,
    rich_progress,
)
from .finetune_cmd import add_finetune_args, finetune_spec


def register(sub) -> None:
    p = sub.add_parser(
        "structured",
        help="structured pruning: remove KV-head groups, MLP channels and empty blocks",
        description="Remove whole units so the model really shrinks: attention KV groups (one "
        "key/value head with its query heads, so the q:kv ratio holds), MLP channels, and "
        "blocks left empty. Global allocation ranks every unit by importance per parameter; "
        "layer-wise allocation gives each block a budget from its importance.",
    )
    add_model_args(p)
    p.add_argument(
        "--pruning_ratio",
        type=float,
        default=0.25,
        help="fraction of the block linear parameters to remove, in (0, 1) (default 0.25)",
    )
    p.add_argument(
        "--importance_method",
        default="taylor",
        metavar="METHOD",
        help=f"{', '.join(BUILTIN_IMPORTANCE)}, or any metric formula / JSON tree "
        "file / shipped tree name of the metric language, summed over each unit "
        "(default taylor)",
    )
    p.add_argument(
        "--pruning_strategy",
        default="global",
        choices=STRATEGIES,
        help="global: importance/cost knapsack over all units (default); inverse: "
        "layer-wise, important blocks pruned less; uniform: layer-wise, same ratio",
    )
    p.add_argument(
        "--pruning_distribution",
        default=None,
        metavar="A:M",
        help="layer-wise only: share of the removed parameters taken from attention "
        "and MLP, e.g. 2:8 (default), 0:10, 10:0",
    )
    p.add_argument(
        "--freeze_top_n_layers",
        type=int,
        default=0,
        metavar="N",
        help="never prune the N most important blocks (default 0)",
    )
    p.add_argument(
        "--layer_importance",
        default="cosine",
        choices=LAYER_IMPORTANCE,
        help="block importance: mean 1-cos (cosine, default) or angular distance "
        "between a block's input and output on the calibration data",
    )
    p.add_argument(
        "--remove_empty_layers",
        action="store_true",
        help="remove blocks whose attention and MLP were both pruned away",
    )
    add_calib_args(
        p, nsamples=32, seqlen_cap=512, flags=("--num_samples", "--nsamples"), dest="num_samples"
    )
    p.add_argument(
        "--batch_size",
        type=int,
        default=8,
        help="windows per forward when no gradients are needed (default 8)",
    )
    add_finetune_args(p, with_switch=True)
    g = p.add_argument_group("evaluation and outputs")
    g.add_argument(
        "--test_after_prune",
        action="store_true",
        help="measure perplexity and forward tokens/s before and after pruning (and "
        "after fine-tuning)",
    )
    add_eval_args(g)
    g.add_argument(
        "--speed_windows",
        type=int,
        default=2,
        help="eval windows timed for tokens/s (default 2; 0 skips)",
    )
    g.add_argument(
        "--save",
        default=None,
        metavar="DIR",
        help="run directory: settings.json, units.csv, blocks.json, kept.png, "
        "structured.log, results.json",
    )
    g.add_argument(
        "--save_model",
        nargs="?",
        const=True,
        default=None,
        metavar="DIR",
        help="save the pruned model (reload with --model DIR); without DIR: <--save>/model",
    )
    p.set_defaults(func=run)


def job_from_args(args: argparse.Namespace) -> StructuredJob:
    return StructuredJob(
        pruning_ratio=args.pruning_ratio,
        importance_method=args.importance_method,
        pruning_strategy=args.pruning_strategy,
        pruning_distribution=args.pruning_distribution,
        freeze_top_n_layers=args.freeze_top_n_layers,
        layer_importance=args.layer_importance,
        remove_empty_layers=args.remove_empty_layers,
        model=model_spec(args),
        calib=calib_spec(args, dest="num_samples"),
        test_after_prune=args.test_after_prune,
        eval=eval_spec(args),
        speed_windows=args.speed_windows,
        finetune=finetune_spec(args) if args.finetune else None,
        batch_size=args.batch_size,
    )


def _model_dir(args) -> Path | None:
    if args.save_model is None:
        return None
    if args.save_model is True:
        if not args.save:
            raise PzError("--save_model without a directory needs --save DIR (saves to DIR/model)")
        return Path(args.save) / "model"
    return Path(args.save_model)


def run(args: argparse.Namespace) -> int:
    job = job_from_args(args)
    job.check()  # before the (slow) model load
    check_outputs(args)
    model_dir = _model_dir(args)
    if model_dir is not None:
        check_model_target(model_dir, "--save_model")
    logger = logging.getLogger("pzshell.structured")
    logger.setLevel(logging.INFO)
    handlers: list[logging.Handler] = []
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(args.save) / "structured.log", mode="w", encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handlers.append(fh)
    for h in handlers:
        logger.addHandler(h)
    try:
        dist = f" {job.pruning_distribution or '2:8'}" if job.pruning_strategy != "global" else ""
        console.print(
            f"[bold]pzshell structured[/] model={job.model.name} ratio={job.pruning_ratio} "
            f"importance={job.importance_method} strategy={job.pruning_strategy}{dist}"
        )
        with rich_progress() as progress:
            out = run_structured(job, progress)
        if args.save:
            files = write_run_dir(out, job, args.save, model_dir=model_dir)
            console.print(
                f"run directory: {args.save} ({', '.join(p.name for p in files.values())})"
            )
        elif model_dir is not None:
            save_pruned_model(out, model_dir)
        if model_dir is not None:
            console.print(f"pruned model saved to {model_dir} (reload: --model {model_dir})")
        print_summary(out.results, out.blocks)
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
    return 0


def print_summary(res: dict, blocks: list[dict]) -> None:
    t = Table(title="pzshell structured", show_header=False, title_justify="left")
    t.add_column("key", style="bold")
    t.add_column("value")
    dist = res["pruning_distribution"]
    rows = [
        ("model", f"{res['model']}  ({res['model_source']})"),
        ("importance", res["importance"]),
        (
            "allocation",
            res["pruning_strategy"]
            + (f"  attention:mlp {dist[0]:.2f}:{dist[1]:.2f}" if dist else "")
            + (f"  frozen {res['frozen_blocks']}" if res["frozen_blocks"] else ""),
        ),
        (
            "calibration",
            f"{res['nsamples']} x {res['seqlen']} tokens of {res['calib_data']}, "
            f"seed {res['seed']}",
        ),
        (
            "block params",
            f"{res['params_before']:,} -> {res['params_after']:,}  ("
            f"{res['achieved_ratio']:.2%} removed, asked {res['pruning_ratio']:.0%})",
        ),
        ("model params", f"{res['model_params_before']:,} -> {res['model_params_after']:,}"),
        (
            "by kind",
            "  ".join(
                f"{k}: {v['units_removed']}/{v['units']} units, {v['params_removed']:,} params"
                for k, v in res["by_kind"].items()
            ),
        ),
        (
            "blocks",
            f"{res['num_blocks_after']} left"
            + (f", removed {res['removed_blocks']}" if res["removed_blocks"] else ""),
        ),
    ]
    if "ppl" in res:
        where = (
            f"{res['eval_data']}: {res['eval_windows']} x {res['eval_seqlen']} = "
            f"{res['eval_tokens']} tokens"
        )
        ppl = f"{res['ppl_dense']:.3f} -> [bold green]{res['ppl']:.3f}[/]"
        if "ppl_after_finetune" in res:
            ppl += f" -> [bold green]{res['ppl_after_finetune']:.3f}[/] (fine-tuned)"
        rows.append(("perplexity", f"{ppl}  on {where}"))
    if "tokens_per_s_dense" in res:
        sp = f"{res['tokens_per_s_dense']:.0f} -> {res['tokens_per_s']:.0f}"
        if "tokens_per_s_after_finetune" in res:
            sp += f" -> {res['tokens_per_s_after_finetune']:.0f}"
        rows.append(("tokens/s", sp + " (forward)"))
    if "finetune" in res:
        f = res["finetune"]
        rows.append(
            (
                "fine-tuning",
                f"{f['method']}: {f['steps']} steps, loss "
                f"{f['loss_first']:.3f} -> {f['loss_last']:.3f}, "
                f"{f['seconds']:.0f} s",
            )
        )
    rows.append(
        ("time", f"statistics {res['stats_seconds']:.1f} s, surgery {res['prune_seconds']:.1f} s")
    )
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    kept = " ".join(
        "--" if b.get("removed") else f"{b['kv_groups_kept']}/{b['intermediate_kept']}"
        for b in blocks
    )
    console.print(f"per block kv groups/channels kept: {kept}")
