"""Genetic-programming search for pruning metrics (resumable, deduplicated, parallel)."""

from .evolution import Search, SearchError, SearchSettings
from .fitness import Evaluator, FitnessSettings

__all__ = ["Evaluator", "FitnessSettings", "Search", "SearchError", "SearchSettings"]
