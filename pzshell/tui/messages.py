"""The Textual messages the app's parts send each other.

Everything the worker reports reaches the app as one message, :class:`WorkerEvent`, carrying
the protocol's own event object (:data:`pzshell.worker.protocol.Event`); handlers dispatch on
that object's type, so no event is declared twice. Progress events override
:meth:`WorkerEvent.can_replace` so that a burst of them collapses to the newest one in the queue;
a run's progress collapses only within one stage, so every stage it goes through is shown.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from ..search.events import SearchProgress
from ..worker.protocol import Event, RunProgress, SearchEvent

# ---- from the worker process ---------------------------------------------------------------


@dataclass
class WorkerEvent(Message):
    """One event from the worker (or :class:`~pzshell.worker.protocol.WorkerExited` from its
    client), unchanged."""

    event: Event

    def can_replace(self, message: Message) -> bool:
        if not isinstance(message, WorkerEvent):
            return False
        new, old = message.event, self.event
        if isinstance(old, RunProgress):
            # a burst within one stage collapses; a stage is never skipped over
            return (
                isinstance(new, RunProgress) and new.run_id == old.run_id and new.stage == old.stage
            )
        return _is_search_progress(old) and _is_search_progress(new)


def _is_search_progress(ev: object) -> bool:
    return isinstance(ev, SearchEvent) and isinstance(ev.event, SearchProgress)


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
