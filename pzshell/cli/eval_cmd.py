"""``pzshell eval``: perplexity and zero-shot accuracy of a dense or saved (pruned) model."""

from __future__ import annotations

import argparse

from rich.table import Table

from ..evaluate.zeroshot import DEFAULT_TASKS, LOCAL_TASK, parse_tasks
from ..jobs import EvalJob, ZeroShotSpec, run_eval
from .common import (
    add_eval_args,
    add_model_args,
    check_outputs,
    console,
    eval_spec,
    model_spec,
    rich_progress,
    save_outputs,
)


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="perplexity and zero-shot accuracy (lm-eval) of a dense or saved model",
        description="Evaluate a model as it is: the embedded default, a saved pruned model "
        "directory, a .gguf file or a hub id. Perplexity on --eval data; zero-shot accuracy "
        "through lm-eval with --tasks.",
    )
    add_model_args(p)
    add_eval_args(p)
    add_zero_shot_args(p, with_switch=False)
    p.add_argument("--save", default=None, help="directory for results.json")
    p.set_defaults(func=run)


def add_zero_shot_args(p: argparse.ArgumentParser, *, with_switch: bool) -> None:
    """``--tasks`` and friends; ``with_switch`` adds ``--eval_zero_shot`` (pzshell prune)."""
    g = p.add_argument_group("zero-shot accuracy (lm-eval)")
    if with_switch:
        g.add_argument(
            "--eval_zero_shot",
            action="store_true",
            help=f"after pruning, evaluate zero-shot accuracy on --tasks "
            f"(default tasks: {','.join(DEFAULT_TASKS)}, which need the Hugging Face hub)",
        )
    g.add_argument(
        "--tasks",
        default=None,
        help=f"comma-separated lm-eval tasks, e.g. {','.join(DEFAULT_TASKS)} (data from the "
        f"hub), or {LOCAL_TASK} (pzshell's offline task)"
        + ("; implies --eval_zero_shot" if with_switch else ""),
    )
    g.add_argument(
        "--zero_shot_limit",
        type=int,
        default=None,
        help="evaluate only the first N items of each task (quick checks; default all)",
    )
    g.add_argument(
        "--zero_shot_batch_size", type=int, default=4, help="lm-eval batch size (default 4)"
    )


def zero_shot_spec(args: argparse.Namespace) -> ZeroShotSpec | None:
    wanted = args.tasks is not None or getattr(args, "eval_zero_shot", False)
    if not wanted:
        return None
    tasks = parse_tasks(args.tasks) if args.tasks is not None else list(DEFAULT_TASKS)
    return ZeroShotSpec(tasks, args.zero_shot_limit, args.zero_shot_batch_size)


def run(args: argparse.Namespace) -> int:
    job = EvalJob(model=model_spec(args), eval=eval_spec(args), zero_shot=zero_shot_spec(args))
    job.check()
    check_outputs(args)
    console.print(f"[bold]pzshell eval[/] model={job.model.name}")
    with rich_progress() as progress:
        _, res = run_eval(job, progress)
    print_eval_summary(res)
    save_outputs(args, None, res)
    return 0


def print_eval_summary(res: dict) -> None:
    t = Table(title="pzshell eval", show_header=False, title_justify="left")
    t.add_column("key", style="bold")
    t.add_column("value")
    t.add_row("model", f"{res['model']}  ({res['model_source']})")
    desc = res["method"]
    if res["method"] != "dense":
        desc += f"  {res.get('sparsity_ratio')} {res.get('sparsity_type')}"
    if res.get("sparsity_type") == "structured":
        before, after = res.get("model_params_before"), res["model_params_after"]
        size = f"{before:,} -> {after:,} parameters" if before else f"{after:,} parameters"
        t.add_row("pruning", f"structured  ({size})")
    else:
        t.add_row("pruning", f"{desc}  (achieved {res['actual_sparsity']:.4f} of block weights)")
    if "ppl" in res:
        t.add_row("perplexity", ppl_line(res["ppl"], res))
    console.print(t)
    print_zero_shot(res)


def ppl_line(ppl: float, res: dict) -> str:
    return (
        f"[bold green]{ppl:.3f}[/] on {res['eval_data']}: {res['eval_windows']} windows x "
        f"{res['eval_seqlen']} = {res['eval_tokens']} tokens"
    )


def print_zero_shot(res: dict) -> None:
    """The zero-shot table(s) of a results dict, if any (before / after fine-tuning)."""
    for suffix, label in (("", ""), ("_after_finetune", " after fine-tuning")):
        zs = res.get(f"zero_shot{suffix}")
        if not zs:
            continue
        limit = f", first {zs['limit']} items per task" if zs.get("limit") else ""
        t = Table(
            title=f"zero-shot accuracy{label} (lm-eval {zs['lm_eval_version']}{limit})",
            title_justify="left",
        )
        for col in ("task", "items", "acc", "acc_norm"):
            t.add_column(col, justify="left" if col == "task" else "right")
        for name, r in zs["tasks"].items():
            t.add_row(
                name,
                str(r["n"]),
                _pm(r["acc"], r["acc_stderr"]),
                _pm(r["acc_norm"], r["acc_norm_stderr"]),
            )
        if zs.get("mean_acc") is not None and len(zs["tasks"]) > 1:
            t.add_row("[bold]mean[/]", "", f"[bold]{zs['mean_acc']:.4f}[/]", "")
        console.print(t)


def _pm(v: float | None, se: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" + (f" ± {se:.4f}" if se is not None else "")
