"""What every benchmark shares: where the data and the results live, the check that the data is
there, the atomic JSON writer, the benchmark's calibration / evaluation settings as job specs
(and as the settings block of the 50% mask benchmarks), an independent copy of a loaded model,
and the table every benchmark prints. Benchmarks run as
``.venv/bin/python bench/<name>.py`` (the package is installed in the venv, so no path tricks
are needed; this file is found beside the script). Heavy imports (torch, rich, the job layer)
happen inside the helpers, so ``--help`` stays fast."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pzshell import atomic
from pzshell.paths import wikitext_test, wikitext_valid

if TYPE_CHECKING:
    from rich.table import Table

    from pzshell.jobs import CalibSpec, EvalSpec
    from pzshell.models import LoadedModel

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CALIB = wikitext_valid()  # calibration text of every benchmark (tokenized WikiText-2 valid)
EVAL = wikitext_test()  # evaluation text of every benchmark (WikiText-2 raw test)


def require_data(*files: Path) -> None:
    """Exit with a clear message if the offline benchmark data is missing."""
    for f in files or (CALIB, EVAL):
        if not Path(f).exists():
            sys.exit(
                f"benchmark data missing: {f} (expected ../shared/data beside the project, "
                f"or set $PZSHELL_DATA)"
            )


def write_json(path: str | Path, obj, *, default=None) -> Path:
    """Write ``obj`` as indented JSON, atomically (a cut-short run keeps the previous file).
    ``default``: as for :func:`json.dumps`, for values JSON has no type for."""
    if default is None:
        atomic.write_json(path, obj)
    else:
        atomic.write_text(path, json.dumps(obj, indent=2, default=default) + "\n")
    return Path(path)


def calib_spec(nsamples: int, seqlen: int, seed: int = 0, data: str | Path = CALIB) -> CalibSpec:
    """``nsamples`` calibration windows of ``seqlen`` tokens of the benchmark's calibration text."""
    from pzshell.jobs import CalibSpec

    return CalibSpec(data=str(data), nsamples=nsamples, seqlen=seqlen, seed=seed)


def mask_bench_settings(model: str, **extra) -> dict:
    """The settings block of the benchmarks that prune at 50% with the pruning benchmark's data
    (bench/refit.py, bench/swaps.py): calibration 32 x 512 tokens (seed 0), test 8 x 1024, and
    the machine they ran on; ``extra`` adds a benchmark's own settings before the machine's."""
    import platform

    import torch

    return {
        "model": model,
        "calib": str(CALIB),
        "nsamples": 32,
        "seqlen": 512,
        "seed": 0,
        "eval": str(EVAL),
        "eval_seqlen": 1024,
        "eval_windows": 8,
        "sparsity_ratio": 0.5,
        **extra,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }


def eval_spec(seqlen: int, windows: int, data: str | Path = EVAL) -> EvalSpec:
    """The first ``windows`` windows of ``seqlen`` tokens of the benchmark's evaluation text."""
    from pzshell.jobs import EvalSpec

    return EvalSpec(data=str(data), seqlen=seqlen, windows=windows)


def copy_model(lm: LoadedModel) -> LoadedModel:
    """An independent copy of a loaded model (the weights deep-copied, the tokenizer shared), to
    prune one configuration after another from the same dense model without reloading it."""
    out = copy.copy(lm)
    out.model = copy.deepcopy(lm.model)
    return out


def table(title: str, columns: Iterable[str], *, left: int = 1, **kw) -> Table:
    """A rich table with the first ``left`` columns left-justified (names) and the others
    right-justified (figures); ``kw`` go to :class:`rich.table.Table` (caption, ...)."""
    from rich.table import Table

    t = Table(title=title, **kw)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i < left else "right")
    return t


def print_table(t: Table, *, width: int | None = 200, highlight: bool = True) -> None:
    """Print ``t`` to stdout, ``width`` columns wide (None: the terminal's width)."""
    from rich.console import Console

    Console(width=width, highlight=highlight).print(t)
