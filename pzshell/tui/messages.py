"""Every message the app's parts send each other, as typed dataclasses in one place.

Worker events become these messages in the event-pump thread; progress messages override
:meth:`can_replace` so that a burst of them collapses to the newest one in the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message

# ---- from the worker process ---------------------------------------------------------------


@dataclass
class WorkerStarted(Message):
    pid: int
    device: str


@dataclass
class WorkerDied(Message):
    reason: str


@dataclass
class RunStarted(Message):
    run_id: str


@dataclass
class RunProgressed(Message):
    run_id: str
    stage: str
    done: int
    total: int
    text: str = ""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunProgressed) and message.run_id == self.run_id


@dataclass
class RunCompleted(Message):
    run_id: str
    results: dict


@dataclass
class RunFailed(Message):
    run_id: str
    error: str
    cancelled: bool = False


@dataclass
class SearchStarted(Message):
    out_dir: str
    budget: int
    resumed_evaluations: int


@dataclass
class SearchProgressed(Message):
    evaluations: int
    budget: int
    cache_hits: int
    evals_per_minute: float
    best_fitness: float
    best_formula: str
    hall_of_fame: list = field(default_factory=list)
    paused: bool = False

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SearchProgressed)


@dataclass
class CandidateEvaluated(Message):
    record: dict


@dataclass
class SearchEnded(Message):
    out_dir: str
    best_formula: str
    best_fitness: float
    evaluations: int
    stopped: bool


@dataclass
class SearchFailed(Message):
    error: str


@dataclass
class WorkerNote(Message):
    text: str
    level: str = "info"


# ---- between the app's own parts -----------------------------------------------------------


@dataclass
class MetricAnalysed(Message):
    """The slow part of the analysis (sympy simplification, canonical key), for ``text``."""

    text: str
    simplified: str | None = None
    canonical_key: str | None = None
    canonical_text: str | None = None
    equivalent_to: str | None = None
    error: str | None = None


@dataclass
class OpenFormula(Message):
    """Put ``formula`` in the editor (from the library, the results, the search)."""

    formula: str
    source: str = ""


@dataclass
class RunRequested(Message):
    """Queue a run of ``formula`` at the current settings."""

    formula: str


@dataclass
class CancelRequested(Message):
    run_id: str


def from_worker_event(ev) -> Message | None:
    """The message for one worker event (None for events the app does not show)."""
    from ..search import events as se
    from ..worker import protocol as p

    if isinstance(ev, p.RunProgress):
        return RunProgressed(ev.run_id, ev.stage, ev.done, ev.total, ev.message)
    if isinstance(ev, p.RunStarted):
        return RunStarted(ev.run_id)
    if isinstance(ev, p.RunFinished):
        return RunCompleted(ev.run_id, ev.results)
    if isinstance(ev, p.RunFailed):
        return RunFailed(ev.run_id, ev.error, ev.cancelled)
    if isinstance(ev, p.WorkerReady):
        return WorkerStarted(ev.pid, ev.device)
    if isinstance(ev, p.WorkerNote):
        return WorkerNote(ev.text, ev.level)
    if isinstance(ev, p.SearchFailed):
        return SearchFailed(ev.error)
    if isinstance(ev, p.SearchEvent):
        e = ev.event
        if isinstance(e, se.SearchProgress):
            return SearchProgressed(e.evaluations, e.budget, e.cache_hits, e.evals_per_minute,
                                    e.best_fitness, e.best_formula, list(e.hall_of_fame),
                                    e.paused)  # fmt: skip
        if isinstance(e, se.CandidateDone):
            return CandidateEvaluated(e.record)
        if isinstance(e, se.SearchStarted):
            return SearchStarted(e.out_dir, e.budget, e.resumed_evaluations)
        if isinstance(e, se.SearchFinished):
            return SearchEnded(e.out_dir, e.best_formula, e.best_fitness, e.evaluations,
                               e.stopped)  # fmt: skip
        if isinstance(e, se.SearchMessage):
            return WorkerNote(e.text, e.level)
    return None
