"""Flags and helpers shared by the model-touching subcommands (prune, grad, eval, ...)."""

from __future__ import annotations

import argparse
import json
import logging
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..engine.events import Progress as ProgressEvent

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
    p.add_argument(*flags, dest=dest, type=int, default=nsamples,
                   help=f"calibration windows (default {nsamples})")  # fmt: skip
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


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def save_outputs(args: argparse.Namespace, lm, res: dict, what: str = "model") -> None:
    """``--save DIR`` (results.json) and ``--save_model DIR`` (the model, reloadable by
    ``load_model(DIR)``, with a note of how it was made) of a finished command."""
    if getattr(args, "save", None):
        out = Path(args.save) / "results.json"
        write_json(out, res)
        console.print(f"results written to {out}")
    if getattr(args, "save_model", None) and lm is not None:
        save_model_dir(lm, args.save_model, res)
        console.print(f"{what} saved to {args.save_model}")


def save_model_dir(lm, directory: str, res: dict) -> None:
    """Save so that ``pzshell eval --model DIR`` reloads it exactly: a structurally pruned model
    with its per-block shapes, any other in plain HF format; plus how it was made."""
    from ..engine.structured_io import save_model
    from ..evaljobs import write_provenance

    save_model(lm.model, lm.tokenizer, directory)
    write_provenance(directory, res)
