"""Where candidates are evaluated: in this process, a pool of local processes, or Ray actors.

All three take a list of tasks and yield results *as they complete* (a worker that finishes
takes the next task at once); each worker holds its own model, dense weights and the cached
statistics (computed once, read from the disk cache by every worker).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_connections

from ..engine.stats import gradient_fingerprint
from ..errors import PzError
from ..lang import Node
from ..models import token_fingerprint
from ..util import runtime_versions
from .fitness import Evaluator, FitnessSettings


@dataclass(frozen=True)
class Task:
    """One stage of one candidate: ``screen`` (the proxy stage), ``eval`` (the perplexity
    stages, the cheap one gated by ``threshold``) or ``final`` (the layer-sequential prune)."""

    cid: int
    tree: Node
    threshold: float | None = None
    kind: str = "eval"


def default_workers(device: str | None = "cpu") -> int:
    """Workers when none are asked for: two processes on a CPU with two or more cores (each
    with half the threads), one on an accelerator. Measured on 2 cores with SmolLM2 (the same
    184 candidates, 65 perplexities, of a 9-minute search): one process with 2 threads took
    604 s, two with 1 thread each 537 s. Tree evaluation, masks and the proxy's small matrices
    use two threads poorly; two processes keep both cores busy."""
    if device not in (None, "cpu"):
        return 1
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def local_backend(workers: int | None, device: str | None = "cpu") -> tuple[str, int]:
    """The local backend and worker count for ``workers`` asked (None: :func:`default_workers`):
    ``processes`` for more than one worker, else ``in-process``. A count below 1 is passed on
    as it is, for :class:`~pzshell.search.Search` to refuse."""
    n = default_workers(device) if workers is None else workers
    return ("processes" if n > 1 else "in-process"), n


def run_task(ev: Evaluator, task: Task, worker: str) -> dict:
    if task.kind == "final":
        res = ev.final_fitness(task.tree)
    elif task.kind == "screen":
        res = ev.screen(task.tree)
    else:
        res = ev.run(task.tree, task.threshold)
    res.update(cid=task.cid, worker=worker)
    return res


def startup_of(ev: Evaluator) -> dict:
    """What building the first evaluator cost (model load, statistics, from the cache?), and
    what its fitness is measured on: the model and tokenizer (``model_fingerprint``), the
    held-out and the finals' token ids, and the library versions."""
    return {
        "load_seconds": round(ev.load_seconds, 3),
        "statistics_seconds": round(ev.stats_seconds, 3),
        "statistics_cached": ev.stats_cached,
        "model_fingerprint": ev.fingerprint,
        "heldout_fingerprint": token_fingerprint(ev.heldout),
        "final_fingerprint": token_fingerprint(ev.final_heldout),
        # the G every candidate is scored with (the run directory's grads.pth)
        "gradient_fingerprint": gradient_fingerprint(ev.G),
        # --heldout-skip: how many held-out tokens it leaves out (full stage, finals)
        **(
            {
                "heldout_skipped": [int(ev.heldout_skip[:, 1:].sum()), ev.heldout[:, 1:].numel()],
                "final_skipped": [int(ev.final_skip[:, 1:].sum()), ev.final_heldout[:, 1:].numel()],
            }
            if ev.heldout_skip is not None
            else {}
        ),
        "versions": runtime_versions(),
    }


class InProcessBackend:
    name = "in-process"

    def __init__(
        self, settings: FitnessSettings, *, device: str | None = "cpu", threads: int | None = None
    ):
        self.ev = Evaluator(settings, device=device, threads=threads)
        self.startup = startup_of(self.ev)
        self.gradients = self.ev.G  # for the run directory's grads.pth
        self.workers = 1

    def map_unordered(self, tasks: list[Task]) -> Iterator[dict]:
        for t in tasks:
            yield run_task(self.ev, t, "main")

    def close(self) -> None:
        pass


# ---- local processes -----------------------------------------------------------------------


def _exit_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """End this process as soon as its parent is gone (a SIGKILLed search must not leave its
    workers behind, each holding a model)."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(interval)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _process_worker(conn, settings: FitnessSettings, device, threads: int, parent: int) -> None:
    """A worker process: build an :class:`Evaluator`, then answer tasks one at a time until the
    parent sends ``None``, closes the pipe, or dies."""
    _exit_with_parent(parent)
    try:
        ev = Evaluator(settings, device=device, threads=threads)
    except BaseException as e:  # reported to the parent, which raises it there
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    name = f"proc-{os.getpid()}"
    conn.send(("ready", name))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            conn.send(("done", run_task(ev, task, name)))
        except Exception:
            conn.send(("failed", traceback.format_exc()))


@dataclass
class _Proc:
    proc: mp.process.BaseProcess
    conn: Connection
    task: Task | None = None  # the task it is working on (its result is still to be read)


class ProcessBackend:
    """Local worker processes, each given one task at a time: every worker is busy from the
    first task on, and a worker that finishes takes the next task at once. Workers exit when
    the search closes them, when their pipe closes, or when the search process dies."""

    name = "processes"

    def __init__(
        self,
        settings: FitnessSettings,
        workers: int,
        *,
        device: str | None = "cpu",
        threads: int | None = None,
    ):
        # statistics are computed once here and cached on disk before the workers start; G is
        # kept for the run directory's grads.pth (the search writes it, then drops it)
        ev = Evaluator(settings, device=device, threads=threads)
        self.startup, self.gradients = startup_of(ev), ev.G
        del ev
        self.workers = workers
        per = threads or max(1, (os.cpu_count() or 1) // workers)
        ctx = mp.get_context("spawn")
        self.procs: list[_Proc] = []
        for _ in range(workers):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=_process_worker,
                args=(theirs, settings, device, per, os.getpid()),
                name="pzshell-search-worker",
                daemon=True,
            )
            proc.start()
            theirs.close()
            self.procs.append(_Proc(proc, mine))
        try:
            for w in self.procs:
                self._receive(w, "ready")
        except BaseException:
            self.close()
            raise

    def _receive(self, w: _Proc, want: str):
        try:
            kind, payload = w.conn.recv()
        except (EOFError, OSError):
            w.proc.join(5.0)
            raise PzError(
                f"a search worker process died ({_exit_text(w.proc.exitcode)})"
                + (f" while evaluating candidate {w.task.cid}" if w.task is not None else "")
            ) from None
        if kind == "failed":
            raise PzError(f"a search worker process failed:\n{payload}")
        assert kind == want, (kind, want)
        return payload

    def map_unordered(self, tasks: list[Task]) -> Iterator[dict]:
        for w in self.procs:  # results of an earlier, abandoned call are not ours
            if w.task is not None:
                self._receive(w, "done")
                w.task = None
        queue = list(tasks)
        while queue or any(w.task is not None for w in self.procs):
            for w in self.procs:
                if w.task is None and queue:
                    w.task = queue.pop(0)
                    w.conn.send(w.task)
            busy = {w.conn: w for w in self.procs if w.task is not None}
            for conn in wait_for_connections(list(busy)):
                w = busy[conn]
                res = self._receive(w, "done")
                w.task = None
                yield res

    def close(self) -> None:
        for w in self.procs:
            with contextlib.suppress(OSError, ValueError):
                w.conn.send(None)
        for w in self.procs:
            w.proc.join(10.0)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(5.0)
            w.conn.close()
        self.procs = []


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# ---- Ray -----------------------------------------------------------------------------------


class RayBackend:
    """One actor per worker slot (per GPU when there are GPUs); the same evaluation code."""

    name = "ray"

    def __init__(
        self,
        settings: FitnessSettings,
        workers: int,
        address: str | None = None,
        *,
        device: str | None = "cpu",
        threads: int | None = None,
    ):
        try:
            import ray
        except ImportError:
            raise PzError("--ray needs the 'ray' package: pip install 'pzshell[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            if address:
                ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
            else:
                ray.init(
                    num_cpus=max(workers, 1),
                    include_dashboard=False,
                    ignore_reinit_error=True,
                    log_to_driver=False,
                )
        # fill the statistics cache once (G kept for the run directory's grads.pth)
        ev = Evaluator(settings, device=device, threads=threads)
        self.startup, self.gradients = startup_of(ev), ev.G
        del ev
        per = threads or max(1, (os.cpu_count() or 1) // workers)
        gpus = 1 if device not in (None, "cpu") and str(device).startswith("cuda") else 0

        @ray.remote(num_cpus=1, num_gpus=gpus)
        class EvaluatorActor:
            def __init__(self, settings, device, threads):
                self.ev = Evaluator(settings, device=device, threads=threads)
                self.name = f"ray-{os.getpid()}"

            def run(self, task):
                return run_task(self.ev, task, self.name)

        self.actors = [EvaluatorActor.remote(settings, device, per) for _ in range(workers)]
        self.workers = workers

    def map_unordered(self, tasks: list[Task]) -> Iterator[dict]:
        ray = self.ray
        queue = list(tasks)
        running = {}
        idle = list(self.actors)
        while queue or running:
            while idle and queue:
                actor = idle.pop()
                ref = actor.run.remote(queue.pop(0))
                running[ref] = actor
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                idle.append(running.pop(ref))
                yield ray.get(ref)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
