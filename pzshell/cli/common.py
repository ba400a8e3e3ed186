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


def add_calib_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    p.add_argument(
        "--calib",
        default="builtin",
        help="calibration text: a file path, wikitext2, c4 (hub), or builtin (default)",
    )
    p.add_argument(
        "--seqlen",
        type=int,
        default=None,
        help="calibration window length (default min(2048, the model's max positions))",
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
