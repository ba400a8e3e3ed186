"""What the app keeps between sessions, as JSON in the user data directory.

``$PZSHELL_HOME`` (default ``$XDG_DATA_HOME/pzshell``, i.e. ``~/.local/share/pzshell``) holds
``results.json`` (every finished run), ``state.json`` (the settings and the last search),
``trees/`` (the user's saved metric trees), ``searches/`` (search run directories) and
``worker.log`` (what the worker process printed). Plain data, no Textual: tested on its own.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .. import atomic
from ..jobs.results import validate
from ..worker.protocol import RunSettings


def data_home() -> Path:
    env = os.environ.get("PZSHELL_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "pzshell"


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` so that a crash leaves either the old or the new file, never half."""
    atomic.write_text(path, json.dumps(obj, indent=1) + "\n")


def read_json(path: Path, default):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


@dataclass
class SearchKnobs:
    """The search settings the app exposes (the rest keep the library's defaults)."""

    population: int = 8
    budget: int = 24
    batch: int = 4
    ops: str = "published"
    terminals: str = "W,G,X"
    reconstruct: str = "none"  # "iterative": candidates scored inside SparseGPT's loop
    nsamples: int = 8
    grad_samples: int = 4
    seqlen: int = 128
    heldout_windows: int = 2
    heldout_seqlen: int = 128
    cheap_windows: int = 1
    cheap_seqlen: int = 64
    final_top: int = 1
    final_windows: int = 8  # the finals' held-out windows (the full stage's first, then more)
    reference: str = "W * sqrt(X)"  # the rule the finals are judged against; "none": no one
    margin: float = 2.0  # standard errors a final must beat the reference by
    workers: int | None = None  # evaluator processes; None: pzshell search's default


@dataclass
class AppSettings:
    run: RunSettings = field(default_factory=RunSettings)
    search: SearchKnobs = field(default_factory=SearchKnobs)
    auto_reference: bool = True  # queue dense and Wanda rows for new settings

    def to_dict(self) -> dict:
        return {
            "run": asdict(self.run),
            "search": asdict(self.search),
            "auto_reference": self.auto_reference,
        }

    @classmethod
    def from_dict(cls, d: dict) -> AppSettings:
        def pick(kind, data):
            """Known fields whose values have the default's type (an old or damaged state
            file loses only the values it got wrong)."""
            default = kind()
            out = {}
            for f in fields(kind):
                if f.name not in (data or {}):
                    continue
                v, d = data[f.name], getattr(default, f.name)
                if isinstance(d, bool) or isinstance(v, bool):
                    ok = isinstance(v, bool) and isinstance(d, bool)
                elif isinstance(d, float):
                    ok = isinstance(v, (int, float))
                elif d is None:
                    ok = v is None or isinstance(v, int)
                else:
                    ok = isinstance(v, type(d))
                if ok:
                    out[f.name] = v
            return kind(**out)

        try:
            return cls(
                run=pick(RunSettings, d.get("run")),
                search=pick(SearchKnobs, d.get("search")),
                auto_reference=bool(d.get("auto_reference", True)),
            )
        except TypeError:
            return cls()

    def search_settings(self):
        """The library's SearchSettings for a new search at the current settings."""
        from ..search import FitnessSettings, SearchSettings
        from ..search.settings import reference_rule

        r, k = self.run, self.search
        fit = FitnessSettings(
            model=r.model,
            sparsity_ratio=r.sparsity_ratio,
            sparsity_type=r.sparsity_type,
            calib=r.calib,
            nsamples=k.nsamples,
            grad_samples=k.grad_samples,
            seqlen=k.seqlen,
            heldout_windows=k.heldout_windows,
            heldout_seqlen=k.heldout_seqlen,
            cheap_windows=k.cheap_windows,
            cheap_seqlen=k.cheap_seqlen,
            final_windows=k.final_windows,
            reconstruct=k.reconstruct,
            refit=r.refit,  # the runs' refit: a search scores its rules as the runs prune
            seed=r.seed,
        )
        return SearchSettings(
            fitness=fit,
            population=k.population,
            budget=k.budget,
            batch=k.batch,
            ops=k.ops,
            terminals=k.terminals,
            seed=r.seed,
            final_top=k.final_top,
            reference=reference_rule(k.reference),
            margin=k.margin,
        )


class Store:
    """The app's persistent state: results, settings, the last search, user trees."""

    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home else data_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.trees_dir.mkdir(exist_ok=True)
        self.results: list[dict] = read_json(self.results_path, [])
        if not isinstance(self.results, list):
            self.results = []
        self.state: dict = read_json(self.state_path, {})
        if not isinstance(self.state, dict):
            self.state = {}

    # ---- paths ---------------------------------------------------------------------------------
    @property
    def results_path(self) -> Path:
        return self.home / "results.json"

    @property
    def state_path(self) -> Path:
        return self.home / "state.json"

    @property
    def trees_dir(self) -> Path:
        return self.home / "trees"

    @property
    def searches_dir(self) -> Path:
        return self.home / "searches"

    @property
    def worker_log(self) -> Path:
        return self.home / "worker.log"

    # ---- results -------------------------------------------------------------------------------
    def add_result(self, row: dict) -> dict:
        row = dict(row)
        row.setdefault("id", f"r{int(time.time() * 1000)}-{len(self.results)}")
        row.setdefault("finished_at", time.strftime("%Y-%m-%d %H:%M:%S"))
        self.results.append(row)
        write_json_atomic(self.results_path, self.results)
        return row

    def remove_result(self, row_id: str) -> None:
        self.results = [r for r in self.results if r.get("id") != row_id]
        write_json_atomic(self.results_path, self.results)

    def restore_result(self, row: dict, index: int) -> None:
        """Put a removed row back where it was (undo)."""
        self.results.insert(min(max(index, 0), len(self.results)), row)
        write_json_atomic(self.results_path, self.results)

    def has_reference(self, kind: str, settings: RunSettings) -> bool:
        """Is there a finished reference row of ``kind`` for runs at ``settings``?"""
        return any(
            r.get("ppl") is not None and matches_reference(r, kind, settings) for r in self.results
        )

    def references_for(self, row: dict) -> dict[str, dict]:
        """The newest dense and Wanda rows that ``row`` is comparable with, by kind."""
        out = {}
        for kind in REFERENCE_KINDS:
            match = [r for r in self.results if matches_reference(r, kind, row)]
            if match:
                out[kind] = match[-1]
        return out

    # ---- settings and search -------------------------------------------------------------------
    def load_settings(self) -> AppSettings:
        return AppSettings.from_dict(self.state.get("settings") or {})

    def save_settings(self, settings: AppSettings) -> None:
        self.state["settings"] = settings.to_dict()
        self.save_state()

    @property
    def last_search(self) -> dict | None:
        return self.state.get("last_search")

    def set_last_search(self, out_dir: str, status: str) -> None:
        self.state["last_search"] = {"dir": out_dir, "status": status}
        self.save_state()

    def save_state(self) -> None:
        write_json_atomic(self.state_path, self.state)


def result_row(kind: str, formula: str | None, settings: RunSettings, res: dict, **extra) -> dict:
    """The results-table row for a finished run (what results.json keeps), from the run's
    results in the jobs' schema (:mod:`pzshell.jobs.results`)."""
    res = validate(res, f"the {kind} run's results")
    return {
        "kind": kind,
        "formula": formula,
        "canonical": _canonical_key(formula),
        "seed": settings.seed,
        "calib": settings.calib,
        "model": settings.model,
        # what the job recorded (pzshell.jobs.results): a dense run is "unstructured" at ratio 0
        "sparsity_ratio": res["sparsity_ratio"],
        "sparsity_type": res["sparsity_type"],
        "ppl": res.get("ppl"),
        "seconds": round(
            float(res.get("prune_seconds", 0.0)) + float(res.get("grad_seconds", 0.0)), 2
        ),
        "eval_data": res.get("eval_data"),
        "eval_windows": res.get("eval_windows"),
        "eval_seqlen": res.get("eval_seqlen"),
        "eval_tokens": res.get("eval_tokens"),
        "nsamples": res.get("nsamples"),
        "seqlen": res.get("seqlen"),
        "device": res.get("device"),
        "actual_sparsity": res.get("actual_sparsity"),
        "refit": res.get("refit") or 0,  # CG iterations of the least-squares refit
        "refine": res.get("refine") or "none",  # the mask refinement (none, dsnot, swaps)
        "reference_key": _jsonable(settings.reference_key()),
        **extra,
    }


def _canonical_key(formula: str | None) -> str | None:
    """The canonical rank key of a run's formula (rows with equal keys prune alike)."""
    if not formula:
        return None
    from ..lang import parse
    from ..lang.algebra import canonical

    try:
        return canonical(parse(formula)).key
    except Exception:  # a row must never be lost for its key
        return None


REFERENCE_KINDS = ("dense", "wanda")


def matches_reference(ref: RunSettings | dict, kind: str, run: RunSettings | dict) -> bool:
    """Is ``ref`` — a queued run's settings or a results row — the ``kind`` reference ("dense",
    "wanda") for ``run`` (settings or a row)? Both must have the same model, data and evaluation
    (:meth:`RunSettings.reference_key`); a pruned reference also the same sparsity and the same
    refit and refinement (a refitted Wanda for refitted runs, swaps for swapped ones). A row must
    be of ``kind``; the caller checks a queued run's kind."""
    if isinstance(ref, dict) and ref.get("kind") != kind:
        return False
    ref_key, *ref_pruned = _reference_fields(ref)
    key, *pruned = _reference_fields(run)
    if ref_key != key:
        return False
    return kind == "dense" or ref_pruned == pruned


def _reference_fields(x: RunSettings | dict) -> tuple:
    """(reference key as JSON would give it back, sparsity ratio, sparsity type, refit,
    refinement)."""
    if isinstance(x, RunSettings):
        key = _jsonable(x.reference_key())
        return key, x.sparsity_ratio, x.sparsity_type, x.refit, x.refine
    return (
        list(x.get("reference_key") or ()),
        x.get("sparsity_ratio"),
        x.get("sparsity_type"),
        x.get("refit") or 0,
        x.get("refine") or "none",
    )


def _jsonable(t: tuple) -> list:
    return json.loads(json.dumps(list(t)))


def with_run(settings: AppSettings, **changes) -> AppSettings:
    return replace(settings, run=replace(settings.run, **changes))
