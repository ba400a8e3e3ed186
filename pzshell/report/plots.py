"""The report's PNG plots, drawn with matplotlib's object API on an Agg canvas (no pyplot state,
no display): perplexity per method and sparsity, per-block sparsity, the per-layer output error
left by the swaps or the refit, zero-shot accuracy."""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

from .. import atomic
from .runs import SavedRun
from .tables import data_name, zero_shot_entries


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
            ft = [
                (r.get("sparsity_ratio"), r.get("ppl_after_finetune"))
                for r in rs
                if r.get("ppl_after_finetune") is not None
            ]
            if ft:
                ax.plot(
                    *zip(*ft, strict=True),
                    marker="x",
                    linestyle="--",
                    color=color,
                    label=f"{name}, after recovery fine-tuning",
                )
        if dense:
            ax.axhline(dense[0], color="black", linestyle=":", linewidth=1)
            ax.plot([0], [dense[0]], marker="s", color="black", label=f"dense ({dense[0]:.2f})")
        xs = [r.get("sparsity_ratio") or 0 for r in group]
        ax.set_xlim(-0.03, max(xs) + 0.07)
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
        ax.set_xlabel("sparsity ratio (fraction of block linear weights pruned)")
        ax.set_ylabel("perplexity (log scale, lower is better)")
        ax.set_title(
            f"Perplexity vs sparsity: {model}\n{data}, {tokens} tokens in windows of {seqlen}",
            fontsize=10,
        )
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
            ax.plot(
                *zip(*pts, strict=True),
                marker=markers[k % len(markers)],
                markersize=4,
                linestyle=styles[k % len(styles)],
                color=next(colors),
                label=f"{r.name}: {r.label}",
            )
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


def plot_allocation(runs: list[SavedRun], out_dir: Path) -> list[Path]:
    """Per-block sparsity bars of every run whose allocation is not uniform: the ratio the
    allocation asked of each block, the achieved one beside it, the model-wide target as a
    line; with OWL, the block's outlier ratio on a second axis. One PNG per run."""
    paths = []
    for r in runs:
        asked = r.get("block_sparsity")
        if r.is_dense or r.get("allocation") in (None, "uniform") or not asked:
            continue
        got = r.get("block_sparsity_achieved") or []
        fig = _figure(8, 4.4)
        ax = fig.add_subplot()
        xs = list(range(len(asked)))
        ax.bar([x - 0.2 for x in xs], asked, 0.4, color="tab:blue", label="asked")
        if len(got) == len(asked):
            ax.bar([x + 0.2 for x in xs], got, 0.4, color="tab:orange", label="achieved")
        target = r.get("sparsity_ratio")
        if target:
            ax.axhline(target, color="black", linestyle=":", label=f"model-wide {target:.0%}")
        lo, hi = min(asked), max(asked)
        ax.set_ylim(max(0.0, lo - 0.1), min(1.0, hi + 0.1))
        outliers = r.get("block_outliers")
        if outliers and len(outliers) == len(asked):
            ax2 = ax.twinx()
            ax2.plot(xs, outliers, color="tab:red", marker=".", linewidth=1, label="outliers")
            ax2.set_ylabel("outlier ratio (OWL's D)", color="tab:red")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("decoder block")
        ax.set_ylabel("sparsity of the block")
        ppl = r.get("ppl")
        ppl_text = f", ppl {ppl:.2f}" if isinstance(ppl, (int, float)) else ""
        ax.set_title(f"Per-block sparsity: {r.model}, {r.label}{ppl_text}", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        path = out_dir / f"allocation_{_slug(r.name)}.png"
        with atomic.writing_file(path) as tmp:
            fig.savefig(tmp)
        paths.append(path)
    return paths


# what each per-layer error field measures, as the plot's legend and file name say it
_LAYER_ERRORS = (
    ("refine_error", "least-squares swaps", "after the swaps / the metric's mask"),
    ("refit_error", "least-squares refit", "after the refit / before it"),
)


def _layer_errors(layers: list, field: str) -> dict[str, list[tuple[float, float]]]:
    """Per linear name: (position, ratio) of every layer that has ``field``; the position is
    the block plus the linear's place inside it, so a block's linears sit side by side."""
    # the rows' types were checked when the run was read (jobs.results); null: not refined
    rows = [
        row for row in layers if row.get(field) is not None and "block" in row and row[field] > 0
    ]
    names = list(dict.fromkeys(str(row.get("linear", "?")) for row in rows))
    out: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        name = str(row.get("linear", "?"))
        pos = row["block"] + (names.index(name) + 0.5) / (len(names) + 1) - 0.5
        out.setdefault(name, []).append((pos, float(row[field])))
    return out


def plot_layer_errors(runs: list[SavedRun], out_dir: Path) -> list[Path]:
    """Per layer, the output error that the least-squares swaps or refit left, over the error
    before them (``layers[].refine_error``, ``layers[].refit_error``): one PNG per run that has
    them, one panel per field, one marker per linear kind, the median as a line. Where the
    swaps or the refit do the most and the least is what the picture shows."""
    paths = []
    for r in runs:
        layers = r.get("layers") or []
        panels = [
            (title, what, series)
            for field, title, what in _LAYER_ERRORS
            if (series := _layer_errors(layers, field))
        ]
        if r.is_dense or not panels:
            continue
        fig = _figure(8.5, 3.6 * len(panels))
        markers = ("o", "s", "^", "v", "D", "x", "P", "*")
        for k, (title, what, series) in enumerate(panels):
            ax = fig.add_subplot(len(panels), 1, k + 1)
            colors = iter(_palette())
            values = [v for pts in series.values() for _, v in pts]
            for j, (name, pts) in enumerate(series.items()):
                ax.plot(
                    *zip(*pts, strict=True),
                    linestyle="none",
                    marker=markers[j % len(markers)],
                    markersize=4,
                    color=next(colors),
                    label=name,
                )
            median = statistics.median(values)
            ax.axhline(median, color="black", linestyle=":", linewidth=1)
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_yscale("log")
            from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
            _plain_log_ticks(ax.yaxis)
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("decoder block")
            ax.set_ylabel(f"output error\n{what}")
            ax.set_title(
                f"{title}: median layer {median:.3f} over {len(values)} layers", fontsize=9
            )
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ppl = r.get("ppl")
        ppl_text = f", ppl {ppl:.2f}" if isinstance(ppl, (int, float)) else ""
        calib = (
            f"calibration {r.get('nsamples')}x{r.get('seqlen')} tokens, seed {r.get('seed')}"
            if r.get("nsamples")
            else ""
        )
        fig.suptitle(
            f"Per-layer output error: {r.model}, {r.label}{ppl_text}\n{calib}", fontsize=10
        )
        path = out_dir / f"layer_error_{_slug(r.name)}.png"
        with atomic.writing_file(path) as tmp:
            fig.savefig(tmp)
        paths.append(path)
    return paths


def plot_zero_shot(runs: list[SavedRun], out_dir: Path) -> Path | None:
    """Grouped bars: accuracy per task for every run (and after fine-tuning), ± stderr."""
    entries = zero_shot_entries(runs)
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
            ax.hlines(
                CHANCE[t],
                i - half,
                i + half,
                colors="black",
                linestyles=":",
                label=None if chance_drawn else "chance",
            )
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
    "pzshell_mc": 0.25,
    "arc_easy": 0.25,
    "arc_challenge": 0.25,
    "openbookqa": 0.25,
    "hellaswag": 0.25,
    "boolq": 0.5,
    "rte": 0.5,
    "winogrande": 0.5,
    "piqa": 0.5,
}


def _task_tick(task: str, entries: list[tuple[str, dict]]) -> str:
    ns = {zs["tasks"][task].get("n") for _, zs in entries if task in zs["tasks"]}
    return f"{task}\n(n={'/'.join(str(n) for n in sorted(ns, key=str))})"


def _palette() -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(100)]
