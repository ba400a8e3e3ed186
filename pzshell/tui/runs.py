"""The app's run queue: what is waiting, what the worker is doing (plain data, no Textual)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from enum import Enum

from ..worker.protocol import PruneRequest, RunSettings
from .store import matches_reference

_ids = itertools.count(1)


class RunStatus(Enum):
    """Where a queued run is: waiting here, given to the worker, or being worked on."""

    QUEUED = "queued"
    SENT = "sent"
    RUNNING = "running"


@dataclass
class QueuedRun:
    """One prune-and-evaluate run the user asked for, from the queue until its result."""

    kind: str  # "metric" | "dense" | "wanda"
    formula: str | None
    settings: RunSettings
    id: str = ""
    status: RunStatus = RunStatus.QUEUED
    stage: str = ""
    done: int = 0
    total: int = 0
    message: str = ""
    started: float | None = None

    def __post_init__(self) -> None:
        if not self.id:
            self.id = f"run-{int(time.time())}-{next(_ids)}"

    @property
    def title(self) -> str:
        return self.formula if self.kind == "metric" else f"({self.kind})"

    @property
    def reference(self) -> bool:
        return self.kind != "metric"

    def request(self) -> PruneRequest:
        return PruneRequest(self.id, self.kind, self.formula, self.settings)


class RunQueue:
    """Runs in order; the first one not yet sent goes to the worker when it is idle."""

    def __init__(self) -> None:
        self.runs: list[QueuedRun] = []

    def add(self, run: QueuedRun) -> QueuedRun:
        self.runs.append(run)
        return run

    def get(self, run_id: str) -> QueuedRun | None:
        return next((r for r in self.runs if r.id == run_id), None)

    def remove(self, run_id: str) -> QueuedRun | None:
        run = self.get(run_id)
        if run is not None:
            self.runs.remove(run)
        return run

    @property
    def active(self) -> QueuedRun | None:
        """The run the worker has (sent or running)."""
        return next((r for r in self.runs if r.status is not RunStatus.QUEUED), None)

    @property
    def waiting(self) -> list[QueuedRun]:
        """The runs not yet given to the worker, in order."""
        return [r for r in self.runs if r.status is RunStatus.QUEUED]

    def next_to_send(self) -> QueuedRun | None:
        if self.active is not None:
            return None
        return next(iter(self.waiting), None)

    def pending(self, kind: str, settings: RunSettings) -> bool:
        """Is a reference run of this kind for these settings already queued?"""
        return any(
            r.kind == kind and matches_reference(r.settings, kind, settings) for r in self.runs
        )

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self):
        return iter(self.runs)
