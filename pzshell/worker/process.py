"""The worker process: runs prune jobs one at a time and at most one search, reporting events.

Runs go through :func:`pzshell.jobs.run_prune` on a fresh copy of a cached dense model, so the
second run of a session skips the model load. A run is cancelled at the next progress event
(once per block); a search is driven through its thread-safe controls. Everything printed by
libraries goes to a log file, never to the terminal the app draws on.
"""

from __future__ import annotations

import copy
import os
import queue
import signal
import sys
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path

from ..progress import Progress
from .protocol import (
    CancelRun,
    ControlSearch,
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
    WorkerNote,
    WorkerReady,
)


def specs_of(s: RunSettings) -> tuple:
    """The app's flat run settings as the jobs' specs: (model, calibration, evaluation)."""
    from ..jobs.specs import CalibSpec, EvalSpec, ModelSpec

    return (
        ModelSpec(s.model, s.device),
        CalibSpec(s.calib, s.nsamples, s.seqlen, s.seed),
        EvalSpec(s.eval, s.eval_seqlen, s.eval_windows),
    )


class Cancelled(Exception):
    pass


def _redirect_output(log_path: str | None) -> None:
    if not log_path:
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def describe_device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({torch.get_num_threads()} threads)"


class Worker:
    """The state of one worker process (also usable in-process, for tests and benchmarks)."""

    def __init__(self, emit):
        self.emit = emit
        self.runs: queue.Queue = queue.Queue()
        self.cancelled: set[str] = set()
        self.current: str | None = None
        self.search = None
        self.search_thread: threading.Thread | None = None
        # set once the running search has reported SearchFinished: its thread is only tidying up
        self.search_over = threading.Event()
        self._dense: dict[tuple, object] = {}
        self._lock = threading.Lock()
        self.runner = threading.Thread(target=self._run_loop, name="runs", daemon=True)
        self.runner.start()

    # ---- dispatch (called from the process's main loop) ----------------------------------------
    def handle(self, job) -> bool:
        """Handle one job; False when the worker should exit."""
        if isinstance(job, PruneRequest):
            self.runs.put(job)
        elif isinstance(job, CancelRun):
            with self._lock:
                self.cancelled.add(job.run_id)
        elif isinstance(job, StartSearch):
            self._start_search(job)
        elif isinstance(job, ControlSearch):
            self._control(job)
        elif isinstance(job, Shutdown):
            self.shutdown()
            return False
        else:
            self.emit(WorkerNote(f"unknown job {type(job).__name__}", "error"))
        return True

    def shutdown(self, timeout: float = 20.0) -> None:
        if self.search is not None:
            self.search.stop()
        with self._lock:
            if self.current:
                self.cancelled.add(self.current)
        self.runs.put(None)
        if self.search_thread is not None:
            self.search_thread.join(timeout)
        self.runner.join(timeout)

    # ---- runs ----------------------------------------------------------------------------------
    def _run_loop(self) -> None:
        while True:
            job = self.runs.get()
            if job is None:
                return
            with self._lock:
                if job.run_id in self.cancelled:
                    self.emit(RunFailed(job.run_id, "cancelled", cancelled=True))
                    continue
                self.current = job.run_id
            try:
                self.emit(RunStarted(job.run_id))
                results = self.run_one(job)
                self.emit(RunFinished(job.run_id, results))
            except Cancelled:
                self.emit(RunFailed(job.run_id, "cancelled", cancelled=True))
            except Exception as e:  # a failed run must never take the worker down
                self.emit(RunFailed(job.run_id, _describe(e)))
            finally:
                with self._lock:
                    self.current = None
                    self.cancelled.discard(job.run_id)

    def _model(self, s):
        """A fresh copy of the dense model (loaded once per model and device)."""
        from ..models import load_model

        key = (s.model, s.device)
        if key not in self._dense:
            self._dense.clear()  # one model at a time: memory matters more than a reload
            self._dense[key] = load_model(s.model, device=s.device)
        dense = self._dense[key]
        lm = copy.copy(dense)
        lm.model = copy.deepcopy(dense.model)
        return lm

    def run_one(self, job: PruneRequest) -> dict:
        from ..jobs import EvalJob, PruneJob, run_eval, run_prune
        from ..lang import load_metric

        s = job.settings
        rid = job.run_id

        def progress(ev) -> None:
            if rid in self.cancelled:
                raise Cancelled()
            self.emit(RunProgress(rid, ev.stage, ev.done, ev.total, ev.message))

        metric = load_metric(job.formula) if job.kind == "metric" else None
        progress(Progress("load", 0, 1, s.model))
        t0 = time.perf_counter()
        lm = self._model(s)
        load_seconds = time.perf_counter() - t0
        progress(Progress("load", 1, 1, s.model))
        if job.kind == "dense":
            model, _, evaluation = specs_of(s)
            # the dense reference is measured on the runs' windows: eval length defaults to the
            # calibration window length, as in a prune run
            evaluation = replace(evaluation, seqlen=s.eval_seqlen or s.seqlen)
            _, res = run_eval(EvalJob(model, evaluation), progress=progress, lm=lm)
        else:
            model, calib, evaluation = specs_of(s)
            pj = PruneJob(
                method="metric" if metric is not None else job.kind,
                sparsity_ratio=s.sparsity_ratio,
                sparsity_type=s.sparsity_type,
                metric=metric,
                model=model,
                calib=calib,
                eval=evaluation,
                refit=s.refit,
                refine=s.refine,
            )
            _, res = run_prune(pj, progress=progress, lm=lm)
        res.pop("layers", None)
        res["load_seconds"] = load_seconds
        return res

    # ---- search --------------------------------------------------------------------------------
    def _start_search(self, job: StartSearch) -> None:
        t = self.search_thread
        if t is not None and t.is_alive() and self.search_over.is_set():
            t.join(30.0)  # the last search has finished and is closing its backend
        if t is not None and t.is_alive():
            self.emit(SearchFailed(job.search_id, "a search is already running"))
            return
        self.search_over.clear()
        self.search_thread = threading.Thread(
            target=self._search_main, args=(job,), name="search", daemon=True
        )
        self.search_thread.start()

    def _search_main(self, job: StartSearch) -> None:
        from ..search import Search
        from ..search.cache import FitnessCache
        from ..search.runlog import load_settings

        sid = job.search_id
        try:
            settings = job.settings
            use_cache = True
            if job.resume:  # the run's own settings (digest-checked) and its cache option
                settings, options = load_settings(job.out_dir)
                use_cache = options.get("cache", True)
                if job.budget:
                    settings.budget = max(settings.budget, job.budget)
            from ..models.load import pick_device
            from ..search.backends import local_backend

            device = str(pick_device(job.device))
            backend, workers = local_backend(job.workers, device)
            self.emit(WorkerNote(f"search: backend {backend}, workers {workers}"))
            self.search = Search(
                settings,
                job.out_dir,
                backend=backend,
                workers=workers,
                device=device,
                cache=FitnessCache() if use_cache else None,
                on_event=lambda ev: self._search_event(sid, ev),
                resume=job.resume,
            )
            self.search.run()
        except Exception as e:
            self.emit(SearchFailed(sid, _describe(e)))
        finally:
            self.search = None
            self.search_over.set()

    def _search_event(self, sid: str, ev) -> None:
        from ..search.events import SearchFinished

        if isinstance(ev, SearchFinished):
            self.search_over.set()
        self.emit(SearchEvent(sid, ev))

    def _control(self, job: ControlSearch) -> None:
        s = self.search
        if s is None:
            self.emit(WorkerNote("no search is running", "warning"))
            return
        if job.action == "pause":
            s.pause()
        elif job.action == "resume":
            s.resume()
        elif job.action == "stop":
            s.stop()
        elif job.action == "inject" and job.formula:
            try:
                s.inject(job.formula)
                self.emit(WorkerNote(f"injected {job.formula} into the population"))
            except Exception as e:
                self.emit(WorkerNote(f"cannot inject {job.formula!r}: {_describe(e)}", "error"))
        else:
            self.emit(WorkerNote(f"unknown search action {job.action!r}", "error"))


def _describe(e: BaseException) -> str:
    from ..errors import PzError

    if isinstance(e, PzError):
        return str(e)
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
        return f"out of memory: {e}"
    tb = traceback.extract_tb(e.__traceback__)
    where = f" ({Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


def worker_main(jobs, events, log_path: str | None = None) -> None:
    """Entry point of the spawned process: read jobs until Shutdown (or the parent goes)."""
    _redirect_output(log_path)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the app, not to us
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    worker = Worker(events.put)
    events.put(WorkerReady(os.getpid(), describe_device()))
    parent = os.getppid()
    while True:
        try:
            job = jobs.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # orphaned: the app is gone
                worker.shutdown(timeout=10)
                return
            continue
        except (EOFError, OSError):
            worker.shutdown(timeout=10)
            return
        if not worker.handle(job):
            return
