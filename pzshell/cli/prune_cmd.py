"""``pzshell prune``: the Pruner-Zero / Wanda command line, plus data and metric flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from ..engine.layer_ratios import OWL_LAMBDA, OWL_M
from ..engine.prune import METHOD_ALIASES, METHODS
from ..engine.refine import (
    DSNOT_CYCLES,
    DSNOT_THRESHOLD,
    REFINEMENTS,
    SWAP_ROUNDS,
    SWAP_SHORTLIST,
)
from ..engine.refit import REFIT_ITERS
from ..errors import PzError
from ..jobs import PruneJob, run_prune
from ..lang import load_metric
from .common import (
    add_calib_args,
    add_eval_args,
    add_model_args,
    calib_spec,
    check_output_file,
    check_outputs,
    console,
    eval_spec,
    model_spec,
    rich_progress,
    save_outputs,
)
from .eval_cmd import add_zero_shot_args, print_zero_shot, zero_shot_spec
from .finetune_cmd import add_finetune_args, finetune_spec, print_finetune


def register(sub) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a model with a method or any metric formula, then measure perplexity",
        description="Prune a model layer by layer. The flags of the published Pruner-Zero/Wanda "
        "`python main.py` work unchanged.",
    )
    add_model_args(p)
    methods = list(METHODS) + list(METHOD_ALIASES)
    p.add_argument(
        "--prune_method",
        "--method",
        dest="prune_method",
        default="wanda",
        metavar="METHOD",
        help=f"one of: {', '.join(methods)} (default wanda); a metric method may end in "
        "+reconstruct (SparseGPT's update on its mask) or +iterative (the metric chooses each "
        "block's mask inside SparseGPT's loop), e.g. metric+iterative with --metric",
    )
    p.add_argument("--sparsity_ratio", type=float, default=0.5, help="fraction to prune, [0, 1)")
    p.add_argument(
        "--sparsity_type",
        default="unstructured",
        help="unstructured, or N:M such as 2:4, 4:8 (default unstructured)",
    )
    p.add_argument(
        "--metric",
        default=None,
        help="a metric formula, e.g. 'abs(W*W)*mms(G)' (implies --prune_method metric)",
    )
    p.add_argument("--json_tree", default=None, help="a Pruner-Zero JSON tree file")
    p.add_argument(
        "--reconstruct",
        action="store_true",
        help="apply SparseGPT's weight update to the metric's mask",
    )
    p.add_argument(
        "--use_variant",
        action="store_true",
        help="Wanda's per-row cumulative variant (unstructured only)",
    )
    p.add_argument(
        "--gradient_path",
        default=None,
        help="gradient statistic file (pzshell grad / Pruner-Zero format); computed "
        "from the calibration windows (and saved here) if it does not exist",
    )
    p.add_argument("--batch_size", type=int, default=8, help="calibration windows per forward")
    p.add_argument(
        "--allocation",
        default="uniform",
        metavar="uniform|owl|FORMULA",
        help="per-block sparsity: uniform (every block the same, default), owl (outlier-"
        "weighted: blocks with more |W|*sqrt(X) outliers keep more; same model-wide total), or "
        "a formula over per-block statistics D (outlier %%), A (angular distance in/out), "
        "L (depth 0..1), e.g. 'D * (1 - L)': a larger value keeps more, spread by --owl_lambda",
    )
    p.add_argument(
        "--owl_m",
        type=float,
        default=OWL_M,
        help=f"OWL: a score is an outlier above M x its block's mean (default {OWL_M:g})",
    )
    p.add_argument(
        "--owl_lambda",
        type=float,
        default=OWL_LAMBDA,
        help=f"OWL and formulas: block ratios spread over target +- lambda "
        f"(default {OWL_LAMBDA:g})",
    )
    p.add_argument(
        "--refine",
        default="none",
        choices=REFINEMENTS,
        help="training-free mask refinement after the metric, the weights left as they are: "
        "none (default), dsnot (swaps that shrink a row's mean output error) or swaps "
        "(least-squares swaps that shrink each row's exact output error, from the Hessian); "
        "not with SparseGPT",
    )
    p.add_argument(
        "--swap_rounds",
        type=int,
        default=SWAP_ROUNDS,
        help=f"least-squares swaps, N:M: at most this many passes over the groups "
        f"(default {SWAP_ROUNDS}); unstructured runs until no swap helps",
    )
    p.add_argument(
        "--swap_shortlist",
        type=int,
        default=SWAP_SHORTLIST,
        help=f"least-squares swaps, unstructured: each step tries the best this many kept and "
        f"pruned weights of a row against each other (default {SWAP_SHORTLIST}; more is slower "
        f"and, on SmolLM2, no measurably better)",
    )
    p.add_argument(
        "--dsnot_cycles",
        type=int,
        default=DSNOT_CYCLES,
        help=f"DSnoT: at most this many swaps per row (default {DSNOT_CYCLES})",
    )
    p.add_argument(
        "--dsnot_threshold",
        type=float,
        default=DSNOT_THRESHOLD,
        help=f"DSnoT: a row stops once its mean output error is below this "
        f"(default {DSNOT_THRESHOLD:g})",
    )
    p.add_argument(
        "--refit",
        type=int,
        nargs="?",
        const=REFIT_ITERS,
        default=0,
        metavar="ITERS",
        help=f"after the mask (and any SparseGPT update), re-solve each row's kept weights by "
        f"least squares against the unpruned layer's output on the calibration inputs "
        f"(conjugate gradients, ITERS iterations, default {REFIT_ITERS}); also method suffix "
        f"+refit",
    )
    add_calib_args(p)
    add_eval_args(p)
    add_zero_shot_args(p, with_switch=True)
    add_finetune_args(p, with_switch=True)
    p.add_argument("--save", default=None, help="directory for results.json")
    p.add_argument("--save_model", default=None, help="directory to save the pruned model (HF)")
    p.set_defaults(func=run)


def job_from_args(args: argparse.Namespace) -> PruneJob:
    metric = None
    method = args.prune_method
    if args.metric and args.json_tree:
        raise PzError("give either --metric or --json_tree, not both")
    reconstruct = args.reconstruct
    iterative = False
    refit = args.refit  # checked with the other settings by PruneConfig
    if method.endswith("+refit"):
        method, refit = method[: -len("+refit")], refit or REFIT_ITERS
    if args.metric or args.json_tree:
        metric = load_metric(Path(args.json_tree) if args.json_tree else args.metric)
        # An explicit tree replaces the method's own; `sparsegpt` / `ablate_*_seq` with a tree
        # mean "this tree's mask with SparseGPT's update", as in the reference code.
        method = METHOD_ALIASES.get(method, method)
        if method.endswith(("+reconstruct", "+iterative")) or method == "sparsegpt":
            reconstruct = True
        iterative = method.endswith("+iterative")
        method = "metric"
    elif METHOD_ALIASES.get(method, method).split("+")[0] == "metric":
        raise PzError(
            f"--method {method} prunes with a formula of yours: give it as --metric FORMULA "
            f"or --json_tree FILE"
        )
    if not 0 <= args.sparsity_ratio < 1:
        raise PzError(f"--sparsity_ratio must be in [0, 1), got {args.sparsity_ratio}")
    return PruneJob(
        method=method,
        sparsity_ratio=args.sparsity_ratio,
        sparsity_type=args.sparsity_type,
        metric=metric,
        reconstruct=reconstruct,
        iterative=iterative,
        use_variant=args.use_variant,
        model=model_spec(args),
        calib=calib_spec(args),
        eval=eval_spec(args),
        gradient_path=args.gradient_path,
        batch_size=args.batch_size,
        allocation=args.allocation,
        owl_m=args.owl_m,
        owl_lambda=args.owl_lambda,
        refine=args.refine,
        dsnot_cycles=args.dsnot_cycles,
        dsnot_threshold=args.dsnot_threshold,
        swap_rounds=args.swap_rounds,
        swap_shortlist=args.swap_shortlist,
        refit=refit,
        zero_shot=zero_shot_spec(args),
        finetune=finetune_spec(args) if args.finetune else None,
    )


def run(args: argparse.Namespace) -> int:
    job = job_from_args(args)
    cfg = job.check()  # method, sparsity, data and fine-tuning settings before the model load
    if job.batch_size < 1:
        raise PzError(f"--batch_size must be at least 1, got {job.batch_size}")
    check_outputs(args)
    check_output_file(args.gradient_path, "--gradient_path")
    console.print(
        f"[bold]pzshell prune[/] model={job.model.name} method={cfg.label} "
        f"sparsity={job.sparsity_ratio} {job.sparsity_type}"
    )
    with rich_progress() as progress:
        lm, res = run_prune(job, progress)
    print_summary(res)
    print_finetune(res)
    print_zero_shot(res)
    save_outputs(args, lm, res, what="pruned model")  # + pzshell_prune.json: how it was made
    return 0


def _method_text(res: dict) -> str:
    """The method row: the method, its metric, and where they are not the default, the
    allocation and the mask's refinement, so the table alone says how the mask was made."""
    parts = [res["method"]]
    if res.get("metric"):
        parts.append(f"metric {res['metric']}")
    if res.get("allocation", "uniform") != "uniform":
        lam = f" (lambda {res['owl_lambda']:g})" if res.get("owl_lambda") is not None else ""
        parts.append(f"allocation {res['allocation']}{lam}")
    if res.get("refine") == "swaps":
        how = (
            f"at most {res.get('swap_rounds')} rounds"
            if res.get("sparsity_type", "unstructured") != "unstructured"
            else f"shortlist {res.get('swap_shortlist', SWAP_SHORTLIST)}"
        )
        parts.append(f"+ least-squares swaps ({how})")
    elif res.get("refine", "none") != "none":
        parts.append(f"+ {res['refine']}")
    return "  ".join(parts)


def _gradient_text(res: dict) -> str:
    """Where the G the metric read came from, and its fingerprint (a search's summary.json
    names the fingerprint of the G it scored with)."""
    path = res.get("gradient_path")
    if res.get("grad_seconds"):
        where = "computed from the calibration windows" + (f", saved to {path}" if path else "")
    else:
        where = f"read from {path}"
    return f"G {where} (fingerprint {res['gradient_fingerprint']})"


def print_summary(res: dict) -> None:
    t = Table(title="pzshell prune", show_header=False, title_justify="left")
    t.add_column("key", style="bold")
    t.add_column("value")
    rows = [
        ("model", f"{res['model']}  ({res['model_source']})"),
        ("method", _method_text(res)),
        (
            "sparsity",
            f"{res['sparsity_ratio']} {res['sparsity_type']}  "
            f"(achieved {res['actual_sparsity']:.4f} of block linear weights)",
        ),
        (
            "calibration",
            f"{res['nsamples']} x {res['seqlen']} tokens of {res['calib_data']}, seed {res['seed']}"
            if res["calib_data"]
            else "none needed",
        ),
        *([("gradients", _gradient_text(res))] if res.get("gradient_fingerprint") else []),
        (
            "prune time",
            f"{res['prune_seconds']:.1f} s"
            + (f" (+ gradients {res['grad_seconds']:.1f} s)" if res["grad_seconds"] else ""),
        ),
    ]
    if "ppl" in res:
        rows.append(
            (
                "perplexity",
                f"[bold green]{res['ppl']:.3f}[/] on {res['eval_data']}: {res['eval_windows']} "
                f"windows x {res['eval_seqlen']} = {res['eval_tokens']} tokens",
            )
        )
    rows.append(("peak RSS", f"{res['peak_rss_mb']:.0f} MiB"))
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    by_block: dict[int, list[float]] = {}
    for r in res["layers"]:
        by_block.setdefault(r["block"], []).append(r["sparsity"])
    spark = " ".join(f"{sum(v) / len(v):.2f}" for _, v in sorted(by_block.items()))
    console.print(f"per-block sparsity: {spark}")
    if res.get("refine") == "swaps":
        console.print(
            f"least-squares swaps: {res['refine_swaps']:,} swaps (a kept weight pruned, a pruned "
            f"one restored; a weight may move more than once); the median layer's output error "
            f"fell to {res['refine_error_median']:.3f} of the metric's mask's"
        )
    elif res.get("refine", "none") != "none":
        console.print(
            f"refinement {res['refine']}: {res['refine_swaps']:,} weights swapped (at most "
            f"{res['dsnot_cycles']} per row, threshold {res['dsnot_threshold']:g})"
        )
    if res.get("refit"):
        console.print(
            f"least-squares refit: {res['refit']} iterations per layer; the median layer's "
            f"output error fell to {res['refit_error_median']:.3f} of what it was before the refit"
        )
    if res.get("allocation", "uniform") != "uniform":
        extra = ""
        if "block_outliers" in res:
            outl = " ".join(f"{x:.2f}" for x in res["block_outliers"])
            extra = f" M {res['owl_m']:g}, lambda {res['owl_lambda']:g}; outliers % {outl};"
        console.print(
            f"allocation {res['allocation']}:{extra} {res['allocation_seconds']:.1f} s "
            f"(model-wide {res['actual_sparsity']:.4f} of block weights)"
        )
