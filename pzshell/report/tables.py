"""The report's Markdown tables: one row per run (model, data, window length, tokens, sparsity,
seed named on every row), and zero-shot accuracy per task."""

from __future__ import annotations

import math
from pathlib import Path

from .runs import SavedRun


def _f(v, fmt: str = ".3f") -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return format(v, fmt)
    return "-"


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def data_name(name) -> str:
    """``/a/b/wiki.test.raw`` -> ``wiki.test.raw``; ``builtin:eval (pydoc_data topics)`` ->
    ``builtin:eval``."""
    text = str(name)
    return Path(text).name if "/" in text else text.split(" (")[0]


def _eval_desc(r: SavedRun) -> str:
    if r.get("ppl") is None and r.get("ppl_after_finetune") is None:
        return "-"
    return (
        f"{data_name(r.get('eval_data', '?'))}: {r.get('eval_windows', '?')}x"
        f"{r.get('eval_seqlen', '?')}={r.get('eval_tokens', '?')}"
    )


def _calib_desc(r: SavedRun) -> str:
    parts = []
    if r.get("calib_data") and r.get("nsamples"):
        parts.append(f"{data_name(r.get('calib_data'))}: {r.get('nsamples')}x{r.get('seqlen')}")
    if r.get("gradient_path") and r.get("metric") and "G" in str(r.get("metric")):
        # a W/G-only metric needs no calibration pass: its data came in with the G file
        parts.append(f"G from {Path(r.get('gradient_path')).name}")
    return "; ".join(parts) or "-"


def _ft_desc(r: SavedRun) -> str:
    ft = r.get("finetune")
    if not ft:
        return "-"
    how = f"LoRA r{ft.get('r')}" if ft.get("method") == "lora" else ft.get("method", "?")
    return f"{how}, {ft.get('samples')}x{ft.get('seqlen')}, {ft.get('steps')} steps"


def _method(r: SavedRun) -> str:
    m = str(r.get("method", "?")) + r.options  # ", owl", ", swaps": how the mask was made
    return m + (f" + {r.get('finetuned')}" if r.get("finetuned") else "")


COLUMNS = (
    "run",
    "model",
    "method",
    "metric",
    "sparsity",
    "type",
    "achieved",
    "ppl",
    "ppl after finetune",
    "zero-shot mean",
    "zero-shot mean after finetune",
    "eval data",
    "calibration",
    "finetune",
    "seed",
)


def table_rows(runs: list[SavedRun]) -> list[list[str]]:
    rows = []
    for r in runs:
        metric = r.get("metric") if r.get("metric") else "-"
        rows.append(
            [
                r.name,
                r.model,
                _method(r),
                metric,
                _f(r.get("sparsity_ratio"), ".2f"),
                str(r.get("sparsity_type", "-")),
                _f(r.get("actual_sparsity"), ".4f"),
                _f(r.get("ppl")),
                _f(r.get("ppl_after_finetune")),
                _f(r.get("zero_shot_mean"), ".4f"),
                _f(r.get("zero_shot_mean_after_finetune"), ".4f"),
                _eval_desc(r),
                _calib_desc(r),
                _ft_desc(r),
                str(r.get("seed", "-")),
            ]
        )
    return rows


def markdown_table(runs: list[SavedRun]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in table_rows(runs):
        lines.append("| " + " | ".join(_md(c) for c in row) + " |")
    return "\n".join(lines)


def zero_shot_table(runs: list[SavedRun]) -> str | None:
    """Per-task accuracy (± standard error) of every run that has zero-shot results."""
    entries = zero_shot_entries(runs)
    if not entries:
        return None
    tasks = sorted({t for _, zs in entries for t in zs["tasks"]})
    lines = ["| run | " + " | ".join(tasks) + " | mean |", "|---" * (len(tasks) + 2) + "|"]
    for label, zs in entries:
        cells = []
        for t in tasks:
            res = zs["tasks"].get(t)
            cells.append(
                "-"
                if not res or res.get("acc") is None
                else f"{res['acc']:.4f} ± {_f(res.get('acc_stderr'), '.4f')} (n={res.get('n')})"
            )
        lines.append(f"| {_md(label)} | " + " | ".join(cells) + f" | {_f(zs.get('mean_acc'))} |")
    return "\n".join(lines)


def zero_shot_entries(runs: list[SavedRun]) -> list[tuple[str, dict]]:
    out = []
    for r in runs:
        for suffix, tag in (("", ""), ("_after_finetune", " + finetune")):
            zs = r.get(f"zero_shot{suffix}")
            if zs and zs.get("tasks"):
                name = r.label if r.name == r.label else f"{r.name}: {r.label}"
                out.append((name + tag, zs))
    return out
