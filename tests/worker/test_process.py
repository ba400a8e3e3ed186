"""The worker itself (pzshell.worker), without the app: runs, cancellation and a search on
``tiny`` in-process, and a real spawned worker killed with SIGKILL."""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pzshell.search import FitnessSettings, SearchSettings
from pzshell.search import events as se
from pzshell.search.runlog import RunLog
from pzshell.worker import WorkerClient
from pzshell.worker import protocol as p
from pzshell.worker.process import Worker

TINY = p.RunSettings(model="tiny", nsamples=2, seqlen=32, eval_windows=1, device="cpu")


@pytest.fixture(autouse=True)
def _own_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("PZSHELL_CACHE", str(tmp_path / "cache"))


def _until(source, pred, timeout: float = 120.0) -> list:
    """The events of ``source`` (an in-process worker's queue, or a :class:`WorkerClient`,
    whose death fails at once) up to the first that satisfies ``pred``."""
    client = source if isinstance(source, WorkerClient) else None
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client is not None:
            ev = client.get(0.5)
        else:
            try:
                ev = source.get(timeout=0.5)
            except queue.Empty:
                ev = None
        if ev is None:
            if client is not None and not client.alive:
                raise AssertionError(
                    f"the worker died: {client.death_reason()}; events: {got[-5:]}"
                )
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
        # a refitted run: the worker's prune refits, the results say so
        refined = dataclasses.replace(TINY, refit=4, refine="swaps")
        w.handle(p.PruneRequest("d", "wanda", None, refined))
        got = _until(events, lambda e: isinstance(e, (p.RunFinished, p.RunFailed)))
        d = got[-1]
        assert isinstance(d, p.RunFinished) and d.run_id == "d"
        assert d.results["method"] == "wanda+refit" and d.results["refit"] == 4
        assert 0 < d.results["refit_error_median"] < 1
        assert d.results["refine"] == "swaps" and d.results["refine_swaps"] > 0

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
        w.handle(p.StartSearch("s1", str(out), s, device="cpu", workers=1))
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
        w.handle(p.StartSearch("s2", str(out), None, resume=True, device="cpu", workers=1))
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


def _children(pid: int) -> set[int]:
    """The child processes of ``pid``, started by any of its threads (the search runs on one
    of the worker's threads, and /proc lists a child under the thread that started it)."""
    out: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out |= {int(x) for x in f.read().split()}
        except OSError:
            continue
    return out


def test_the_app_worker_runs_a_search_on_evaluator_processes(tmp_path):
    """The app's worker is a spawned process; its search starts its own evaluator processes
    (a daemonic worker could not), and both of them take candidates."""
    fit = FitnessSettings(
        model="tiny", nsamples=2, grad_samples=1, seqlen=32, heldout_windows=1,
        heldout_seqlen=32, cheap_windows=0,
    )  # fmt: skip
    s = SearchSettings(fitness=fit, population=4, budget=8, batch=4, final_top=0)
    out = tmp_path / "search"
    c = WorkerClient(tmp_path / "worker.log")
    c.start()
    try:
        _until(c, lambda e: isinstance(e, p.WorkerReady), timeout=180)
        c.submit(p.StartSearch("s1", str(out), s, device="cpu", workers=2))
        got = _until(
            c,
            lambda e: (
                isinstance(e, (p.SearchFailed, p.SearchEvent))
                and isinstance(getattr(e, "event", None), se.SearchStarted)
            ),
            timeout=180,
        )
        assert not any(isinstance(e, p.SearchFailed) for e in got), got
        notes = [e.text for e in got if isinstance(e, p.WorkerNote)]
        assert "search: backend processes, workers 2" in notes
        # the two evaluators (and the resource tracker), children of the worker itself
        deadline = time.monotonic() + 60
        while len(_children(c.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_children(c.pid)) >= 2, _children(c.pid)
        got = _until(
            c,
            lambda e: (
                isinstance(e, p.SearchFailed)
                or (isinstance(e, p.SearchEvent) and isinstance(e.event, se.SearchFinished))
            ),
            timeout=180,
        )
        assert isinstance(got[-1], p.SearchEvent), got[-1]
        assert got[-1].event.evaluations == 8
        workers = {r["worker"] for r in RunLog(out).read()[0]}
        assert len({w for w in workers if w.startswith("proc-")}) == 2, workers
    finally:
        c.close(timeout=30)
    assert not c.alive


def test_an_unclosed_worker_does_not_hold_the_interpreter_at_exit(tmp_path):
    """The worker is not daemonic (it has children of its own), so multiprocessing would wait
    for it at exit; pzshell kills the workers nobody closed first."""
    script = textwrap.dedent(
        f"""
        import time
        from pzshell.worker import WorkerClient
        from pzshell.worker.protocol import WorkerReady
        c = WorkerClient({str(tmp_path / "w.log")!r})
        c.start()
        deadline = time.monotonic() + 120
        ev = None
        while not isinstance(ev, WorkerReady) and time.monotonic() < deadline:
            ev = c.get(0.5)
        print(c.pid, isinstance(ev, WorkerReady), flush=True)
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr
    pid, ready = r.stdout.split()
    assert ready == "True"
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.2)
    gone = not os.path.exists(f"/proc/{pid}")
    if not gone:  # a zombie (reaped by init later) is gone too
        with open(f"/proc/{pid}/stat") as f:
            gone = f.read().split()[2] == "Z"
    assert gone, f"worker {pid} outlived its parent"
