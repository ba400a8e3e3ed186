"""Search for an allocation formula with the metric fixed: *how many* weights each block keeps,
found for one metric on one model.

An allocation formula (:mod:`pzshell.engine.alloc_formula`) turns per-block statistics (``D``
outlier ratio, ``A`` angular distance, ``L`` depth) into each block's sparsity; ``D`` with
``lambda = 0.08`` *is* OWL. This module evolves such formulas, with their spread ``lambda``,
for a fixed metric:

* the block statistics are computed once (one pass over the dense model), so a candidate's
  per-block ratios cost no forward pass; two candidates whose ratios agree to 1e-4 are one
  candidate (a *ratio hit*: ``spread`` is affine-invariant, so ``D``, ``2*D+1`` and
  ``zsn(D)`` are the same allocation);
* the metric's scores are computed once too; a candidate's *screening* fitness is the held-out
  perplexity of the one-shot masks at its ratios (mask and one forward pass: seconds), combined
  over the settings as the metric search combines them (:func:`~.fitness.mean_log`);
* the best few, with uniform and OWL as baselines, then go through the real layer-sequential
  prune (``pzshell prune --allocation FORMULA --owl_lambda LAMBDA``): the *final* fitness, which
  picks the result.

A formula that is constant over the blocks or not finite for one is scored worst, logged with
its reason, and the search goes on. Every candidate is appended to ``allocations.jsonl`` as it is
scored; ``summary.json`` and ``best.json`` are written atomically at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import atomic
from ..engine.alloc_formula import AllocationFormulaError, parse_allocation, spread
from ..engine.layer_ratios import OWL_LAMBDA, block_statistics, fit_to_target
from ..engine.prune import PruneConfig, prune_model
from ..lang import Node, load_metric
from .fitness import WORST, Evaluator, FitnessSettings, mean_log, round_fitness
from .settings import SearchError

LOG_NAME = "allocations.jsonl"
LAMBDAS = (0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.2)
LEAVES = ("D", "A", "L")
UNARY = ("log", "sqrt", "exp", "tanh", "sqr", "neg", "abs", "zsn")
BINARY = ("+", "-", "*", "/")
CONSTANTS = (0.5, 1.0, 2.0)
STALE_LIMIT = 500  # proposals in a row with no new allocation: the reachable ones are done
BASELINES = (("uniform", 0.0), ("D", OWL_LAMBDA))  # uniform; OWL as published


@dataclass(frozen=True)
class AllocationSearchSettings:
    metric: str = "W * sqrt(X)"  # the fixed metric (a formula, a tree file or a shipped name)
    fitness: FitnessSettings = field(default_factory=FitnessSettings)
    budget: int = 120  # distinct allocations screened (ratio hits not counted)
    time_limit: float | None = None  # seconds of screening, statistics included
    max_size: int = 7  # nodes of an allocation formula
    lambdas: tuple[float, ...] = LAMBDAS
    final_top: int = 3  # searched allocations that get the real prune
    seed: int = 0

    def __post_init__(self):
        f = self.fitness
        if f.allocation != "uniform":
            raise SearchError(
                f"an allocation search scores its own allocations; the fitness settings' "
                f"allocation must be uniform, not {f.allocation!r}"
            )
        nm = [t for t in f.types if t != "unstructured"]
        if nm:
            raise SearchError(
                f"an allocation gives each block its own sparsity, but {', '.join(nm)} fixes "
                f"every block's: search allocations at unstructured settings"
            )
        if not isinstance(self.budget, int) or self.budget < 1:
            raise SearchError(f"--budget must be a whole number >= 1, got {self.budget!r}")
        if self.max_size < 1:
            raise SearchError(f"the largest formula must have at least 1 node, got {self.max_size}")
        if self.final_top < 0:
            raise SearchError(f"--final_top must be >= 0, got {self.final_top}")
        bad = [x for x in self.lambdas if not 0 < x < 0.5]
        if not self.lambdas or bad:
            raise SearchError(f"every spread lambda must lie in (0, 0.5), got {self.lambdas}")
        try:
            load_metric(self.metric)
        except Exception as e:  # the metric language's own message
            raise SearchError(f"--metric {self.metric!r}: {e}") from None


@dataclass(frozen=True)
class AllocationProgress:
    screened: int
    budget: int
    ratio_hits: int
    refused: int
    best_fitness: float
    best_formula: str
    best_lambda: float
    baseline: float  # uniform's screening fitness
    elapsed: float
    last: dict | None = None


# ---- formula trees: ("D",), ("c", 1.0), ("sqrt", t), ("+", a, b) ---------------------------------
Tree = tuple


def render(t: Tree) -> str:
    op = t[0]
    if op == "c":
        return f"{t[1]:g}"
    if op in LEAVES:
        return op
    if op in UNARY:
        return f"{op}({render(t[1])})"
    a, b = (render(x) for x in t[1:])
    a = a if len(t[1]) < 3 else f"({a})"
    b = b if len(t[2]) < 3 else f"({b})"
    return f"{a} {op} {b}"


def size(t: Tree) -> int:
    return 1 + sum(size(x) for x in t[1:] if isinstance(x, tuple))


def _subtrees(t: Tree, path=()) -> list[tuple]:
    out = [path]
    for k, x in enumerate(t[1:], 1):
        if isinstance(x, tuple):
            out += _subtrees(x, (*path, k))
    return out


def _get(t: Tree, path) -> Tree:
    for k in path:
        t = t[k]
    return t


def _put(t: Tree, path, new: Tree) -> Tree:
    if not path:
        return new
    k = path[0]
    return (*t[:k], _put(t[k], path[1:], new), *t[k + 1 :])


def random_tree(rng: random.Random, depth: int) -> Tree:
    if depth <= 0 or rng.random() < 0.3:
        return ("c", rng.choice(CONSTANTS)) if rng.random() < 0.15 else (rng.choice(LEAVES),)
    if rng.random() < 0.4:
        return (rng.choice(UNARY), random_tree(rng, depth - 1))
    return (rng.choice(BINARY), random_tree(rng, depth - 1), random_tree(rng, depth - 1))


def mutate(t: Tree, rng: random.Random) -> Tree:
    """A subtree replaced, an operator or leaf swapped for one of its kind, or a constant
    nudged."""
    path = rng.choice(_subtrees(t))
    sub = _get(t, path)
    r = rng.random()
    if sub[0] == "c" and r < 0.6:
        return _put(t, path, ("c", round(sub[1] * rng.choice((0.5, 0.8, 1.25, 2.0)), 4)))
    if r < 0.35:
        if sub[0] in LEAVES:
            new = (rng.choice(LEAVES),)
        elif sub[0] in UNARY:
            new = (rng.choice(UNARY), sub[1])
        elif sub[0] in BINARY:
            new = (rng.choice(BINARY), sub[1], sub[2])
        else:
            new = (rng.choice(LEAVES),)
        return _put(t, path, new)
    if r < 0.5:  # wrap: the subtree becomes an operand
        if rng.random() < 0.5:
            return _put(t, path, (rng.choice(UNARY), sub))
        other = random_tree(rng, 1)
        pair = (sub, other) if rng.random() < 0.5 else (other, sub)
        return _put(t, path, (rng.choice(BINARY), *pair))
    return _put(t, path, random_tree(rng, 2))


# ---- the search ----------------------------------------------------------------------------------
class AllocationSearch:
    """``run()`` screens allocations for ``settings.metric`` until the budget or the time limit,
    then prunes the best few for real. ``evaluator`` may be given (tests share one)."""

    def __init__(
        self,
        settings: AllocationSearchSettings,
        out_dir: str | Path,
        *,
        on_event: Callable | None = None,
        evaluator: Evaluator | None = None,
        device: str | None = "cpu",
    ):
        self.settings = settings
        self.out = Path(out_dir)
        why = atomic.why_not_writable(self.out, is_dir=True)
        if why:
            raise SearchError(f"cannot use {self.out} as a run directory: {why}")
        if (self.out / LOG_NAME).exists():
            raise SearchError(
                f"{self.out} already holds an allocation search ({LOG_NAME}); give a new --out"
            )
        self.on_event = on_event or (lambda ev: None)
        self._evaluator, self.device = evaluator, device
        self._stop = False
        self.tree: Node = load_metric(settings.metric)

    def stop(self) -> None:
        self._stop = True

    def _emit(self, ev) -> None:
        self.on_event(ev)

    def run(self) -> dict:
        s, t0 = self.settings, time.perf_counter()
        ev = self._evaluator or Evaluator(s.fitness, device=self.device)
        self.ev = ev
        t_stats = time.perf_counter()
        terms, sizes = block_statistics(ev.lm.model, ev.calib_ids, want_angular=True)
        stats_seconds = time.perf_counter() - t_stats
        self.terms, self.sizes = terms, sizes
        self.out.mkdir(parents=True, exist_ok=True)
        log = open(self.out / LOG_NAME, "a", encoding="utf-8")  # noqa: SIM115
        rng = random.Random(s.seed)
        self.memo: dict = {}
        seen: dict[tuple, dict] = {}
        scored: list[dict] = []
        counts = {"screened": 0, "ratio_hits": 0, "refused": 0}
        baseline = math.inf
        best: dict | None = None
        texts: set[tuple[str, float]] = set()

        def consider(text: str, lam: float, tree: Tree | None) -> bool:
            """Scores a new (formula, lambda); True when it was a new allocation (not tried,
            and not a ratio hit)."""
            nonlocal best, baseline
            if (text, lam) in texts:
                return False
            texts.add((text, lam))
            rec = self._screen(text, lam, seen)
            rec["tree"] = tree
            key = rec.pop("_key", None)
            if key is None:  # refused before any weight changed (constant, not finite)
                counts["refused"] += 1
            elif rec.get("hit") is not None:
                counts["ratio_hits"] += 1
            else:
                counts["screened"] += 1
                seen[key] = rec
            rec["i"] = sum(counts.values())
            _append(log, {k: v for k, v in rec.items() if k != "tree"})
            if rec["formula"] == "uniform":
                baseline = rec["fitness"]
            elif rec.get("hit") is None and math.isfinite(rec["fitness"]):
                scored.append(rec)
                if best is None or rec["fitness"] < best["fitness"]:
                    best = rec
            self._emit(progress(rec))
            return key is not None and rec.get("hit") is None

        def progress(last: dict) -> AllocationProgress:
            return AllocationProgress(
                counts["screened"],
                s.budget,
                counts["ratio_hits"],
                counts["refused"],
                best["fitness"] if best else math.inf,
                best["formula"] if best else "-",
                best["lambda"] if best else 0.0,
                baseline,
                time.perf_counter() - t0,
                last,
            )

        exhausted = False
        stale = 0  # proposals in a row that were tried already: the space is exhausted

        def going() -> bool:
            return (
                not self._stop
                and counts["screened"] < s.budget
                and (s.time_limit is None or time.perf_counter() - t0 < s.time_limit)
            )

        try:
            for text, lam in BASELINES:
                consider(text, lam, (text,) if text in LEAVES else None)
            for leaf in LEAVES:  # every statistic alone, at every spread
                for lam in s.lambdas:
                    if going():
                        consider(leaf, lam, (leaf,))
            while going():
                if len(scored) < 4 or rng.random() < 0.2:
                    tree, lam = random_tree(rng, 3), rng.choice(s.lambdas)
                else:
                    parent = min(rng.sample(scored, min(3, len(scored))), key=_fit)
                    tree, lam = parent["tree"], parent["lambda"]
                    if rng.random() < 0.25:
                        lam = rng.choice(s.lambdas)
                    else:
                        tree = mutate(tree, rng)
                if size(tree) <= s.max_size and consider(render(tree), lam, tree):
                    stale = 0
                else:
                    stale += 1
                    if stale >= STALE_LIMIT:
                        exhausted = True
                        break
        finally:
            log.close()
        screen_seconds = time.perf_counter() - t0 - stats_seconds

        # the final rung: the real layer-sequential prune, best few against the baselines
        finals: list[dict] = []
        t_fin = time.perf_counter()
        if not self._stop:
            top = sorted(scored, key=_fit)[: s.final_top]
            picks = [{"formula": "uniform", "lambda": 0.0}, {"formula": "D", "lambda": OWL_LAMBDA}]
            picks += [r for r in top if (r["formula"], r["lambda"]) != ("D", OWL_LAMBDA)]
            for r in picks:
                if self._stop:
                    break
                f = self._final(r["formula"], r["lambda"])
                finals.append(f)
                self._emit(progress({"final": f}))
        chosen = min(finals, key=lambda r: r["final"]) if finals else best
        summary = {
            "metric": s.metric,
            "fitness_settings": dataclasses.asdict(s.fitness),
            "budget": s.budget,
            "seed": s.seed,
            "stopped": self._stop,
            "exhausted": exhausted,  # STALE_LIMIT proposals in a row gave no new allocation
            "block_terms": terms,
            **counts,
            "seconds": {
                "statistics": round(stats_seconds, 2),
                "screening": round(screen_seconds, 2),
                "finals": round(time.perf_counter() - t_fin, 2),
            },
            "baseline_uniform": baseline,
            "best_screened": _public(best),
            "top_screened": [_public(r) for r in sorted(scored, key=_fit)[:10]],
            "finals": finals,
            "best": chosen and {k: v for k, v in chosen.items() if k != "tree"},
        }
        atomic.write_json(self.out / "summary.json", summary)
        if chosen:
            atomic.write_json(self.out / "best.json", summary["best"])
        return summary

    # ---- one candidate -----------------------------------------------------------------------
    def _ratios(self, text: str, lam: float) -> dict[str, list[float]]:
        n = len(self.sizes)
        if text == "uniform":
            return {p.label: [p.ratio] * n for p in self.ev.pairs}
        values = parse_allocation(text).values(self.terms)
        return {
            p.label: fit_to_target(spread(values, p.ratio, lam), self.sizes, p.ratio)
            for p in self.ev.pairs
        }

    @torch.no_grad()
    def _screen(self, text: str, lam: float, seen: dict) -> dict:
        """A candidate's record: its ratios and screening fitness, or, when ``seen`` holds its
        ratios already, that candidate's fitness and ``hit`` naming it."""
        t = time.perf_counter()
        rec: dict = {"formula": text, "lambda": lam, "fitness": WORST, "settings": {}}
        rec["reason"] = None
        try:
            ratios = self._ratios(text, lam)
        except AllocationFormulaError as e:
            rec.update(reason=str(e), seconds=round(time.perf_counter() - t, 3))
            return rec
        except Exception as e:  # a candidate never stops the search
            rec.update(reason=f"{type(e).__name__}: {e}", seconds=round(time.perf_counter() - t, 3))
            return rec
        rec["_key"] = tuple(round(r, 4) for p in self.ev.pairs for r in ratios[p.label])
        rec["ratios"] = {k: [round(r, 4) for r in v] for k, v in ratios.items()}
        first = seen.get(rec["_key"])
        if first is not None:  # a ratio hit: the same allocation under another formula
            rec.update(
                fitness=first["fitness"],
                settings=first["settings"],
                reason=first["reason"],
                hit=f"{first['formula']} @ {first['lambda']:g}",
                seconds=round(time.perf_counter() - t, 3),
            )
            return rec
        vals = []
        try:
            for p in self.ev.pairs:
                try:
                    self.ev.apply_masks(self.tree, p, self.memo, ratios=ratios[p.label])
                    ppl = self.ev.heldout_perplexity("full").ppl  # as the metric search scores
                finally:
                    self.ev.restore()
                v = round_fitness(ppl)
                rec["settings"][p.label] = v
                vals.append(v)
            rec["fitness"] = round_fitness(mean_log(vals))
            if not math.isfinite(rec["fitness"]):
                rec.update(fitness=WORST, reason="perplexity is not finite")
        except Exception as e:  # a candidate never stops the search
            rec.update(fitness=WORST, reason=f"{type(e).__name__}: {e}")
        rec["seconds"] = round(time.perf_counter() - t, 3)
        return rec

    def _final(self, text: str, lam: float) -> dict:
        t = time.perf_counter()
        per, vals, reason = {}, [], None
        try:
            ratios = self._ratios(text, lam)  # the screened ones, from the statistics held
            for p in self.ev.pairs:
                cfg = PruneConfig(
                    "metric",
                    p.ratio,
                    p.sparsity_type,
                    metric=self.tree,
                    allocation=text,
                    owl_lambda=lam if text != "uniform" else OWL_LAMBDA,
                    # pruned as the screening scored it (Evaluator.apply_masks)
                    iterative=self.ev.iterative,
                    refit=self.ev.settings.refit,
                )
                given = None if text == "uniform" else ratios[p.label]  # no second dense pass
                try:
                    prune_model(
                        self.ev.lm.model, cfg, self.ev.calib_ids, self.ev.G, block_ratios=given
                    )
                    v = round_fitness(self.ev.heldout_perplexity("full").ppl)
                finally:
                    self.ev.restore()
                per[p.label] = v
                vals.append(v)
            value = round_fitness(mean_log(vals))
        except Exception as e:
            value, reason = WORST, f"{type(e).__name__}: {e}"
        return {
            "formula": text,
            "lambda": lam,
            "final": value,
            "settings": per,
            "reason": reason,
            "seconds": round(time.perf_counter() - t, 2),
        }


def _fit(r: dict) -> float:
    return r["fitness"]


def _public(r: dict | None) -> dict | None:
    if r is None:
        return None
    return {k: r[k] for k in ("formula", "lambda", "fitness", "settings", "ratios") if k in r}


def _append(fh, rec: dict) -> None:
    fh.write(json.dumps(rec, default=float) + "\n")
    fh.flush()
    os.fsync(fh.fileno())
