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
    evaluations: int
    budget: int
    cache_hits: int
    evals_per_minute: float
    best_fitness: float
    best_formula: str
    hall_of_fame: list = field(default_factory=list)  # [(size, fitness, formula)]
    paused: bool = False


@dataclass(frozen=True)
class SearchMessage:
    text: str
    level: str = "info"


@dataclass(frozen=True)
class SearchFinished:
    out_dir: str
    best_formula: str
    best_fitness: float
    evaluations: int
    stopped: bool  # True when stopped early (Ctrl-C, stop(), time limit)
    finals: list = field(default_factory=list)
    already_finished: bool = False  # a resumed run that had nothing left to do (nothing written)
