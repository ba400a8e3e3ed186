"""The worker itself (pzshell.worker), without the app: runs, cancellation and a search on
``tiny`` in-process, and a real spawned worker killed with SIGKILL."""

from __future__ import annotations

import os
import queue
import signal
import time

import pytest

from pzshell.search import FitnessSettings, SearchSettings
from pzshell.search import events as se
from pzshell.worker import WorkerClient
from pzshell.worker import protocol as p
from pzshell.worker.process import Worker

TINY = p.RunSettings(model="tiny", nsamples=2, seqlen=32, eval_windows=1, device="cpu")


@pytest.fixture(autouse=True)
def _own_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("PZSHELL_CACHE", str(tmp_path / "cache"))


def _until(events: queue.Queue, pred, timeout: float = 120.0) -> list:
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ev = events.get(timeout=0.5)
        except queue.Empty:
            continue
        got.append(ev)
        if pred(ev):
            return got
    raise AssertionError(f"timed out; events so far: {got[-5:]}")


def test_runs_cancel_and_search_in_process(tmp_path):
    events: queue.Queue = queue.Queue()
    w = Worker(events.put)
    try:
        # a run; then a queued run cancelled before it starts; a bad formula fails cleanly
        w.handle(p.PruneRequest("a", "metric", "W*sqrt(X)", TINY))
        w.handle(p.PruneRequest("b", "dense", None, TINY))
        w.handle(p.CancelRun("b"))
        w.handle(p.PruneRequest("c", "metric", "W*nope(X)", TINY))
        got = _until(events, lambda e: isinstance(e, p.RunFailed) and e.run_id == "c")
        done = next(e for e in got if isinstance(e, p.RunFinished))
        assert done.run_id == "a" and done.results["ppl"] > 1 and "layers" not in done.results
        assert any(isinstance(e, p.RunProgress) and e.stage == "prune" for e in got)
        b = next(e for e in got if isinstance(e, p.RunFailed) and e.run_id == "b")
        assert b.cancelled
        c = got[-1]
        assert not c.cancelled and "nope" in c.error

        # a search: started, candidates, pause / inject / stop obeyed
        fit = FitnessSettings(
            model="tiny",
            nsamples=2,
            grad_samples=1,
            seqlen=32,
            heldout_windows=1,
            heldout_seqlen=32,
            cheap_windows=0,
        )
        s = SearchSettings(fitness=fit, population=4, budget=40, batch=2, final_top=0)
        out = tmp_path / "search"
        w.handle(p.StartSearch("s1", str(out), s, device="cpu"))
        _until(
            events, lambda e: isinstance(e, p.SearchEvent) and isinstance(e.event, se.CandidateDone)
        )
        w.handle(p.ControlSearch("inject", "W*X+G"))
        _until(events, lambda e: isinstance(e, p.WorkerNote) and "injected" in e.text)
        w.handle(p.ControlSearch("stop"))
        got = _until(
            events,
            lambda e: isinstance(e, p.SearchEvent) and isinstance(e.event, se.SearchFinished),
        )
        assert got[-1].event.stopped
        assert (out / "candidates.jsonl").exists()
        # it can be continued from the directory alone
        w.handle(p.StartSearch("s2", str(out), None, resume=True, device="cpu"))
        got = _until(
            events, lambda e: isinstance(e, p.SearchEvent) and isinstance(e.event, se.SearchStarted)
        )
        assert got[-1].event.out_dir == str(out)
        assert not any(isinstance(e, p.SearchFailed) for e in got)
        w.handle(p.ControlSearch("stop"))
        _until(
            events,
            lambda e: isinstance(e, p.SearchEvent) and isinstance(e.event, se.SearchFinished),
        )
    finally:
        w.shutdown(timeout=30)


def test_a_killed_worker_process_says_why(tmp_path):
    c = WorkerClient(tmp_path / "worker.log")
    c.start()
    try:
        deadline = time.monotonic() + 120
        ev = None
        while not isinstance(ev, p.WorkerReady) and time.monotonic() < deadline:
            ev = c.get(0.5)
        assert isinstance(ev, p.WorkerReady) and ev.pid == c.pid
        os.kill(c.pid, signal.SIGKILL)
        c.proc.join(10)
        assert not c.alive
        assert "SIGKILL" in c.death_reason()
        c.restart()
        ev = None
        while not isinstance(ev, p.WorkerReady) and time.monotonic() < deadline:
            ev = c.get(0.5)
        assert isinstance(ev, p.WorkerReady) and c.generation == 2
    finally:
        c.close(timeout=10)
    assert not c.alive
