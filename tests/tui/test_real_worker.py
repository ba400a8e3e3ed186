"""End to end with the real worker process (spawned) on the in-memory ``tiny`` model."""

from __future__ import annotations

import math

import pytest

from pzshell.tui.store import AppSettings
from pzshell.worker import RunProgress, WorkerClient
from pzshell.worker.protocol import RunSettings

from .conftest import wait_for, worker_events

pytestmark = pytest.mark.asyncio


async def test_run_a_formula_end_to_end_on_tiny(make_app, tmp_path):
    client = WorkerClient(tmp_path / "worker.log")
    settings = AppSettings(
        run=RunSettings(model="tiny", nsamples=2, seqlen=64, eval_windows=2, device="cpu"),
        auto_reference=False,
    )
    seen: list = []
    app = make_app(settings, formula="abs(W*W)*mms(G)", client=client)
    async with app.run_test(message_hook=seen.append) as pilot:
        await wait_for(
            pilot, lambda: app.device.startswith("cpu"), timeout=120, what="the worker process"
        )
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.store.results, timeout=180, what="the perplexity")
        row = app.store.results[0]
        assert row["formula"] == "abs(W*W)*mms(G)" and row["kind"] == "metric"
        assert math.isfinite(row["ppl"]) and row["ppl"] > 1
        assert row["eval_windows"] == 2 and row["eval_seqlen"] == 64
        assert row["actual_sparsity"] == pytest.approx(0.5, abs=0.01)
        stages = {x.stage for x in worker_events(seen, RunProgress)}
        assert {"load", "grad", "prune", "eval"} <= stages
        pid = client.pid
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: not app.is_running, timeout=60, what="the exit")
    assert not client.alive and pid is not None


@pytest.mark.smollm2
async def test_run_a_formula_on_smollm2(make_app, tmp_path):
    """The real worker process on the real default model: the Pruner-Zero tree at 50%."""
    client = WorkerClient(tmp_path / "worker.log")
    settings = AppSettings(
        run=RunSettings(
            model="smollm2", nsamples=2, seqlen=64, eval_seqlen=128, eval_windows=1, device="cpu"
        ),
        auto_reference=False,
    )
    app = make_app(settings, formula="abs(W*W)*mms(G)", client=client)
    async with app.run_test() as pilot:
        await wait_for(
            pilot, lambda: app.device.startswith("cpu"), timeout=120, what="the worker process"
        )
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.store.results, timeout=300, what="the perplexity")
        row = app.store.results[0]
        assert row["model"] == "smollm2" and row["eval_tokens"] == 128
        assert row["actual_sparsity"] == pytest.approx(0.5, abs=0.01)
        assert math.isfinite(row["ppl"]) and 5 < row["ppl"] < 5000
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: not app.is_running, timeout=60, what="the exit")
    assert not client.alive
