"""The app's run queue: what is waiting, what the worker is doing (plain data, no Textual)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from ..worker.protocol import PruneRequest, RunSettings

_ids = itertools.count(1)


@dataclass
class Run:
    kind: str  # "metric" | "dense" | "wanda"
    formula: str | None
    settings: RunSettings
    id: str = ""
    status: str = "queued"  # queued -> sent -> running
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
        self.runs: list[Run] = []

    def add(self, run: Run) -> Run:
        self.runs.append(run)
        return run

    def get(self, run_id: str) -> Run | None:
        return next((r for r in self.runs if r.id == run_id), None)

    def remove(self, run_id: str) -> Run | None:
        run = self.get(run_id)
        if run is not None:
            self.runs.remove(run)
        return run

    @property
    def active(self) -> Run | None:
        """The run the worker has (sent or running)."""
        return next((r for r in self.runs if r.status in ("sent", "running")), None)

    def next_to_send(self) -> Run | None:
        if self.active is not None:
            return None
        return next((r for r in self.runs if r.status == "queued"), None)

    def pending(self, kind: str, settings: RunSettings) -> bool:
        """Is a reference run of this kind for these settings already queued?"""
        for r in self.runs:
            if r.kind != kind or r.settings.reference_key() != settings.reference_key():
                continue
            if kind == "dense" or (
                r.settings.sparsity_ratio == settings.sparsity_ratio
                and r.settings.sparsity_type == settings.sparsity_type
            ):
                return True
        return False

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self):
        return iter(self.runs)
