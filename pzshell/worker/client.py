"""The client side of the worker: start the process (spawn), send jobs, read events, restart.

Every method is safe to call from any thread; :meth:`get` blocks for at most ``timeout``
seconds, so a reader thread can notice that the process died (see :meth:`death_reason`).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing as mp
import queue
import signal
import sys
import weakref
from contextlib import contextmanager
from pathlib import Path

from .process import worker_main
from .protocol import Shutdown

_LIVE: weakref.WeakSet[WorkerClient] = weakref.WeakSet()


@atexit.register
def _kill_at_exit() -> None:
    """Kill the workers still running when the interpreter ends (registered after
    multiprocessing's own exit hook, so it runs first: that hook joins non-daemonic children,
    which would wait for ever on a worker nobody closed)."""
    for client in list(_LIVE):
        with contextlib.suppress(Exception):
            client.kill()


class WorkerClient:
    """One background worker process; :meth:`restart` replaces it after a death."""

    def __init__(self, log_path: str | Path | None = None):
        self.log_path = str(log_path) if log_path else None
        self._ctx = mp.get_context("spawn")
        self.proc = None
        self.jobs = None
        self.events = None
        self.generation = 0
        # Start multiprocessing's resource tracker now, while sys.stderr is still the real
        # one: a UI (Textual) replaces it with an object without a file descriptor, and the
        # tracker's later start would fail with "bad value(s) in fds_to_keep".
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.jobs = self._ctx.Queue()
        self.events = self._ctx.Queue()
        # Not daemonic: a search in the worker starts its own evaluator processes, which a
        # daemonic process may not. The worker leaves by itself when this process is gone
        # (it watches its parent), and at exit :func:`_kill_at_exit` ends it before
        # multiprocessing would wait for it.
        self.proc = self._ctx.Process(
            target=worker_main,
            args=(self.jobs, self.events, self.log_path),
            name="pzshell-worker",
            daemon=False,
        )
        with _real_std_streams():
            self.proc.start()
        _LIVE.add(self)
        self.generation += 1

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self, timeout: float = 10.0) -> None:
        """Ask the worker to stop its search (left resumable) and exit; kill it if it hangs."""
        if self.proc is None:
            return
        if self.proc.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self.jobs.put(Shutdown())
            self.proc.join(timeout)
        self.kill()

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        for q in (self.jobs, self.events):
            if q is not None:
                q.cancel_join_thread()
                q.close()
        self.proc = None

    # ---- traffic -------------------------------------------------------------------------------
    def submit(self, job) -> None:
        if self.jobs is None:
            raise RuntimeError("the worker is not started")
        self.jobs.put(job)

    def get(self, timeout: float = 0.2):
        """The next event, or None after ``timeout`` seconds without one."""
        if self.events is None:
            return None
        try:
            return self.events.get(timeout=timeout)
        except (queue.Empty, EOFError, OSError, ValueError):
            return None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def death_reason(self) -> str:
        """Why the process ended, in words (for the app's message)."""
        code = self.proc.exitcode if self.proc is not None else None
        return describe_exit(code)


@contextmanager
def _real_std_streams():
    """The process's own stdout/stderr while a child starts (see ``__init__``)."""
    saved = sys.stdout, sys.stderr
    try:
        if sys.__stderr__ is not None and sys.__stdout__ is not None:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        yield
    finally:
        sys.stdout, sys.stderr = saved


def describe_exit(code: int | None) -> str:
    if code is None:
        return "the worker process is gone"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL:
            return f"the worker was killed ({name}; out of memory, or killed by hand)"
        return f"the worker was killed by {name}"
    if code == 0:
        return "the worker exited"
    return f"the worker crashed (exit status {code})"
