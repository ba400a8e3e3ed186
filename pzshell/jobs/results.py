"""The one ``results.json`` schema: every job writes through :func:`write_results`, and
``pzshell report``, the benchmarks and the terminal app read through :func:`read_results`.

A results dict is flat JSON. Fields every job writes:

``schema`` (1), ``job`` (prune | eval | finetune | structured), ``model``, ``model_source``,
``device``, ``method`` (``dense``, ``magnitude``, ``wanda``, ``sparsegpt``, ``metric``,
``metric+reconstruct``, ``structured``, ...), ``sparsity_ratio`` (0 for a dense model),
``sparsity_type`` (``unstructured``, ``N:M`` or ``structured``; a dense model is
``unstructured`` at ratio 0: the field always names a pattern), ``load_seconds``, ``peak_rss_mb``,
``torch_threads``. Jobs since the fields were added also write ``model_fingerprint`` (a hash of
the weights and the tokenizer as loaded, :meth:`LoadedModel.fingerprint`) and ``versions``
(Python, torch, transformers, pzshell, tokenizers, gguf, safetensors, numpy): the same model
file can give other perplexities under other versions, so a figure is only comparable with one
that shares both. ``eval_fingerprint`` and ``calib_fingerprint`` hash the token ids that were
measured and calibrated on: equal ones mean the same tokens.

Perplexity fields come as a group: ``ppl`` (the job's resulting model) and ``eval_nll``, with
``eval_data``, ``eval_seqlen``, ``eval_windows``, ``eval_tokens`` and ``eval_fingerprint`` naming
what was measured and ``eval_window_nll`` (each window's mean NLL, for paired comparisons);
``ppl_dense`` (structured: before pruning) and ``ppl_after_finetune`` / ``eval_nll_after_finetune``
(after recovery) are measured on the same windows. Calibration is named by ``calib_data``,
``nsamples``, ``seqlen`` and ``seed``.

Files written before this schema (no ``schema`` field) are read too: they are normalised on
reading (structured ``ppl_before``/``ppl_after``/``nll`` and a dense ``sparsity_type`` of
``dense``), so old run directories still report.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .. import atomic
from ..errors import PzError

SCHEMA = 1
JOBS = ("prune", "eval", "finetune", "structured")

_NUM = (int, float)
# field -> (accepted types, jobs that must write it: "*" all, () optional)
FIELDS: dict[str, tuple[tuple[type, ...], tuple[str, ...] | str]] = {
    "schema": ((int,), "*"),
    "job": ((str,), "*"),
    "model": ((str,), "*"),
    "model_source": ((str,), "*"),
    "model_fingerprint": ((str,), ()),
    "versions": ((dict,), ()),
    "device": ((str,), "*"),
    "method": ((str,), "*"),
    "sparsity_ratio": (_NUM, "*"),
    "sparsity_type": ((str,), "*"),
    "load_seconds": (_NUM, "*"),
    "peak_rss_mb": (_NUM, "*"),
    "torch_threads": ((int,), "*"),
    "actual_sparsity": (_NUM, ("prune", "eval", "finetune")),
    "metric": ((str, type(None)), ()),
    "use_variant": ((bool,), ()),
    "pruned_fraction": (_NUM, ()),
    "allocation": ((str,), ()),
    "block_sparsity": ((list,), ()),
    "block_sparsity_achieved": ((list,), ()),
    "block_outliers": ((list,), ()),
    "block_angular": ((list,), ()),
    "owl_m": (_NUM, ()),
    "owl_lambda": (_NUM, ()),
    "allocation_seconds": (_NUM, ()),
    "refine": ((str,), ()),
    "refine_swaps": ((int,), ()),
    "refit": ((int,), ()),
    "refit_error_median": ((*_NUM, type(None)), ()),
    "dsnot_cycles": ((int,), ()),
    "dsnot_threshold": (_NUM, ()),
    "swap_rounds": ((int,), ()),
    "swap_shortlist": ((int,), ()),
    "refine_error_median": ((*_NUM, type(None)), ()),
    "nsamples": ((int,), ("prune", "structured")),
    "seqlen": ((int,), ("prune", "structured")),
    "seed": ((int,), ("prune", "structured")),
    "calib_data": ((str, type(None)), ("prune", "structured")),
    "calib_fingerprint": ((str, type(None)), ()),
    "gradient_path": ((str, type(None)), ()),
    "gradient_fingerprint": ((str, type(None)), ()),
    "grad_seconds": (_NUM, ()),
    "prune_seconds": (_NUM, ("prune", "structured")),
    "stats_seconds": (_NUM, ()),
    "layers": ((list,), ()),
    "ppl": (_NUM, ()),
    "eval_nll": (_NUM, ()),
    "ppl_dense": (_NUM, ()),
    "eval_nll_dense": (_NUM, ()),
    "ppl_after_finetune": (_NUM, ()),
    "eval_nll_after_finetune": (_NUM, ()),
    "eval_data": ((str,), ()),
    "eval_seqlen": ((int,), ()),
    "eval_windows": ((int,), ()),
    "eval_tokens": ((int,), ()),
    "eval_fingerprint": ((str,), ()),
    "eval_window_nll": ((list,), ()),
    "eval_seconds": (_NUM, ()),
    "tokens_per_s": (_NUM, ()),
    "tokens_per_s_dense": (_NUM, ()),
    "tokens_per_s_after_finetune": (_NUM, ()),
    "zero_shot": ((dict,), ()),
    "zero_shot_mean": (_NUM, ()),
    "zero_shot_after_finetune": ((dict,), ()),
    "zero_shot_mean_after_finetune": (_NUM, ()),
    "finetune": ((dict,), ()),
    "sparsity_before_finetune": (_NUM, ()),
    "sparsity_after_finetune": (_NUM, ()),
    # structured
    "importance": ((str,), ("structured",)),
    "pruning_strategy": ((str,), ("structured",)),
    "pruning_ratio": (_NUM, ("structured",)),
    "achieved_ratio": (_NUM, ("structured",)),
    "params_before": ((int,), ("structured",)),
    "params_after": ((int,), ("structured",)),
    "model_params_before": ((int,), ()),
    "model_params_after": ((int,), ()),
    "pruning_distribution": ((list, type(None)), ()),
    "by_kind": ((dict,), ()),
    "removed_blocks": ((list,), ()),
    "num_blocks_after": ((int,), ()),
    "frozen_blocks": ((list,), ()),
    "layer_importance": ((str,), ()),
    "structured": ((bool, dict), ()),
    "base_model": ((str, type(None)), ()),
    "base_model_source": ((str, type(None)), ()),
    "finetuned": ((str, type(None)), ()),
    "model_dir": ((str,), ()),
    "warning": ((str,), ()),
}
EVAL_GROUP = ("eval_data", "eval_seqlen", "eval_windows", "eval_tokens")
_PPL_FIELDS = ("ppl", "ppl_dense", "ppl_after_finetune")
_NM = re.compile(r"^\d+:\d+$")
# pre-schema names -> current names
_LEGACY = {
    "ppl_before": "ppl_dense",
    "ppl_after": "ppl",
    "nll": "eval_nll",
    "tokens_per_s_before": "tokens_per_s_dense",
    "tokens_per_s_after": "tokens_per_s",
}


class ResultsError(PzError):
    pass


def _type_name(types: tuple[type, ...]) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true/false",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }
    if set(types) >= {int, float}:
        types = tuple(t for t in types if t is not int)
    return " or ".join(names.get(t, t.__name__) for t in types)


def problems(results: dict) -> list[str]:
    """Everything wrong with ``results`` against the schema (empty: valid)."""
    if not isinstance(results, dict):
        return [f"expected a JSON object, got {type(results).__name__}"]
    out = []
    job = results.get("job")
    if job not in JOBS:
        out.append(f"field 'job': expected one of {', '.join(JOBS)}, got {job!r}")
    for name, (types, required) in FIELDS.items():
        if name not in results:
            if required == "*" or (job in required):
                out.append(f"field '{name}' is missing")
            continue
        v = results[name]
        ok = isinstance(v, types) and not (isinstance(v, bool) and bool not in types)
        if not ok:
            out.append(
                f"field '{name}': expected {_type_name(types)}, got {json.dumps(v)[:40]} "
                f"({type(v).__name__})"
            )
    if "ppl" in results or "eval_nll" in results:
        out += [
            f"field '{k}' is missing (perplexity must name its data)"
            for k in EVAL_GROUP
            if k not in results
        ]
    for k in _PPL_FIELDS:
        v = results.get(k)
        if isinstance(v, _NUM) and not isinstance(v, bool) and not (v >= 1 or math.isnan(v)):
            out.append(f"field '{k}': a perplexity is >= 1, got {v}")
    out += _nested_problems(results)
    st = results.get("sparsity_type")
    if isinstance(st, str) and st not in ("unstructured", "structured") and not _NM.match(st):
        out.append(f"field 'sparsity_type': expected unstructured, structured or N:M, got '{st}'")
    r = results.get("sparsity_ratio")
    if isinstance(r, _NUM) and not isinstance(r, bool) and not 0 <= r < 1:
        out.append(f"field 'sparsity_ratio': expected a fraction in [0, 1), got {r}")
    return out


_TASK_NUMBERS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", "n_total")


def _is_num(v) -> bool:
    return isinstance(v, _NUM) and not isinstance(v, bool)


def _nested_problems(results: dict) -> list[str]:
    """The numbers inside the lists and objects that readers compute with: each ``layers`` row
    and each zero-shot task's accuracies and counts."""
    out = []
    layers = results.get("layers")
    if isinstance(layers, list):
        for i, row in enumerate(layers):
            if not isinstance(row, dict):
                out.append(f"field 'layers[{i}]': expected an object, got {type(row).__name__}")
                continue
            for k in ("block", "pruned"):
                if k in row and not (isinstance(row[k], int) and not isinstance(row[k], bool)):
                    out.append(f"field 'layers[{i}].{k}': expected an integer, got {row[k]!r}")
            if "sparsity" in row and not _is_num(row["sparsity"]):
                out.append(
                    f"field 'layers[{i}].sparsity': expected a number, got {row['sparsity']!r}"
                )
            for k in ("refine_error", "refit_error"):  # ratios, null where not refined/refitted
                if row.get(k) is not None and not _is_num(row[k]):
                    out.append(
                        f"field 'layers[{i}].{k}': expected a number or null, got {row[k]!r}"
                    )
            shape = row.get("shape")
            if shape is not None and not (
                isinstance(shape, (list, tuple)) and all(isinstance(x, int) for x in shape)
            ):
                out.append(f"field 'layers[{i}].shape': expected a list of integers, got {shape!r}")
            if len(out) >= 5:
                break
    for key in ("zero_shot", "zero_shot_after_finetune"):
        zs = results.get(key)
        if not isinstance(zs, dict):
            continue
        if "mean_acc" in zs and zs["mean_acc"] is not None and not _is_num(zs["mean_acc"]):
            out.append(f"field '{key}.mean_acc': expected a number, got {zs['mean_acc']!r}")
        tasks = zs.get("tasks", {})
        if not isinstance(tasks, dict):
            out.append(f"field '{key}.tasks': expected an object, got {type(tasks).__name__}")
            continue
        for name, t in tasks.items():
            if not isinstance(t, dict):
                out.append(f"field '{key}.tasks.{name}': expected an object")
                continue
            for k, v in t.items():
                if k in _TASK_NUMBERS and v is not None and not _is_num(v):
                    out.append(f"field '{key}.tasks.{name}.{k}': expected a number, got {v!r}")
    return out


def validate(results: dict, where: str = "results") -> dict:
    errs = problems(results)
    if errs:
        raise ResultsError(f"{where}: not a valid pzshell results.json: " + "; ".join(errs))
    return results


def finish(results: dict, job: str) -> dict:
    """Stamp ``results`` with the schema version and job kind (key order kept readable) and
    validate it: a job that writes a wrong field is a bug, caught by the tests."""
    out = {"schema": SCHEMA, "job": job}
    out.update({k: v for k, v in results.items() if k not in out})
    return validate(out, f"{job} job")


def normalise(data: dict) -> dict:
    """A pre-schema results dict in today's names (a current one is returned as is)."""
    if not isinstance(data, dict) or "schema" in data:
        return data
    d = {_LEGACY.get(k, k): v for k, v in data.items()}
    if "importance" in data and "pruning_ratio" in data:
        d.setdefault("job", "structured")
        d.setdefault("method", "structured")
        d.setdefault("sparsity_type", "structured")
        d.setdefault("sparsity_ratio", data.get("achieved_ratio", data["pruning_ratio"]))
        if "ppl" in d and "eval_nll" not in d:
            ppl = d["ppl"]
            if _is_num(ppl):  # anything else is reported by validate(), with its field
                d["eval_nll"] = math.log(ppl) if ppl > 0 else float("nan")
    elif "layers" in data and "prune_seconds" in data:
        d.setdefault("job", "prune")
    elif "finetune" in data:
        d.setdefault("job", "finetune")
    else:
        d.setdefault("job", "eval")
    if d.get("sparsity_type") == "dense":
        d["sparsity_type"] = "unstructured"
    d.setdefault("method", "dense")
    d.setdefault("sparsity_ratio", 0.0)
    d.setdefault("sparsity_type", "unstructured")
    for k, default in (
        ("model_source", "?"),
        ("device", "?"),
        ("load_seconds", 0.0),
        ("peak_rss_mb", 0.0),
        ("torch_threads", 0),
    ):
        d.setdefault(k, default)
    d["schema"] = SCHEMA
    return d


def write_results(path: str | Path, results: dict) -> Path:
    """Validate and write atomically (a failed write leaves the previous file intact)."""
    validate(results, str(path))
    atomic.write_json(path, results)
    return Path(path)


def read_results(path: str | Path) -> dict:
    """Read, normalise and validate one ``results.json``; any problem is a
    :class:`ResultsError` naming the file and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ResultsError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:
        raise ResultsError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ResultsError(
            f"{path}: not a pzshell results.json (expected a JSON object, got "
            f"{type(data).__name__})"
        )
    return validate(normalise(data), str(path))
