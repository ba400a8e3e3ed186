"""Fixtures for the terminal-app tests: a fast fake worker and an app on a fresh data dir."""

from __future__ import annotations

import asyncio
import time

import pytest

from pzshell.tui.app import PzShellApp
from pzshell.tui.messages import WorkerEvent
from pzshell.tui.store import AppSettings, SearchKnobs
from pzshell.worker.protocol import RunSettings, SearchEvent

from .fake_worker import FakeWorker


def tiny_settings(**run) -> AppSettings:
    return AppSettings(
        run=RunSettings(model="tiny", nsamples=4, eval_windows=2, **run),
        search=SearchKnobs(),
    )


@pytest.fixture
def fake() -> FakeWorker:
    return FakeWorker()


@pytest.fixture
def make_app(tmp_path, fake):
    def make(settings: AppSettings | None = None, *, formula: str = "", home=None, client=None):
        return PzShellApp(
            settings or tiny_settings(),
            home=home or tmp_path / "home",
            client=client or fake,
            formula=formula,
        )

    return make


async def wait_for(pilot, cond, timeout: float = 10.0, what: str = "condition"):
    """Let the app run until ``cond()`` holds (the analysis and the pump are threads)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            app = pilot.app
            raise AssertionError(
                f"timed out waiting for {what} (focus: {app.focused!r}, screen: {app.screen!r})"
            )
        await pilot.pause(0.02)
        await asyncio.sleep(0)


def worker_events(seen: list, kind: type) -> list:
    """The worker's events of type ``kind`` among the messages ``seen`` (a search's own events,
    :mod:`pzshell.search.events`, are taken out of their :class:`SearchEvent`)."""
    out = []
    for msg in seen:
        if not isinstance(msg, WorkerEvent):
            continue
        ev = msg.event
        if isinstance(ev, SearchEvent) and not issubclass(kind, SearchEvent):
            ev = ev.event
        if isinstance(ev, kind):
            out.append(ev)
    return out


def static_text(app, selector: str) -> str:
    """The plain text a Static shows."""
    from textual.widgets import Static

    return str(app.query_one(selector, Static).content)
