"""The one results schema: every job's results.json passes it, readers go through it, and a
wrong file gets an error that names the file and the field."""

from __future__ import annotations

import json
import math

import pytest

from pzshell.cli import main
from pzshell.jobs import ResultsError, read_results, write_results
from pzshell.jobs.results import normalise, problems, validate

EVAL = ["--eval", "builtin", "--eval_seqlen", "32", "--eval_windows", "2"]
CAL = ["--nsamples", "2", "--seqlen", "32"]


def _saved(tmp_path, name, argv) -> dict:
    d = tmp_path / name
    assert main([*argv, "--save", str(d)]) == 0
    res = read_results(d / "results.json")
    assert not problems(res)
    return res


def test_every_job_writes_the_schema(tmp_path):
    """prune (+ finetune), eval of the dense and of the saved model, finetune, structured: one
    schema, one set of names for the same things."""
    pruned = tmp_path / "model"
    prune = _saved(
        tmp_path,
        "prune",
        [
            "prune",
            "--model",
            "tiny",
            "--prune_method",
            "wanda",
            *CAL,
            *EVAL,
            "--save_model",
            str(pruned),
        ],
    )
    dense = _saved(tmp_path, "dense", ["eval", "--model", "tiny", *EVAL])
    again = _saved(tmp_path, "again", ["eval", "--model", str(pruned), *EVAL])
    ft = _saved(
        tmp_path,
        "ft",
        [
            "finetune",
            "--model",
            str(pruned),
            "--finetune_samples",
            "2",
            "--finetune_seqlen",
            "16",
            *EVAL,
        ],
    )
    st = _saved(
        tmp_path,
        "st",
        [
            "structured",
            "--model",
            "tiny",
            "--pruning_ratio",
            "0.25",
            "--num_samples",
            "2",
            "--seqlen",
            "32",
            "--test_after_prune",
            "--speed_windows",
            "0",
            *EVAL,
        ],
    )
    assert [r["job"] for r in (prune, dense, again, ft, st)] == [
        "prune",
        "eval",
        "eval",
        "finetune",
        "structured",
    ]
    # a dense model: method dense, ratio 0, and a sparsity *pattern* (never "dense")
    assert (dense["method"], dense["sparsity_ratio"], dense["sparsity_type"]) == (
        "dense",
        0.0,
        "unstructured",
    )
    assert again["method"] == "wanda" and again["sparsity_type"] == "unstructured"
    # perplexity: the same names in every job, with what it was measured on
    for r in (prune, dense, again, st):
        assert r["ppl"] >= 1 and math.isclose(r["ppl"], math.exp(r["eval_nll"]), rel_tol=1e-6)
        assert (r["eval_seqlen"], r["eval_windows"], r["eval_tokens"]) == (32, 2, 64)
        # each window's NLL, for paired comparisons: equal windows, so their mean is the NLL
        per = r["eval_window_nll"]
        assert len(per) == 2 and math.isclose(sum(per) / 2, r["eval_nll"], rel_tol=1e-5)
    assert math.isclose(again["ppl"], prune["ppl"], rel_tol=1e-5)
    assert "ppl_after_finetune" in ft and "eval_nll_after_finetune" in ft
    assert st["ppl_dense"] < st["ppl"] * 10 and "ppl_before" not in st
    assert st["sparsity_type"] == "structured" and st["method"] == "structured"
    # one fine-tuning default for LoRA everywhere
    assert ft["finetune"]["lr"] == 2e-4
    # what a figure was computed on and with: the weights as loaded (the dense tiny for the
    # prune, the structured job and the dense eval; the saved pruned weights for their eval)
    # and the versions of Python, torch, transformers and pzshell
    import torch
    import transformers

    from pzshell.models import load_model

    tiny = load_model("tiny").fingerprint()
    assert prune["model_fingerprint"] == dense["model_fingerprint"] == st["model_fingerprint"]
    assert prune["model_fingerprint"] == tiny != again["model_fingerprint"]
    assert again["model_fingerprint"] == load_model(str(pruned)).fingerprint()
    assert ft["model_fingerprint"] == again["model_fingerprint"]  # before its fine-tuning
    for r in (prune, dense, again, ft, st):
        v = r["versions"]
        assert v["torch"] == torch.__version__ and v["transformers"] == transformers.__version__
        assert v["pzshell"] != "?" and v["python"].count(".") == 2
        assert v["tokenizers"] != "?" and v["safetensors"] != "?" and v["numpy"] != "?"
        assert v["cpu"].endswith(torch.backends.cpu.get_cpu_capability())
    # the tokens measured on: one hash for the same evaluation windows in every job
    fps = {r["eval_fingerprint"] for r in (prune, dense, again, st)}
    assert len(fps) == 1 and len(fps.pop()) == 16
    assert len(prune["calib_fingerprint"]) == 16


def test_structured_finetune_uses_the_shared_defaults(tmp_path):
    st = _saved(
        tmp_path,
        "st",
        [
            "structured",
            "--model",
            "tiny",
            "--pruning_ratio",
            "0.25",
            "--num_samples",
            "2",
            "--seqlen",
            "32",
            "--finetune",
            "--finetune_method",
            "full",
            "--finetune_samples",
            "2",
        ],
    )
    assert st["finetune"]["method"] == "full" and st["finetune"]["lr"] == 1e-5


def test_worker_rows_follow_the_schema(tiny):
    """The terminal app's runs (dense reference and metric) go through the same jobs."""
    from pzshell.jobs import EvalJob, PruneJob, run_eval, run_prune
    from pzshell.worker.process import specs_of
    from pzshell.worker.protocol import RunSettings

    s = RunSettings(model="tiny", nsamples=2, seqlen=32, eval_windows=2, device="cpu")
    model, calib, ev = specs_of(s)
    _, dense = run_eval(EvalJob(model, ev), lm=tiny)
    assert validate(dense)["job"] == "eval" and dense["sparsity_type"] == "unstructured"
    _, pruned = run_prune(PruneJob(method="magnitude", model=model, calib=calib, eval=ev), lm=tiny)
    assert validate(pruned)["job"] == "prune"


def _good() -> dict:
    return {
        "schema": 1,
        "job": "eval",
        "model": "tiny",
        "model_source": "x",
        "device": "cpu",
        "method": "dense",
        "sparsity_ratio": 0.0,
        "sparsity_type": "unstructured",
        "actual_sparsity": 0.0,
        "load_seconds": 0.1,
        "peak_rss_mb": 1.0,
        "torch_threads": 2,
        "ppl": 12.5,
        "eval_nll": math.log(12.5),
        "eval_data": "builtin",
        "eval_seqlen": 32,
        "eval_windows": 2,
        "eval_tokens": 64,
    }


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"ppl": "12.5"}, "field 'ppl': expected a number, got \"12.5\" (str)"),
        ({"job": "nope"}, "field 'job'"),
        ({"sparsity_type": "dense"}, "expected unstructured, structured or N:M"),
        ({"sparsity_ratio": 1.5}, "fraction in [0, 1)"),
        ({"ppl": 0.5}, "a perplexity is >= 1"),
        ({"eval_tokens": None}, "field 'eval_tokens'"),
        ({"torch_threads": True}, "field 'torch_threads'"),
    ],
)
def test_bad_fields_are_named(tmp_path, change, says):
    bad = {**_good(), **change}
    f = tmp_path / "results.json"
    f.write_text(json.dumps(bad))
    with pytest.raises(ResultsError) as e:
        read_results(f)
    assert str(f) in str(e.value) and says in str(e.value)


def test_missing_eval_fields_and_non_objects(tmp_path):
    r = _good()
    del r["eval_tokens"]
    assert any("eval_tokens" in p for p in problems(r))
    f = tmp_path / "results.json"
    f.write_text("[1, 2]")
    with pytest.raises(ResultsError, match=r"expected a JSON object, got list"):
        read_results(f)
    f.write_text("{not json")
    with pytest.raises(ResultsError, match="not valid JSON"):
        read_results(f)


def test_write_refuses_invalid_and_keeps_the_old_file(tmp_path):
    f = tmp_path / "results.json"
    write_results(f, _good())
    before = f.read_bytes()
    with pytest.raises(ResultsError):
        write_results(f, {**_good(), "ppl": "x"})
    assert f.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left


def test_pre_schema_files_are_normalised():
    """Run directories written before the schema still report: structured names and a dense
    sparsity_type of "dense" are translated."""
    old_structured = {
        "model": "smollm2",
        "model_source": "s",
        "importance": "taylor",
        "pruning_ratio": 0.2,
        "pruning_strategy": "global",
        "achieved_ratio": 0.2,
        "params_before": 10,
        "params_after": 8,
        "nsamples": 2,
        "seqlen": 32,
        "seed": 0,
        "calib_data": "builtin",
        "prune_seconds": 1.0,
        "ppl_before": 10.0,
        "ppl_after": 20.0,
        "nll": math.log(20.0),
        "eval_data": "b",
        "eval_seqlen": 32,
        "eval_windows": 1,
        "eval_tokens": 32,
    }
    n = validate(normalise(old_structured))
    assert (n["job"], n["ppl_dense"], n["ppl"], n["sparsity_type"]) == (
        "structured",
        10.0,
        20.0,
        "structured",
    )
    old_dense = {**_good(), "sparsity_type": "dense"}
    del old_dense["schema"], old_dense["job"]
    n = validate(normalise(old_dense))
    assert n["sparsity_type"] == "unstructured" and n["job"] == "eval"
