"""Typed events a search emits; the CLI (rich), the log and the terminal app consume them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SearchStarted:
    out_dir: str
    budget: int
    resumed_evaluations: int


@dataclass(frozen=True)
class CandidateDone:
    record: dict  # the log record (formula, canonical, fitness, stage, seconds, worker, ...)


@dataclass(frozen=True)
class SearchProgress:
    """``evaluations`` counts distinct candidates *screened* (every stage's first), the unit
    of ``budget``; ``full`` those that reached the full stage."""

    evaluations: int
    budget: int
    cache_hits: int
    evals_per_minute: float
    best_fitness: float
    best_formula: str
    hall_of_fame: list = field(default_factory=list)  # [(size, fitness, formula)]
    paused: bool = False
    full: int = 0  # candidates that reached the full stage (mask hits not counted)
    mask_hits: int = 0  # candidates whose masks equal an earlier one's: its fitness reused
    rates: dict = field(default_factory=dict)  # per hour of this session: screened, full
    restarts: int = 0  # stagnation restarts so far
    stage_seconds: dict = field(default_factory=dict)  # stage -> median seconds


@dataclass(frozen=True)
class SearchMessage:
    text: str
    level: str = "info"
    topic: str = ""  # "statistics" or "finals": time outside the search loop, kept on display


@dataclass(frozen=True)
class SearchFinished:
    out_dir: str
    best_formula: str
    best_fitness: float
    evaluations: int
    stopped: bool  # True when stopped early (Ctrl-C, stop(), time limit)
    finals: list = field(default_factory=list)
    # how the answer compares with the reference rule on the finals' windows (empty: none)
    verdict: str = ""
    already_finished: bool = False  # a resumed run that had nothing left to do (nothing written)
