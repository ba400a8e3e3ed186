"""Comparison reports: runs' ``results.json`` files -> a Markdown table and PNG plots.

A *run* is any ``results.json`` written by ``pzshell prune``, ``pzshell eval`` or
``pzshell finetune`` (found recursively under the given directories). The plots use matplotlib's
object API on an Agg canvas (no pyplot state, no display needed):

* perplexity per method at each sparsity (log y; dashed: after recovery fine-tuning), one figure
  per model and evaluation data, so every curve is comparable with its neighbours;
* per-block sparsity (from the runs' ``layers``);
* zero-shot accuracy per task, with standard-error bars.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from . import atomic
from .errors import PzError
from .jobs.results import ResultsError, read_results


class ReportError(PzError):
    pass


@dataclass
class SavedRun:
    path: Path  # the results.json file
    data: dict

    def get(self, key: str, default=None):
        return self.data.get(key, default)

    @property
    def name(self) -> str:
        return self.path.parent.name

    @property
    def model(self) -> str:
        """The model the run started from (a saved pruned directory names its base model)."""
        return str(self.get("base_model") or self.get("model"))

    @property
    def is_dense(self) -> bool:
        return self.get("method") == "dense" or not self.get("sparsity_ratio")

    @property
    def label(self) -> str:
        """Short legend label: ``wanda 50%``, ``metric abs(W*W)*mms(G) 2:4``, ``dense``."""
        if self.is_dense:
            return "dense"
        method = self.get("method", "?")
        if method.startswith("metric") and self.get("metric"):
            method = f"{method} {self.get('metric')}"
        stype = self.get("sparsity_type", "unstructured")
        spars = f"{self.get('sparsity_ratio', 0):.0%}" if stype == "unstructured" else stype
        if self.get("structured"):
            spars += " structured"
        tuned = f" + {self.get('finetuned')}" if self.get("finetuned") else ""
        return f"{method} {spars}{tuned}"

    @property
    def series(self) -> str:
        """Curve key for the perplexity plot: the method (+ metric) and the sparsity type."""
        method = self.get("method", "?")
        if method.startswith("metric") and self.get("metric"):
            method = f"{method} {self.get('metric')}"
        stype = self.get("sparsity_type", "unstructured")
        if stype != "unstructured":
            method += f" ({stype})"
        return method + (f" + {self.get('finetuned')}" if self.get("finetuned") else "")


def find_runs(paths: list[str | Path]) -> list[SavedRun]:
    """Every readable ``results.json`` under ``paths`` (files or directories), once each."""
    files: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ReportError(f"no such file or directory: {p}")
        files.extend([p] if p.is_file() else sorted(p.rglob("results.json")))
    runs, seen = [], set()
    for f in files:
        key = f.resolve()
        if key in seen:
            continue
        seen.add(key)
        try:
            runs.append(SavedRun(f, read_results(f)))
        except ResultsError as e:  # the file is named, with its bad field
            raise ReportError(f"not a readable run: {e}") from None
    if not runs:
        raise ReportError(
            f"no results.json found under {', '.join(map(str, paths))}; write runs with "
            f"`pzshell prune --save DIR` (or eval / finetune --save DIR)"
        )
    runs.sort(
        key=lambda r: (r.model, not r.is_dense, r.series, r.get("sparsity_ratio") or 0, str(r.path))
    )
    return runs


# ------------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------------


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
    m = str(r.get("method", "?"))
    return m + (f" + {r.get('finetuned')}" if r.get("finetuned") else "")


COLUMNS = (
    "run", "model", "method", "metric", "sparsity", "type", "achieved", "ppl",
    "ppl after finetune", "zero-shot mean", "zero-shot mean after finetune", "eval data",
    "calibration", "finetune", "seed",
)  # fmt: skip


def table_rows(runs: list[SavedRun]) -> list[list[str]]:
    rows = []
    for r in runs:
        metric = r.get("metric") if r.get("metric") else "-"
        rows.append([
            r.name, r.model, _method(r), metric,
            _f(r.get("sparsity_ratio"), ".2f"), str(r.get("sparsity_type", "-")),
            _f(r.get("actual_sparsity"), ".4f"), _f(r.get("ppl")),
            _f(r.get("ppl_after_finetune")), _f(r.get("zero_shot_mean"), ".4f"),
            _f(r.get("zero_shot_mean_after_finetune"), ".4f"), _eval_desc(r), _calib_desc(r),
            _ft_desc(r), str(r.get("seed", "-")),
        ])  # fmt: skip
    return rows


def markdown_table(runs: list[SavedRun]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in table_rows(runs):
        lines.append("| " + " | ".join(_md(c) for c in row) + " |")
    return "\n".join(lines)


def zero_shot_table(runs: list[SavedRun]) -> str | None:
    """Per-task accuracy (± standard error) of every run that has zero-shot results."""
    entries = _zero_shot_entries(runs)
    if not entries:
        return None
    tasks = sorted({t for _, zs in entries for t in zs["tasks"]})
    lines = ["| run | " + " | ".join(tasks) + " | mean |", "|---" * (len(tasks) + 2) + "|"]
    for label, zs in entries:
        cells = []
        for t in tasks:
            res = zs["tasks"].get(t)
            cells.append(
                "-" if not res or res.get("acc") is None
                else f"{res['acc']:.4f} ± {_f(res.get('acc_stderr'), '.4f')} (n={res.get('n')})"
            )  # fmt: skip
        lines.append(f"| {_md(label)} | " + " | ".join(cells) + f" | {_f(zs.get('mean_acc'))} |")
    return "\n".join(lines)


def _zero_shot_entries(runs: list[SavedRun]) -> list[tuple[str, dict]]:
    out = []
    for r in runs:
        for suffix, tag in (("", ""), ("_after_finetune", " + finetune")):
            zs = r.get(f"zero_shot{suffix}")
            if zs and zs.get("tasks"):
                name = r.label if r.name == r.label else f"{r.name}: {r.label}"
                out.append((name + tag, zs))
    return out


# ------------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------------


def _figure(width: float = 7.5, height: float = 4.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "run"


def _model_name(runs: list[SavedRun]) -> str:
    return ", ".join(sorted({r.model for r in runs}))


def _eval_name(r: SavedRun) -> str:
    return data_name(r.get("eval_data", "?"))


def plot_perplexity(runs: list[SavedRun], out_dir: Path) -> list[Path]:
    """Perplexity per method at each sparsity, one PNG per (model, eval data, window length)."""
    groups: dict[tuple, list[SavedRun]] = {}
    for r in runs:
        if r.get("ppl") is None and r.get("ppl_after_finetune") is None:
            continue
        key = (r.model, _eval_name(r), r.get("eval_seqlen"), r.get("eval_tokens"))
        groups.setdefault(key, []).append(r)
    paths = []
    for (model, data, seqlen, tokens), group in groups.items():
        fig = _figure()
        ax = fig.add_subplot()
        series: dict[str, list[SavedRun]] = {}
        for r in group:
            if not r.is_dense:
                series.setdefault(r.series, []).append(r)
        dense = [r.get("ppl") for r in group if r.is_dense and r.get("ppl") is not None]
        colors = iter(_palette())
        for name, rs in sorted(series.items()):
            rs.sort(key=lambda r: r.get("sparsity_ratio"))
            color = next(colors)
            pts = [(r.get("sparsity_ratio"), r.get("ppl")) for r in rs if r.get("ppl") is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", color=color, label=name)
            ft = [(r.get("sparsity_ratio"), r.get("ppl_after_finetune")) for r in rs
                  if r.get("ppl_after_finetune") is not None]  # fmt: skip
            if ft:
                ax.plot(*zip(*ft, strict=True), marker="x", linestyle="--", color=color,
                        label=f"{name}, after recovery fine-tuning")  # fmt: skip
        if dense:
            ax.axhline(dense[0], color="black", linestyle=":", linewidth=1)
            ax.plot([0], [dense[0]], marker="s", color="black", label=f"dense ({dense[0]:.2f})")
        xs = [r.get("sparsity_ratio") or 0 for r in group]
        ax.set_xlim(-0.03, max(xs) + 0.07)
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
        ax.set_xlabel("sparsity ratio (fraction of block linear weights pruned)")
        ax.set_ylabel("perplexity (log scale, lower is better)")
        ax.set_title(f"Perplexity vs sparsity: {model}\n{data}, {tokens} tokens in windows of "
                     f"{seqlen}", fontsize=10)  # fmt: skip
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        path = out_dir / f"ppl_{_slug(model)}_{_slug(data)}.png"
        with atomic.writing_file(path) as tmp:
            fig.savefig(tmp)
        paths.append(path)
    return paths


def _plain_log_ticks(axis) -> None:
    """Log-scale tick labels as plain numbers (``25``, ``30``), not ``2.5 x 10^1``."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:.4g}")
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(fmt)


def _block_sparsity(layers: list[dict]) -> list[tuple[int, float]]:
    """Per block: parameter-weighted sparsity of its linears."""
    acc: dict[int, list[float]] = {}
    for row in layers:
        if not isinstance(row, dict) or "block" not in row or "sparsity" not in row:
            continue
        shape = row.get("shape") or (1, 1)
        n = float(math.prod(shape))
        z, t = acc.setdefault(int(row["block"]), [0.0, 0.0])
        acc[int(row["block"])] = [z + row["sparsity"] * n, t + n]
    return [(b, z / t) for b, (z, t) in sorted(acc.items()) if t]


def plot_layers(runs: list[SavedRun], out_dir: Path) -> Path | None:
    """Per-block sparsity of every pruned run (from results.json "layers")."""
    rs = [r for r in runs if not r.is_dense and r.get("layers")]
    if not rs:
        return None
    fig = _figure(8, 4.6)
    ax = fig.add_subplot()
    colors = iter(_palette())
    styles = ("-", "--", "-.", ":")
    markers = ("o", "s", "^", "v", "D", "x")
    for k, r in enumerate(rs):
        pts = _block_sparsity(r.get("layers"))
        if pts:
            # distinct line styles and markers: runs with identical profiles stay visible
            ax.plot(*zip(*pts, strict=True), marker=markers[k % len(markers)], markersize=4,
                    linestyle=styles[k % len(styles)], color=next(colors),
                    label=f"{r.name}: {r.label}")  # fmt: skip
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("decoder block")
    ax.set_ylabel("sparsity of the block's linear weights")
    ax.set_ylim(0, 1)
    ax.set_title(f"Per-block sparsity: {_model_name(rs)}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    path = out_dir / "block_sparsity.png"
    with atomic.writing_file(path) as tmp:
        fig.savefig(tmp)
    return path


def plot_zero_shot(runs: list[SavedRun], out_dir: Path) -> Path | None:
    """Grouped bars: accuracy per task for every run (and after fine-tuning), ± stderr."""
    entries = _zero_shot_entries(runs)
    if not entries:
        return None
    tasks = sorted({t for _, zs in entries for t in zs["tasks"]})
    fig = _figure(max(7.5, 1.4 * len(tasks) + 4), 4.8)
    ax = fig.add_subplot()
    width = min(0.25, 0.8 / len(entries))
    colors = iter(_palette())
    for k, (label, zs) in enumerate(entries):
        xs, ys, es = [], [], []
        for i, t in enumerate(tasks):
            res = zs["tasks"].get(t) or {}
            if res.get("acc") is None:
                continue
            xs.append(i + width * (k - (len(entries) - 1) / 2))
            ys.append(res["acc"])
            es.append(res.get("acc_stderr") or 0.0)
        ax.bar(xs, ys, width, yerr=es, capsize=2, color=next(colors), label=label)
    half = width * len(entries) / 2 + 0.05
    chance_drawn = False
    for i, t in enumerate(tasks):
        if t in CHANCE:
            ax.hlines(CHANCE[t], i - half, i + half, colors="black", linestyles=":",
                      label=None if chance_drawn else "chance")  # fmt: skip
            chance_drawn = True
    ax.set_xticks(range(len(tasks)), [_task_tick(t, entries) for t in tasks])
    ax.set_xlim(-0.5 - max(0.0, half - 0.5), len(tasks) - 0.5 + max(0.0, half - 0.5))
    ax.set_ylabel("accuracy (0-shot, ± standard error)")
    ax.set_ylim(0, 1)
    models = ", ".join(sorted({r.model for r in runs if r.get("zero_shot")}))
    ax.set_title(f"Zero-shot accuracy (lm-eval, 0-shot): {models}", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path = out_dir / "zero_shot.png"
    with atomic.writing_file(path) as tmp:
        fig.savefig(tmp)
    return path


# accuracy of guessing, for the tasks whose number of choices is fixed
CHANCE = {
    "pzshell_mc": 0.25, "arc_easy": 0.25, "arc_challenge": 0.25, "openbookqa": 0.25,
    "hellaswag": 0.25, "boolq": 0.5, "rte": 0.5, "winogrande": 0.5, "piqa": 0.5,
}  # fmt: skip


def _task_tick(task: str, entries: list[tuple[str, dict]]) -> str:
    ns = {zs["tasks"][task].get("n") for _, zs in entries if task in zs["tasks"]}
    return f"{task}\n(n={'/'.join(str(n) for n in sorted(ns, key=str))})"


def _palette() -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(100)]


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------


def write_report(paths: list[str | Path], out_dir: str | Path) -> dict:
    """Read the runs under ``paths``; write ``report.md`` and the PNGs into ``out_dir``."""
    runs = find_runs(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_perplexity(runs, out)
    for extra in (plot_layers(runs, out), plot_zero_shot(runs, out)):
        if extra is not None:
            plots.append(extra)
    table = markdown_table(runs)
    zs = zero_shot_table(runs)
    parts = [
        "# pzshell report",
        "",
        f"{len(runs)} run(s) from {', '.join(str(p) for p in paths)}. Sparsity is counted over "
        "the linear weights of the decoder blocks; perplexity is exp(mean token NLL) over "
        "non-overlapping windows (eval data: windows x length = tokens).",
        "",
        "## Runs",
        "",
        table,
    ]
    if zs:
        parts += ["", "## Zero-shot accuracy per task", "", zs]
    if plots:
        parts += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    md = out / "report.md"
    atomic.write_text(md, "\n".join(parts) + "\n")
    return {"report": md, "plots": plots, "runs": runs, "table": table}


__all__ = [
    "ReportError",
    "SavedRun",
    "find_runs",
    "markdown_table",
    "plot_layers",
    "plot_perplexity",
    "plot_zero_shot",
    "table_rows",
    "write_report",
    "zero_shot_table",
]
