"""A search's settings: what ``settings.json`` of a run directory holds, validated."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import PzError
from ..lang import load_metric
from ..lang.ops import EXTENDED, PUBLISHED
from ..lang.tree import MetricError
from .fitness import FitnessSettings

KNOWN_SEEDS = ("W", "W*sqrt(X)", "abs(W*W)*mms(G)", "W*G")


class SearchError(PzError):
    pass


@dataclass
class SearchSettings:
    fitness: FitnessSettings = field(default_factory=FitnessSettings)
    population: int = 16
    budget: int = 64  # evaluations (distinct pruning rules)
    batch: int = 8
    tournament: int = 3
    p_crossover: float = 0.7
    p_mutation: float = 0.3
    max_depth: int = 6
    max_size: int = 31
    init_depth: int = 4
    ops: str = "published"  # or "extended"
    p_const: float = 0.0
    promote_quantile: float = 0.5  # cheap stage: only the better half pays for the full stage
    seed: int = 0
    seed_known: bool = True
    seed_formulas: tuple[str, ...] = ()
    final_top: int = 3
    time_limit: float | None = None  # seconds

    def validate(self) -> None:
        if self.population < 2:
            raise SearchError(f"population must be at least 2, got {self.population}")
        if self.budget < self.population:
            raise SearchError(
                f"budget ({self.budget} evaluations) must be at least the population "
                f"({self.population})"
            )
        if self.batch < 1:
            raise SearchError(f"batch must be at least 1, got {self.batch}")
        if self.tournament < 1:
            raise SearchError(f"tournament size must be at least 1, got {self.tournament}")
        for name in ("p_crossover", "p_mutation"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise SearchError(f"{name.replace('_', '-')} must be in [0, 1], got {v}")
        if self.ops not in ("published", "extended"):
            raise SearchError(f"--ops must be 'published' or 'extended', got '{self.ops}'")
        if self.max_depth < 2:
            raise SearchError(f"max depth must be at least 2, got {self.max_depth}")
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

    @property
    def op_names(self) -> tuple[str, ...]:
        return PUBLISHED + EXTENDED if self.ops == "extended" else PUBLISHED

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seed_formulas"] = list(self.seed_formulas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SearchSettings:
        d = dict(d)
        d["fitness"] = FitnessSettings(**d["fitness"])
        d["seed_formulas"] = tuple(d.get("seed_formulas", ()))
        return cls(**d)

    def identity(self) -> dict:
        """What a resumed run must share with the original (the trajectory depends on it)."""
        d = self.to_dict()
        for k in ("budget", "time_limit", "final_top"):
            d.pop(k)
        return d


def settings_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += settings_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {vb!r} then, {va!r} now")
    return out
