"""``pzshell finetune``: LoRA recovery of a saved pruned model, sparsity kept, perplexity after."""

from __future__ import annotations

import argparse

from rich.table import Table

from ..jobs import DEFAULT_LR, FinetuneJob, FinetuneSpec, ModelSpec, run_finetune
from .common import add_eval_args, check_outputs, console, eval_spec, rich_progress, save_outputs
from .eval_cmd import add_zero_shot_args, ppl_line, print_zero_shot, zero_shot_spec


def register(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="recover a saved pruned model with LoRA (its sparsity kept), then perplexity",
        description="Load a pruned model saved with `pzshell prune --save_model DIR`, train "
        "LoRA adapters on calibration-domain text, merge them into the weights and re-apply the "
        "pruning mask (the sparsity is unchanged), then measure perplexity before and after.",
    )
    p.add_argument("--model", required=True, help="a saved pruned model directory")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1")
    p.add_argument(
        "--data",
        default="builtin",
        help="fine-tuning text when the model's calibration text is not recorded or not "
        "available: a file path, wikitext2, c4 (hub), or builtin (default)",
    )
    add_finetune_args(p, with_switch=False)
    add_eval_args(p)
    p.add_argument(
        "--no_eval_before",
        dest="eval_before",
        action="store_false",
        help="skip the perplexity measurement before fine-tuning",
    )
    add_zero_shot_args(p, with_switch=False)
    p.add_argument("--save", default=None, help="directory for results.json")
    p.add_argument("--save_model", default=None, help="directory to save the recovered model")
    p.set_defaults(func=run)


def add_finetune_args(p: argparse.ArgumentParser, *, with_switch: bool) -> None:
    """The recovery flags; ``with_switch`` adds ``--finetune`` (pzshell prune)."""
    g = p.add_argument_group("recovery fine-tuning (pruning mask kept)")
    if with_switch:
        g.add_argument(
            "--finetune",
            action="store_true",
            help="after pruning, recover with LoRA (merged, mask re-applied) and re-measure",
        )
    g.add_argument(
        "--finetune_method",
        default="lora",
        choices=("lora", "full"),
        help="lora (default) or full fine-tuning",
    )
    g.add_argument("--lora_r", type=int, default=8, help="LoRA rank (default 8)")
    g.add_argument("--lora_alpha", type=float, default=16, help="LoRA alpha (default 16)")
    g.add_argument("--lora_dropout", type=float, default=0.0, help="LoRA dropout (default 0)")
    g.add_argument(
        "--lora_mask_aware",
        action="store_true",
        help="train the masked LoRA update, exactly what the masked merge keeps "
        "(slower; default: plain LoRA, mask re-applied after the merge)",
    )
    g.add_argument("--finetune_samples", type=int, default=64, help="training windows (default 64)")
    g.add_argument(
        "--finetune_seqlen",
        type=int,
        default=None,
        help="training window length (default: min(512, calibration))",
    )
    g.add_argument(
        "--finetune_lr",
        type=float,
        default=None,
        help=f"learning rate (default {DEFAULT_LR['lora']:g} for LoRA, "
        f"{DEFAULT_LR['full']:g} for full)",
    )
    g.add_argument("--finetune_epochs", type=int, default=1, help="epochs (default 1)")
    g.add_argument(
        "--finetune_batch_size", type=int, default=1, help="windows per optimizer step (default 1)"
    )
    g.add_argument(
        "--finetune_data",
        default=None,
        help="training text (default: the calibration text, other windows)",
    )


def finetune_spec(args: argparse.Namespace) -> FinetuneSpec:
    return FinetuneSpec(
        method=args.finetune_method,
        r=args.lora_r,
        alpha=args.lora_alpha,
        dropout=args.lora_dropout,
        samples=args.finetune_samples,
        seqlen=args.finetune_seqlen,
        lr=args.finetune_lr,
        epochs=args.finetune_epochs,
        batch_size=args.finetune_batch_size,
        data=args.finetune_data,
        seed=getattr(args, "seed", 0),
        mask_aware=args.lora_mask_aware,
    )


def run(args: argparse.Namespace) -> int:
    job = FinetuneJob(
        model=ModelSpec(args.model, args.device),
        finetune=finetune_spec(args),
        data=args.data,
        eval=eval_spec(args),
        eval_before=args.eval_before,
        zero_shot=zero_shot_spec(args),
    )
    job.check()
    check_outputs(args)
    console.print(f"[bold]pzshell finetune[/] model={job.model.name} ({job.finetune.method})")
    with rich_progress() as progress:
        lm, res = run_finetune(job, progress)
    t = Table(title="pzshell finetune", show_header=False, title_justify="left")
    t.add_column("key", style="bold")
    t.add_column("value")
    t.add_row("model", f"{res['model']}  ({res['model_source']})")
    if res["method"] != "dense":
        t.add_row("pruned with", f"{res['method']} {res['sparsity_ratio']} {res['sparsity_type']}")
    if "ppl" in res:
        t.add_row("perplexity before", ppl_line(res["ppl"], res))
    console.print(t)
    print_finetune(res)
    print_zero_shot(res)
    save_outputs(args, lm, res, what="recovered model")
    return 0


def print_finetune(res: dict) -> None:
    """The recovery lines of a results dict, if it has them."""
    ft = res.get("finetune")
    if not ft:
        return
    t = Table(title="recovery fine-tuning", show_header=False, title_justify="left")
    t.add_column("key", style="bold")
    t.add_column("value")
    how = "full"
    if ft["method"] == "lora":
        how = f"LoRA r={ft['r']} alpha={ft['alpha']}" + (", mask-aware" if ft["mask_aware"] else "")
    t.add_row("method", f"{how}, lr {ft['lr']}, {ft['epochs']} epoch(s), {ft['steps']} steps")
    t.add_row("data", f"{ft['samples']} x {ft['seqlen']} tokens of {ft['data']}")
    t.add_row(
        "loss",
        f"{ft['loss_start']:.3f} -> {ft['loss_end']:.3f} "
        f"(mean over the first / last quarter of the steps)",
    )
    sp = f"{res['sparsity_before_finetune']:.4f} -> {res['sparsity_after_finetune']:.4f}"
    if "sparsity_after_merge" in ft:
        sp += f"  (plain merge would leave {ft['sparsity_after_merge']:.4f})"
    t.add_row("sparsity", sp)
    t.add_row("time", f"{ft['seconds']:.1f} s")
    if "ppl_after_finetune" in res:
        t.add_row("perplexity after", ppl_line(res["ppl_after_finetune"], res))
    console.print(t)
