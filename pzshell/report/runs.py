"""Finding saved runs: every ``results.json`` under the given paths, read through the one results
schema (:mod:`pzshell.jobs.results`), so a bad file is named with its bad field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import PzError
from ..jobs.results import ResultsError, read_results


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
        return f"{method} {spars}{self.options}{tuned}"

    @property
    def options(self) -> str:
        """How the mask was placed and fixed, when not the default: ``, owl``, ``, dsnot``."""
        parts = []
        if self.get("allocation") not in (None, "uniform"):
            parts.append(str(self.get("allocation")))
        if self.get("refine") not in (None, "none"):
            parts.append(str(self.get("refine")))
        return "".join(f", {p}" for p in parts)

    @property
    def series(self) -> str:
        """Curve key for the perplexity plot: the method (+ metric), the sparsity type, the
        allocation and the refinement (OWL and uniform runs of one method are two curves)."""
        method = self.get("method", "?")
        if method.startswith("metric") and self.get("metric"):
            method = f"{method} {self.get('metric')}"
        method += self.options
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
