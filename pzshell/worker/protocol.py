"""What goes over the worker's queues: jobs in, typed events out (all picklable dataclasses).

The terminal app (or any other client) never shares objects with the worker process; it sends
these jobs and reads these events, so a crashed or killed worker costs only the job in flight.
Search events (:mod:`pzshell.search.events`) travel unchanged inside :class:`SearchEvent`.
:class:`WorkerExited` is the one event the worker cannot send: its client makes it when the
process is gone, so that a reader sees every change in the worker as an :data:`Event`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..search import SearchSettings

# ---- settings ------------------------------------------------------------------------------


def how_suffix(refine: str | None, refit: int | None) -> str:
    """What was done beyond the metric's mask, for labels: '', ' + swaps', ' + refit',
    ' + dsnot + refit'."""
    out = f" + {refine}" if refine and refine != "none" else ""
    return out + (" + refit" if refit else "")


@dataclass(frozen=True)
class RunSettings:
    """The settings of one prune-and-evaluate run (what the app's settings screen edits)."""

    model: str = "smollm2"
    sparsity_ratio: float = 0.5
    sparsity_type: str = "unstructured"
    calib: str = "builtin"
    eval: str = "builtin"
    nsamples: int = 128
    seqlen: int | None = None
    eval_seqlen: int | None = None
    eval_windows: int | None = None
    device: str = "auto"
    seed: int = 0
    # least-squares refit of the kept weights (CG iterations; 0: none), for metric and Wanda runs
    refit: int = 0
    # training-free mask refinement of metric and Wanda runs: none, dsnot or swaps
    refine: str = "none"

    def label(self) -> str:
        """A short description for tables: '50% unstructured', '50% 2:4 + swaps + refit'."""
        return f"{self.sparsity_ratio:.0%} {self.sparsity_type}" + how_suffix(
            self.refine, self.refit
        )

    def reference_key(self) -> tuple:
        """Runs with equal keys are comparable (same model, data and evaluation)."""
        return (
            self.model,
            self.calib,
            self.eval,
            self.nsamples,
            self.seqlen,
            self.eval_seqlen,
            self.eval_windows,
            self.seed,
        )


# ---- jobs (client -> worker) ---------------------------------------------------------------

RUN_KINDS = ("metric", "dense", "wanda")


@dataclass(frozen=True)
class PruneRequest:
    """Prune a fresh copy of the model and measure perplexity.

    ``kind`` is ``metric`` (prune with ``formula``), ``wanda`` (the reference method) or
    ``dense`` (no pruning: the reference perplexity).
    """

    run_id: str
    kind: str
    formula: str | None
    settings: RunSettings


@dataclass(frozen=True)
class CancelRun:
    run_id: str


@dataclass(frozen=True)
class StartSearch:
    """Start (or with ``resume``, continue) a search in ``out_dir``; with ``resume`` the
    settings saved in the directory win and ``settings`` may be None."""

    search_id: str
    out_dir: str
    settings: SearchSettings | None
    resume: bool = False
    device: str = "auto"
    budget: int | None = None  # a new budget when resuming
    workers: int | None = None
    """Evaluator processes; None: ``pzshell search``'s default (2 on a CPU with 2 or more
    cores, 1 on a GPU). The trajectory does not depend on it."""


@dataclass(frozen=True)
class ControlSearch:
    action: str  # "pause" | "resume" | "stop" | "inject"
    formula: str | None = None


@dataclass(frozen=True)
class Shutdown:
    """Stop the search (it stays resumable), cancel the run in flight, and exit."""


# ---- events (worker -> client) -------------------------------------------------------------


@dataclass(frozen=True)
class WorkerReady:
    pid: int
    device: str  # what "auto" resolves to here, e.g. "cuda (NVIDIA H100)" or "cpu (2 threads)"


@dataclass(frozen=True)
class RunStarted:
    run_id: str


@dataclass(frozen=True)
class RunProgress:
    run_id: str
    stage: str
    done: int
    total: int
    message: str = ""


@dataclass(frozen=True)
class RunFinished:
    run_id: str
    results: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunFailed:
    run_id: str
    error: str
    cancelled: bool = False


@dataclass(frozen=True)
class SearchEvent:
    search_id: str
    event: object  # one of pzshell.search.events


@dataclass(frozen=True)
class SearchFailed:
    search_id: str
    error: str


@dataclass(frozen=True)
class WorkerNote:
    text: str
    level: str = "info"  # "info" | "warning" | "error"


@dataclass(frozen=True)
class WorkerExited:
    """The worker process is gone (made by the client that noticed, never sent by the worker)."""

    reason: str  # in words, e.g. from :func:`pzshell.worker.client.describe_exit`


Event = (
    WorkerReady
    | RunStarted
    | RunProgress
    | RunFinished
    | RunFailed
    | SearchEvent
    | SearchFailed
    | WorkerNote
    | WorkerExited
)
