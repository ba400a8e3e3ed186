"""Zero-shot accuracy through lm-eval: pzshell's offline task end to end, hub tasks offline."""

from __future__ import annotations

import json
import time

import pytest

from pzshell.cli import main
from pzshell.evaluate import zeroshot
from pzshell.evaluate.zeroshot import (
    LOCAL_TASK,
    ZeroShotError,
    evaluate_zero_shot,
    local_tasks,
    parse_tasks,
    prepare_tasks,
)


def test_local_task_data_is_well_formed():
    from pzshell.evaluate.tasks.pzshell_mc.loader import read_items

    assert set(local_tasks()) == {LOCAL_TASK}
    items = read_items()
    assert 40 <= len(items) <= 100
    assert len({it["question"] for it in items}) == len(items)
    assert len({it["id"] for it in items}) == len(items)
    for it in items:
        assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4
        assert 0 <= it["answer"] < 4
    # the correct answer is spread over the positions (no position bias to exploit)
    counts = [sum(it["answer"] == k for it in items) for k in range(4)]
    assert max(counts) - min(counts) <= 1


def test_parse_tasks():
    assert parse_tasks(" boolq, rte,boolq ,") == ["boolq", "rte"]
    with pytest.raises(ZeroShotError):
        parse_tasks(" , ")


def test_local_task_end_to_end_on_tiny(tiny):
    events = []
    res = evaluate_zero_shot(
        tiny.model, tiny.tokenizer, LOCAL_TASK, limit=6, batch_size=4, progress=events.append
    )
    r = res["tasks"][LOCAL_TASK]
    assert r["n"] == 6 and r["n_total"] == 64
    for key in ("acc", "acc_norm"):
        assert 0.0 <= r[key] <= 1.0
        assert r[f"{key}_stderr"] is not None and r[f"{key}_stderr"] >= 0
    assert res["mean_acc"] == r["acc"]
    assert res["num_fewshot"] == 0 and res["limit"] == 6
    json.dumps(res)  # results.json-ready
    # lm-eval's loglikelihood requests are reported as our own progress events: 4 per item
    assert events[-1].stage == "zero-shot" and events[-1].done == events[-1].total == 24
    assert not tiny.model.training


def test_hub_task_offline_fails_fast(monkeypatch):
    monkeypatch.setattr(zeroshot, "hub_reachable", lambda timeout=3.0: False)
    t = time.perf_counter()
    with pytest.raises(ZeroShotError, match=r"boolq.*hub.*not reachable.*--tasks pzshell_mc"):
        prepare_tasks("boolq,pzshell_mc")
    assert time.perf_counter() - t < 20


def test_hub_task_offline_with_a_cache_gets_offline_mode(monkeypatch):
    """With something in the datasets cache, the task is tried in offline mode: still an
    immediate, clear error (no minute of retries) when the data set is not there."""
    monkeypatch.setattr(zeroshot, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(zeroshot, "_hub_cache_has_datasets", lambda: True)
    t = time.perf_counter()
    with pytest.raises(ZeroShotError, match=r"not reachable.*not in the local datasets cache"):
        prepare_tasks("rte")
    assert time.perf_counter() - t < 60


def test_hub_reachable_respects_offline_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert zeroshot.hub_reachable() is False


def test_cli_eval_offline_hub_task_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(zeroshot, "hub_reachable", lambda timeout=3.0: False)
    t = time.perf_counter()
    assert main(["eval", "--model", "tiny", "--tasks", "hellaswag", "--eval", "none"]) == 2
    err = capsys.readouterr().err
    assert "hellaswag" in err and "hub" in err and "pzshell_mc" in err
    assert "Traceback" not in err
    assert time.perf_counter() - t < 20


def test_cli_eval_saves_results(tmp_path):
    out = tmp_path / "dense"
    rc = main(
        [
            "eval",
            "--model",
            "tiny",
            "--eval-seqlen",
            "64",
            "--eval-windows",
            "2",
            "--tasks",
            "pzshell_mc",
            "--zero_shot_limit",
            "4",
            "--save",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["model"] == "tiny" and res["method"] == "dense"
    assert res["eval_seqlen"] == 64 and res["eval_windows"] == 2 and res["eval_tokens"] == 128
    assert res["ppl"] > 1 and res["eval_data"].startswith("builtin")
    assert res["zero_shot"]["tasks"][LOCAL_TASK]["n"] == 4
    assert res["zero_shot_mean"] == res["zero_shot"]["tasks"][LOCAL_TASK]["acc"]


@pytest.mark.smollm2
def test_local_task_on_smollm2(smollm2):
    # all 64 items (~20 s on 2 cores): a slice of 8 is too small to say anything (it scores 3/8)
    res = evaluate_zero_shot(smollm2.model, smollm2.tokenizer, LOCAL_TASK, batch_size=8)
    r = res["tasks"][LOCAL_TASK]
    assert r["n"] == r["n_total"] == 64
    # the dense model knows these everyday facts (measured 49/64 = 76.6%; chance is 25%)
    assert r["acc"] >= 0.6 and 0 < r["acc_stderr"] < 0.1


def test_an_unknown_task_is_named_not_the_hub(monkeypatch):
    """`--tasks no_such_task` used to blame the unreachable hub."""
    monkeypatch.setattr(zeroshot, "hub_reachable", lambda timeout=0: False)
    monkeypatch.setattr(zeroshot, "_hub_cache_has_datasets", lambda: False)
    with pytest.raises(ZeroShotError, match="unknown zero-shot task\\(s\\): no_such_task") as e:
        prepare_tasks("no_such_task")
    assert "hub" not in str(e.value).split(".")[0]
