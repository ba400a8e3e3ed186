"""A search's settings: what ``settings.json`` of a run directory holds, validated."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields

from ..engine.layer_ratios import OWL_LAMBDA
from ..engine.masks import parse_sparsity_type
from ..errors import PzError
from ..lang import load_metric
from ..lang.ops import EXTENDED, PUBLISHED, PUBLISHED_TERMINALS, TERMINALS
from ..lang.tree import MetricError
from .fitness import FitnessSettings

KNOWN_SEEDS = ("W", "W*sqrt(X)", "abs(W*W)*mms(G)", "W*G", "W*sqrt(S)")
"""Magnitude, Wanda, the published Pruner-Zero tree, a gradient product and SparseGPT's own
score; a search seeds those whose leaves are all in its terminal set."""


class SearchError(PzError):
    pass


def reference_rule(text: str) -> str | None:
    """A reference rule as typed (``--reference``, the app's field): the formula, or None for
    ``none`` (no comparison). The formula is checked with the other settings."""
    return None if text.strip().lower() == "none" else text


@dataclass
class SearchSettings:
    fitness: FitnessSettings = field(default_factory=FitnessSettings)
    strategy: str = "gp"  # or "random": fresh random trees only, the ablation baseline
    population: int = 24
    budget: int = 100_000  # evaluations (distinct pruning rules screened)
    batch: int = 32
    tournament: int = 3
    p_crossover: float = 0.6
    p_mutation: float = 0.4
    max_depth: int = 6
    max_size: int = 25
    init_depth: int = 4
    ops: str = "extended"  # or "published"
    # the leaves evolution draws from: W, G, X (the published set), and S where asked for
    terminals: str = "W,G,X"
    p_const: float = 0.1
    proxy_quantile: float = 0.25  # proxy stage: only the best quarter pays for perplexity
    promote_max: float = 0.3  # and at most this fraction of a batch, the best proxies first
    promote_quantile: float = 0.5  # cheap stage (when on): only the better half goes on
    parsimony: float = 0.002  # log-perplexity added per node, in selection only
    stagnation: int = 12  # batches without a better fitness before a restart (0: never)
    seed: int = 0
    seed_known: bool = True
    seed_formulas: tuple[str, ...] = ()
    final_top: int = 5
    # the finals are compared window by window with this rule's own final (Wanda by default):
    # the best final is the answer only when it beats it by `margin` standard errors; else the
    # reference is (None: the best final, no comparison)
    reference: str | None = "W * sqrt(X)"
    margin: float = 2.0
    time_limit: float | None = 3600.0  # seconds, model and statistics included; None: none

    def validate(self) -> None:
        """Every setting, checked before anything is written (a run directory is only made for
        settings that can run). Types are checked too: settings may come from a file."""
        _check_fitness(self.fitness)
        _whole("population", self.population, 2)
        _whole("budget", self.budget, 1)
        if self.budget < self.population:
            raise SearchError(
                f"budget ({self.budget} evaluations) must be at least the population "
                f"({self.population})"
            )
        _whole("batch", self.batch, 1)
        _whole("tournament size", self.tournament, 1)
        _whole("max depth", self.max_depth, 2)
        _whole("max size", self.max_size, 1)
        _whole("init depth", self.init_depth, 1)
        _whole("seed", self.seed, None)
        _whole("final-top", self.final_top, 0)
        _whole("stagnation", self.stagnation, 0)
        if self.strategy not in ("gp", "random"):
            raise SearchError(f"--strategy must be 'gp' or 'random', got {self.strategy!r}")
        if not _is_number(self.parsimony) or not 0 <= self.parsimony < 1:
            raise SearchError(f"parsimony must be in [0, 1), got {self.parsimony!r}")
        for name in (
            "p_crossover",
            "p_mutation",
            "p_const",
            "promote_quantile",
            "proxy_quantile",
            "promote_max",
        ):
            v = getattr(self, name)
            if not _is_number(v) or not 0 <= v <= 1:
                raise SearchError(f"{name.replace('_', '-')} must be in [0, 1], got {v!r}")
        if self.time_limit is not None and (
            not _is_number(self.time_limit) or not 0 < self.time_limit < math.inf
        ):
            raise SearchError(f"the time limit must be a positive number, got {self.time_limit!r}")
        if self.reference is not None:
            if not isinstance(self.reference, str):
                raise SearchError(f"--reference must be a formula, got {self.reference!r}")
            try:
                load_metric(self.reference)
            except MetricError as e:
                raise SearchError(f"--reference {self.reference!r}: {e}") from None
        if not _is_number(self.margin) or not 0 <= self.margin < math.inf:
            raise SearchError(
                f"--margin is a number of standard errors (0 or more), got {self.margin!r}"
            )
        if not isinstance(self.seed_known, bool):
            raise SearchError(f"seed_known must be true or false, got {self.seed_known!r}")
        if not all(isinstance(f, str) for f in self.seed_formulas):
            raise SearchError(f"seed formulas must be strings, got {list(self.seed_formulas)!r}")
        if self.ops not in ("published", "extended"):
            raise SearchError(f"--ops must be 'published' or 'extended', got '{self.ops}'")
        if self.max_depth < 2:
            raise SearchError(f"max depth must be at least 2, got {self.max_depth}")
        self._check_terminals()
        for f in self.seed_formulas:
            try:
                tree = load_metric(f)
            except MetricError as e:
                raise SearchError(f"seed formula {f!r}: {e}") from None
            bad = {n.data for _, n in tree.walk() if n.is_op and n.data not in self.op_names}
            if bad:
                raise SearchError(
                    f"seed formula {f!r} uses {', '.join(sorted(bad))}, outside the "
                    f"'{self.ops}' operator set (use --ops extended)"
                )
            leaves = tree.terminals - set(self.terminal_names)
            if leaves:
                raise SearchError(
                    f"seed formula {f!r} uses {', '.join(sorted(leaves))}, outside the search's "
                    f"terminals {self.terminals} (add {', '.join(sorted(leaves))} to --terminals)"
                )

    def _check_terminals(self) -> None:
        if not isinstance(self.terminals, str):
            raise SearchError(
                f"--terminals must be a comma list such as W,G,X,S, got {self.terminals!r}"
            )
        names = self.terminal_names
        unknown = [t for t in names if t not in TERMINALS]
        if unknown or not names or len(set(names)) != len(names):
            what = f"unknown {', '.join(unknown)}" if unknown else "each at most once"
            raise SearchError(
                f"--terminals {self.terminals!r}: {what}; the terminals are {', '.join(TERMINALS)}"
            )
        if "W" not in names:
            raise SearchError(f"--terminals {self.terminals!r} must include W (the weight)")
        f = self.fitness
        if "S" in names and f.proxy_rows == 0 and f.reconstruct == "none" and not f.refit:
            raise SearchError(
                "--terminals with S needs the calibration Hessian, which this search does not "
                "load with --proxy_rows 0, --reconstruct none and no --refit: give --proxy_rows "
                "> 0, --reconstruct iterative or --refit"
            )

    @property
    def op_names(self) -> tuple[str, ...]:
        return PUBLISHED + EXTENDED if self.ops == "extended" else PUBLISHED

    @property
    def terminal_names(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.terminals.split(",") if t.strip())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seed_formulas"] = list(self.seed_formulas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SearchSettings:
        """Settings from :meth:`to_dict`'s form; a ``ValueError`` (naming the key) when ``d`` is
        not that form. The values are checked by :meth:`validate`."""
        if not isinstance(d, dict) or not isinstance(d.get("fitness"), dict):
            raise ValueError("no 'fitness' settings")
        d = dict(d)
        _known_keys(d, cls)
        _known_keys(d["fitness"], FitnessSettings)
        # a run saved before the setting existed used the dense model's statistics
        old = {"statistics": "dense", "calib_windows": "head", "heldout_skip": ""}
        d["fitness"] = FitnessSettings(**{**old, **d["fitness"]})
        formulas = d.get("seed_formulas", ())
        if not isinstance(formulas, (list, tuple)):
            raise ValueError(f"seed_formulas is {formulas!r}, not a list")
        d["seed_formulas"] = tuple(formulas)
        return cls(**d)

    def identity(self) -> dict:
        """What a resumed run must share with the original (the trajectory depends on it)."""
        d = self.to_dict()
        for k in ("budget", "time_limit", "final_top", "reference", "margin"):
            d.pop(k)
        if self.terminal_names == PUBLISHED_TERMINALS:  # a run saved before the setting existed
            del d["terminals"]
        d["fitness"].pop("final_windows")  # the finals' text, like their number, may change
        if d["fitness"]["reconstruct"] == "none":  # a run saved before the setting existed
            del d["fitness"]["reconstruct"]
        if d["fitness"]["refit"] == 0:  # likewise
            del d["fitness"]["refit"]
        if d["fitness"]["heldout_skip"] == "":  # likewise
            del d["fitness"]["heldout_skip"]
        return d

    def digest(self) -> str:
        """A digest of :meth:`identity`: stored with the settings and in the search state, so
        that an edited ``settings.json`` is noticed before a run mixes two settings."""
        blob = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _whole(name: str, v, least: int | None) -> None:
    if not isinstance(v, int) or isinstance(v, bool):
        raise SearchError(f"{name} must be a whole number, got {v!r}")
    if least is not None and v < least:
        raise SearchError(f"{name} must be at least {least}, got {v}")


def _known_keys(d: dict, cls) -> None:
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown setting {', '.join(sorted(unknown))}")


def _check_fitness(f: FitnessSettings) -> None:
    if not isinstance(f.model, str) or not f.model:
        raise SearchError(f"--model must name a model, got {f.model!r}")
    if not isinstance(f.calib, str):
        raise SearchError(f"--calib must name a text, got {f.calib!r}")
    ratios = f.ratios
    if not ratios:
        raise SearchError("--sparsity_ratio needs at least one value")
    for r in ratios:
        if not _is_number(r) or not 0 <= r < 1:
            raise SearchError(f"--sparsity_ratio must be in [0, 1), got {r!r}")
    if len(set(ratios)) != len(ratios):
        raise SearchError(f"--sparsity_ratio lists a value twice: {list(ratios)}")
    if not isinstance(f.sparsity_type, str) or not f.sparsity_type.strip():
        raise SearchError(f"--sparsity_type must be text, got {f.sparsity_type!r}")
    types = f.types
    if len(set(types)) != len(types):
        raise SearchError(f"--sparsity_type lists a type twice: {f.sparsity_type}")
    for t in types:
        try:
            parse_sparsity_type(t)
        except PzError as e:
            raise SearchError(f"--sparsity_type: {e}") from None
    _whole("--nsamples", f.nsamples, 1)
    _whole("--grad_samples", f.grad_samples, 1)
    _whole("--seqlen", f.seqlen, 2)
    _whole("--heldout_windows", f.heldout_windows, 1)
    _whole("--final-windows", f.final_windows, 1)
    _whole("--heldout_seqlen", f.heldout_seqlen, 2)
    _whole("--cheap_windows", f.cheap_windows, 0)
    _whole("--cheap_seqlen", f.cheap_seqlen, 2 if f.cheap_windows else 0)
    _whole("--proxy_rows", f.proxy_rows, 0)
    if not isinstance(f.allocation, str):
        raise SearchError(f"--allocation must be text, got {f.allocation!r}")
    if f.allocation != "uniform":
        from ..engine.alloc_formula import AllocationFormulaError, is_formula, parse_allocation

        nm = [t for t in types if t != "unstructured"]
        if nm:
            raise SearchError(
                f"--allocation {f.allocation} gives each block its own sparsity, but "
                f"{', '.join(nm)} fixes every block's; search unstructured settings with it"
            )
        if is_formula(f.allocation):
            try:
                parse_allocation(f.allocation)
            except AllocationFormulaError as e:
                raise SearchError(f"--allocation: {e}") from None
    if not _is_number(f.owl_lambda) or not 0 <= f.owl_lambda < 0.5:
        raise SearchError(f"--owl_lambda must be in [0, 0.5), got {f.owl_lambda!r}")
    if f.allocation == "uniform" and f.owl_lambda != OWL_LAMBDA:
        raise SearchError(
            f"--owl_lambda {f.owl_lambda:g} spreads a non-uniform allocation; with --allocation "
            f"uniform it would change nothing: give --allocation owl or a formula"
        )
    if f.statistics not in ("sequential", "dense"):
        raise SearchError(
            f"--statistics is 'sequential' (X as a layer-sequential Wanda prune sees it, per "
            f"setting) or 'dense' (X of the unpruned model), got {f.statistics!r}"
        )
    if f.reconstruct not in ("none", "iterative"):
        raise SearchError(
            f"--reconstruct is 'none' (a candidate's masks alone) or 'iterative' (the candidate "
            f"chooses each block's mask inside SparseGPT's loop, as --method metric+iterative "
            f"prunes), got {f.reconstruct!r}"
        )
    if isinstance(f.refit, bool) or not isinstance(f.refit, int) or f.refit < 0:
        raise SearchError(
            f"--refit takes a number of CG iterations >= 0 (0: no refit), got {f.refit!r}"
        )
    if f.calib_windows not in ("prune", "head"):
        raise SearchError(
            f"--calib_windows is 'prune' (the windows `pzshell prune` draws, held-out windows "
            f"clear of them) or 'head' (calibration from the text's first 90%), got "
            f"{f.calib_windows!r}"
        )
    _whole("seed", f.seed, None)


def settings_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += settings_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {vb!r} then, {va!r} now")
    return out
