"""The background worker: a separate process that prunes, evaluates and searches.

Jobs go in and typed events come out over ``multiprocessing`` queues (spawn context), so a
client — the terminal app — never blocks on model work and survives the worker's death. This
package is domain code: it never imports the UI.
"""

from .client import WorkerClient, describe_exit
from .protocol import (
    CancelRun,
    ControlSearch,
    Event,
    PruneRequest,
    RunFailed,
    RunFinished,
    RunProgress,
    RunSettings,
    RunStarted,
    SearchEvent,
    SearchFailed,
    Shutdown,
    StartSearch,
    WorkerExited,
    WorkerNote,
    WorkerReady,
)

__all__ = [
    "CancelRun",
    "ControlSearch",
    "Event",
    "PruneRequest",
    "RunFailed",
    "RunFinished",
    "RunProgress",
    "RunSettings",
    "RunStarted",
    "SearchEvent",
    "SearchFailed",
    "Shutdown",
    "StartSearch",
    "WorkerClient",
    "WorkerExited",
    "WorkerNote",
    "WorkerReady",
    "describe_exit",
]
