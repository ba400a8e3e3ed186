"""``pzshell grad``: compute the gradient statistic G and save it in the Pruner-Zero format."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..data import calibration_windows, load_text
from ..engine.stats import compute_gradients, save_gradients
from ..errors import PzError
from ..jobs import resolve_seqlen
from ..models import load_model
from .common import (
    add_calib_args,
    add_model_args,
    calib_spec,
    check_output_file,
    console,
    rich_progress,
)


def register(sub) -> None:
    p = sub.add_parser(
        "grad",
        help="compute the gradient statistic G = sqrt(sum_s (100*dL_s/dw)^2) over calibration",
        description="One backward pass per calibration window; only block Linear weights need "
        "grad. Writes a torch.save dict keyed '<module>_layer_<i>' with fp16 tensors, the file "
        "format of the Pruner-Zero code (its files load here and ours there).",
    )
    add_model_args(p)
    add_calib_args(p)
    p.add_argument("--scale", type=float, default=100.0, help="gradient scale (default 100)")
    p.add_argument("--out", "-o", required=True, help="output file (.pth)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    calib_spec(args).check()
    if not args.scale > 0:
        raise PzError(f"--scale must be positive, got {args.scale}")
    out = Path(args.out)
    check_output_file(args.out, "--out")
    lm = load_model(args.model, device=args.device)
    seqlen = resolve_seqlen(lm, args.seqlen)
    text = load_text(args.calib, role="calib")
    ids = calibration_windows(lm.tokenizer, text, args.nsamples, seqlen, args.seed)
    t = time.perf_counter()
    with rich_progress() as progress:
        grads = compute_gradients(lm.model, ids, scale=args.scale, progress=progress)
    save_gradients(grads, out)
    console.print(
        f"gradient statistic of {len(grads)} weights from {args.nsamples} x {seqlen} tokens of "
        f"{text.name} (seed {args.seed}) in {time.perf_counter() - t:.1f} s -> {out}"
    )
    return 0
