"""Progress events shared by the CLI (rich), logs and the terminal app."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    stage: str  # "calibrate", "prune", "eval", "grad", ...
    done: int
    total: int
    message: str = ""


ProgressFn = Callable[[Progress], None]


def emit(fn: ProgressFn | None, stage: str, done: int, total: int, message: str = "") -> None:
    if fn is not None:
        fn(Progress(stage, done, total, message))
