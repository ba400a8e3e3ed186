"""Flags and helpers shared by the model-touching subcommands (prune, grad, eval, ...)."""

from __future__ import annotations

import argparse
import logging
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import atomic
from ..errors import PzError
from ..jobs import CalibSpec, EvalSpec, ModelSpec, write_results
from ..jobs.provenance import PROVENANCE_FILE, provenance_of
from ..models.structure import check_model_target, save_model
from ..progress import Progress as ProgressEvent

console = Console(stderr=True, highlight=False)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="smollm2",
        help="smollm2 (embedded default), tiny (random, in memory), a local HF directory, "
        "a .gguf file, or a hub id (default: smollm2)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1")
    p.add_argument("--seed", type=int, default=0, help="seed for calibration sampling (default 0)")
    p.add_argument("--cache_dir", default=None, help="accepted for compatibility; unused")


def add_calib_args(
    p: argparse.ArgumentParser,
    *,
    nsamples: int = 128,
    seqlen_cap: int = 2048,
    flags: tuple[str, ...] = ("--nsamples",),
    dest: str = "nsamples",
) -> None:
    """``--nsamples`` (or ``flags``), ``--calib``, ``--seqlen``."""
    p.add_argument(
        *flags,
        dest=dest,
        type=int,
        default=nsamples,
        help=f"calibration windows (default {nsamples})",
    )
    p.add_argument(
        "--calib",
        default="builtin",
        help="calibration text: a file path, wikitext2, c4 (hub), or builtin (default)",
    )
    p.add_argument(
        "--seqlen",
        type=int,
        default=None,
        help=f"calibration window length (default min({seqlen_cap}, the model's max positions))",
    )


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--eval",
        default="builtin",
        help="evaluation text: a file path, wikitext2, c4 (hub), builtin (default), or none",
    )
    add_eval_window_args(p)


def add_eval_window_args(p: argparse.ArgumentParser) -> None:
    """``--eval-seqlen`` and ``--eval-windows`` (None when not given)."""
    p.add_argument(
        "--eval-seqlen",
        "--eval_seqlen",
        dest="eval_seqlen",
        type=int,
        default=None,
        help="evaluation window length (default: the calibration window length)",
    )
    p.add_argument(
        "--eval-windows",
        "--eval_windows",
        dest="eval_windows",
        type=int,
        default=None,
        help="evaluate only the first N windows (default: all)",
    )


@contextmanager
def rich_progress():
    """Yields a callback that renders engine :class:`Progress` events as rich progress bars."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    bars = Progress(
        TextColumn("[bold]{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[msg]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, int] = {}

    def on_event(ev: ProgressEvent) -> None:
        if ev.stage not in tasks:
            tasks[ev.stage] = bars.add_task(ev.stage, total=ev.total, msg="")
        bars.update(tasks[ev.stage], completed=ev.done, total=ev.total, msg=ev.message)

    with bars:
        yield on_event


def model_spec(args: argparse.Namespace) -> ModelSpec:
    return ModelSpec(args.model, args.device)


def calib_spec(args: argparse.Namespace, dest: str = "nsamples") -> CalibSpec:
    return CalibSpec(args.calib, getattr(args, dest), args.seqlen, args.seed)


def eval_spec(args: argparse.Namespace) -> EvalSpec:
    return EvalSpec(args.eval, args.eval_seqlen, args.eval_windows)


def check_output_dir(path: str | None, flag: str) -> None:
    """Fail before the long work if ``flag DIR`` cannot be written."""
    if path:
        why = atomic.why_not_writable(path, is_dir=True)
        if why:
            raise PzError(f"{flag} {path}: {why}")


def check_output_file(path: str | None, flag: str) -> None:
    """Fail before the long work if ``flag FILE`` cannot be written."""
    if path:
        why = atomic.why_not_writable(path, is_dir=False)
        if why:
            raise PzError(f"{flag} {path}: {why}")


def check_outputs(args: argparse.Namespace) -> None:
    """``--save`` and ``--save_model`` of a command, checked before the model loads."""
    check_output_dir(getattr(args, "save", None), "--save")
    model_dir = getattr(args, "save_model", None)
    if isinstance(model_dir, str):
        check_output_dir(model_dir, "--save_model")
        check_model_target(model_dir, "--save_model")


def save_outputs(args: argparse.Namespace, lm, res: dict, what: str = "model") -> None:
    """``--save DIR`` (results.json) and ``--save_model DIR`` (the model, reloadable by
    ``load_model(DIR)``, with a note of how it was made) of a finished command."""
    if getattr(args, "save", None):
        Path(args.save).mkdir(parents=True, exist_ok=True)  # checked before the model loaded
        out = write_results(Path(args.save) / "results.json", res)
        console.print(f"results written to {out}")
    if getattr(args, "save_model", None) and lm is not None:
        notes = {PROVENANCE_FILE: provenance_of(res)}
        save_model(lm.model, lm.tokenizer, args.save_model, notes=notes)
        console.print(f"{what} saved to {args.save_model}")
