"""Where candidates are evaluated: in this process, a pool of local processes, or Ray actors.

All three take a list of tasks and yield results *as they complete* (a worker that finishes
takes the next task at once); each worker holds its own model, dense weights and the cached
statistics (computed once, read from the disk cache by every worker).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass

from ..lang import Node
from .fitness import Evaluator, FitnessSettings


@dataclass(frozen=True)
class Task:
    cid: int
    tree: Node
    threshold: float | None
    final: bool = False


def run_task(ev: Evaluator, task: Task, worker: str) -> dict:
    res = ev.final_fitness(task.tree) if task.final else ev.run(task.tree, task.threshold)
    res.update(cid=task.cid, worker=worker)
    return res


class InProcessBackend:
    name = "in-process"

    def __init__(
        self, settings: FitnessSettings, *, device: str | None = "cpu", threads: int | None = None
    ):
        self.ev = Evaluator(settings, device=device, threads=threads)
        self.workers = 1

    def map_unordered(self, tasks: list[Task]) -> Iterator[dict]:
        for t in tasks:
            yield run_task(self.ev, t, "main")

    def close(self) -> None:
        pass


# ---- local processes -----------------------------------------------------------------------

_WORKER_EV: Evaluator | None = None


def _init_worker(settings: FitnessSettings, device: str | None, threads: int) -> None:
    global _WORKER_EV
    _WORKER_EV = Evaluator(settings, device=device, threads=threads)


def _run_in_worker(task: Task) -> dict:
    assert _WORKER_EV is not None
    return run_task(_WORKER_EV, task, f"proc-{os.getpid()}")


class ProcessBackend:
    name = "processes"

    def __init__(
        self,
        settings: FitnessSettings,
        workers: int,
        *,
        device: str | None = "cpu",
        threads: int | None = None,
    ):
        # statistics are computed once here and cached on disk before the workers start
        Evaluator(settings, device=device, threads=threads)
        self.workers = workers
        per = threads or max(1, (os.cpu_count() or 1) // workers)
        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(settings, device, per),
        )

    def map_unordered(self, tasks: list[Task]) -> Iterator[dict]:
        pending = {self.pool.submit(_run_in_worker, t) for t in tasks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


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
            from ..errors import PzError

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
        Evaluator(settings, device=device, threads=threads)  # fill the statistics cache once
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
