"""``pzshell tui`` (also plain ``pzshell``, with or without option flags): the terminal app.

The flags give the starting run settings; anything not given comes from the last session
(kept in ``$PZSHELL_HOME/state.json``) or the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..errors import PzError
from .common import add_eval_window_args


def register(sub) -> None:
    p = sub.add_parser(
        "tui",
        help="the terminal app: edit, run and evolve metrics (also: pzshell with no command)",
        description="Open the terminal app. Options set the starting run settings; the rest come "
        "from the last session. Data (results, trees, searches) lives in $PZSHELL_HOME "
        "(default ~/.local/share/pzshell).",
    )
    p.add_argument("--model", default=None, help="smollm2, tiny, a HF directory or a .gguf file")
    p.add_argument(
        "--sparsity_ratio",
        "--sparsity-ratio",
        type=float,
        default=None,
        help="fraction of weights to prune, in [0, 1) (e.g. 0.5)",
    )
    p.add_argument(
        "--sparsity_type", "--sparsity-type", default=None, help="unstructured, 2:4, 4:8, ..."
    )
    p.add_argument("--calib", default=None, help="calibration text: builtin, wikitext2, a file")
    p.add_argument("--eval", default=None, help="evaluation text: builtin, wikitext2, a file")
    p.add_argument("--nsamples", type=int, default=None, help="calibration windows")
    p.add_argument("--seqlen", type=int, default=None, help="calibration window length")
    add_eval_window_args(p)
    p.add_argument("--device", default=None, help="auto (CUDA if present), cpu, cuda")
    p.add_argument("--seed", type=int, default=None, help="calibration sampling seed")
    p.add_argument(
        "--metric",
        "--formula",
        dest="formula",
        default=None,
        help="the formula to start the editor with",
    )
    p.add_argument("--home", default=None, help="data directory (default $PZSHELL_HOME)")
    p.set_defaults(func=run)


RUN_FLAGS = (
    "model",
    "sparsity_ratio",
    "sparsity_type",
    "calib",
    "eval",
    "nsamples",
    "seqlen",
    "eval_seqlen",
    "eval_windows",
    "device",
    "seed",
)


def settings_from_args(args, base):
    """``base`` (an AppSettings) with the run settings given on the command line."""
    changes = {k: getattr(args, k) for k in RUN_FLAGS if getattr(args, k, None) is not None}
    if "sparsity_ratio" in changes and not 0 <= changes["sparsity_ratio"] < 1:
        raise PzError(f"--sparsity_ratio must be in [0, 1), got {changes['sparsity_ratio']}")
    return dataclasses.replace(base, run=dataclasses.replace(base.run, **changes))


def run(args: argparse.Namespace) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise PzError("the terminal app needs an interactive terminal; see `pzshell --help`")
    try:
        from ..tui.app import PzShellApp
        from ..tui.screens.run_settings import validate
        from ..tui.store import Store
    except ImportError as e:  # pragma: no cover - textual is a dependency
        raise PzError(f"the terminal app needs the 'textual' package: {e}") from None
    store = Store(args.home)
    settings = settings_from_args(args, store.load_settings())
    errs = validate(settings)
    if errs:
        raise PzError("; ".join(errs))
    PzShellApp(settings, home=store.home, formula=args.formula).run()
    return 0
