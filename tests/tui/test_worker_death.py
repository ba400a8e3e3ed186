"""The worker dies (OOM kill, crash): the app says what happened, starts a new worker and
keeps its queue, results, settings and search."""

from __future__ import annotations

import pytest

from pzshell.tui.session import SearchState
from pzshell.worker import protocol as p

from .conftest import static_text, wait_for, worker_events
from .fake_worker import FakeWorker

pytestmark = pytest.mark.asyncio


async def test_worker_death_restarts_and_keeps_state(make_app):
    fake = FakeWorker(hold=True)
    seen: list = []
    app = make_app(formula="W", client=fake)
    async with app.run_test(message_hook=seen.append, notifications=True) as pilot:
        await wait_for(pilot, lambda: app.device != "starting …", what="the worker")
        # one finished result, then a run in flight, one queued, and a running search
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.queue.active is not None, what="the run")
        fake.finish(app.queue.active.id)
        await wait_for(pilot, lambda: len(app.store.results) == 1, what="a result")
        lost = app.queue.active
        app.action_search_start()
        await wait_for(pilot, lambda: app.search_state is SearchState.RUNNING, what="the search")
        settings = app.settings

        fake.die(-9)  # SIGKILL, as the OOM killer does
        await wait_for(pilot, lambda: worker_events(seen, p.WorkerExited), what="the death")
        died = worker_events(seen, p.WorkerExited)[0]
        assert "killed (SIGKILL; out of memory" in died.reason
        await wait_for(pilot, lambda: fake.generation == 2 and fake.alive, what="the restart")
        await wait_for(pilot, lambda: app.device == "fake (no model)", what="the new worker")
        # a notice reaches app._notifications when its Notify message is handled, later
        await wait_for(
            pilot,
            lambda: "killed" in _notices(app) and "Starting a new worker" in _notices(app),
            what="the notices of the death and the restart",
        )
        # the run in flight is reported lost (not retried), the queued one goes to the new worker
        assert app.queue.get(lost.id) is None
        assert "lost" in static_text(app, "#last-result")
        new_jobs = [j for j in fake.jobs if isinstance(j, p.PruneRequest)]
        assert new_jobs[-1].kind == "wanda" and new_jobs[-1].run_id != lost.id
        # results, settings and the search directory are kept; the search can be continued
        assert len(app.store.results) == 1
        assert app.settings is settings
        assert app.search_state is SearchState.STOPPED
        assert app.store.last_search["status"] == "interrupted"
        assert "press c to continue" in static_text(app, "#search-status")


async def test_a_worker_that_keeps_dying_is_not_restarted_forever(make_app):
    class Doomed(FakeWorker):
        def start(self):
            super().start()
            self.events.get_nowait()  # never says it is ready
            self.die(1)

    fake = Doomed()
    app = make_app(client=fake)
    async with app.run_test(notifications=True) as pilot:
        await wait_for(pilot, lambda: app.device == "stopped", what="giving up")
        assert fake.generation == 4  # the first start and three restarts
        await wait_for(pilot, lambda: "keeps dying" in _notices(app), what="the give-up notice")
        await pilot.press("f9")  # by hand: tries again
        await wait_for(pilot, lambda: fake.generation >= 5, what="a manual restart")


def _notices(app) -> str:
    """Every notice the app has shown so far, as one string."""
    return " ".join(n.message for n in app._notifications)
