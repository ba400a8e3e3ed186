"""A fast fake of :class:`pzshell.worker.WorkerClient`: the same interface, scripted events.

Runs finish at once with a perplexity derived from the formula (unless ``hold`` is set, which
keeps a run in progress until :meth:`finish`); a search emits a scripted sequence and obeys
pause / resume / stop / inject. :meth:`die` simulates a killed process.
"""

from __future__ import annotations

import math
import queue
import zlib
from pathlib import Path

from pzshell.jobs.results import validate
from pzshell.search import events as se
from pzshell.worker import protocol as p
from pzshell.worker.client import describe_exit


def fake_ppl(kind: str, formula: str | None) -> float:
    if kind == "dense":
        return 29.21
    if kind == "wanda":
        return 41.57
    return 30.0 + zlib.crc32((formula or "").encode()) % 5000 / 100


def fake_results(kind: str, settings: p.RunSettings, ppl: float) -> dict:
    """What a worker run reports: a results dict in the jobs' schema (checked here)."""
    dense = kind == "dense"
    res = {
        "schema": 1,
        "job": "eval" if dense else "prune",
        "model": settings.model,
        "model_source": "fake (no model)",
        "device": "cpu",
        "method": "dense" if dense else ("metric" if kind == "metric" else kind),
        "sparsity_ratio": 0.0 if dense else settings.sparsity_ratio,
        "sparsity_type": "unstructured" if dense else settings.sparsity_type,
        "actual_sparsity": 0.0 if dense else settings.sparsity_ratio,
        "nsamples": 0 if dense else 8,
        "seqlen": 128,
        "seed": settings.seed,
        "calib_data": None if dense else "builtin",
        "prune_seconds": 0.0 if dense else 1.5,
        "grad_seconds": 0.0,
        "load_seconds": 0.0,
        "ppl": ppl,
        "eval_nll": math.log(ppl),
        "eval_data": "builtin",
        "eval_windows": 4,
        "eval_seqlen": 128,
        "eval_tokens": 512,
        "peak_rss_mb": 100.0,
        "torch_threads": 1,
    }
    if not dense and settings.refit:
        res.update(refit=settings.refit, refit_error_median=0.8)
    if not dense and settings.refine != "none":
        res.update(refine=settings.refine, refine_swaps=10)
    return validate(res, "fake worker results")


class FakeWorker:
    def __init__(self, *, hold: bool = False, search_candidates: int = 3):
        self.hold = hold
        self.search_candidates = search_candidates
        self.events: queue.Queue = queue.Queue()
        self.jobs: list = []
        self.generation = 0
        self.exitcode: int | None = None
        self._alive = False
        self.running: dict[str, p.PruneRequest] = {}
        self.search: p.StartSearch | None = None
        self.injected: list[str] = []
        self.evaluations = 0

    # ---- WorkerClient interface ----------------------------------------------------------------
    def start(self) -> None:
        self.generation += 1
        self._alive = True
        self.exitcode = None
        self.events = queue.Queue()
        self.running = {}
        self.search = None
        self.events.put(p.WorkerReady(1000 + self.generation, "fake (no model)"))

    def restart(self) -> None:
        self.start()

    def close(self, timeout: float = 10.0) -> None:
        if self.search is not None:
            self._finish_search(stopped=True)
        self._alive = False
        self.exitcode = 0

    def kill(self) -> None:
        self._alive = False

    @property
    def alive(self) -> bool:
        return self._alive

    def death_reason(self) -> str:
        return describe_exit(self.exitcode)

    def get(self, timeout: float = 0.2):
        try:
            return self.events.get(timeout=min(timeout, 0.02))
        except queue.Empty:
            return None

    def submit(self, job) -> None:
        self.jobs.append(job)
        if isinstance(job, p.PruneRequest):
            self.running[job.run_id] = job
            self.events.put(p.RunStarted(job.run_id))
            for i in range(1, 3):
                self.events.put(p.RunProgress(job.run_id, "prune", i, 2, f"block {i - 1}"))
            if not self.hold:
                self.finish(job.run_id)
        elif isinstance(job, p.CancelRun):
            if self.running.pop(job.run_id, None) is not None:
                self.events.put(p.RunFailed(job.run_id, "cancelled", cancelled=True))
        elif isinstance(job, p.StartSearch):
            self._start_search(job)
        elif isinstance(job, p.ControlSearch):
            self._control(job)

    # ---- scripting -----------------------------------------------------------------------------
    def finish(self, run_id: str, ppl: float | None = None) -> None:
        job = self.running.pop(run_id)
        self.events.put(
            p.RunFinished(
                run_id,
                fake_results(
                    job.kind,
                    job.settings,
                    ppl if ppl is not None else fake_ppl(job.kind, job.formula),
                ),
            )
        )

    def die(self, exitcode: int = -9) -> None:
        """The process is gone (like SIGKILL from the OOM killer)."""
        self._alive = False
        self.exitcode = exitcode

    def _emit(self, ev) -> None:
        self.events.put(p.SearchEvent(self.search.search_id, ev))

    def _start_search(self, job: p.StartSearch) -> None:
        self.search = job
        self.evaluations = 0
        Path(job.out_dir).mkdir(parents=True, exist_ok=True)  # as a real search does
        budget = job.settings.budget if job.settings else 24
        self._emit(se.SearchStarted(job.out_dir, budget, 0))
        for f in ("W", "W*sqrt(X)", "abs(W*W)*mms(G)")[: self.search_candidates]:
            self._candidate(f)

    def _candidate(self, formula: str) -> None:
        self.evaluations += 1
        fit = fake_ppl("metric", formula)
        rec = {
            "id": self.evaluations - 1,
            "formula": formula,
            "stage": "full",
            "fitness": fit,
            "seconds": 2.0,
            "size": len(formula),
            "canonical": formula,
        }
        self._emit(se.CandidateDone(rec))
        hof = [(1, fake_ppl("metric", "W"), "W")]
        self._emit(se.SearchProgress(self.evaluations, 24, 0, 6.0, fit, formula, hof, False))

    def _control(self, job: p.ControlSearch) -> None:
        if self.search is None:
            self.events.put(p.WorkerNote("no search is running", "warning"))
            return
        if job.action == "inject":
            self.injected.append(job.formula)
            self.events.put(p.WorkerNote(f"injected {job.formula} into the population"))
            self._candidate(job.formula)
        elif job.action == "stop":
            self._finish_search(stopped=True)

    def _finish_search(self, stopped: bool) -> None:
        self._emit(
            se.SearchFinished(
                self.search.out_dir, "W", fake_ppl("metric", "W"), self.evaluations, stopped
            )
        )
        self.search = None
