"""Evaluation: perplexity (and, later, zero-shot accuracy and reports)."""

from .perplexity import PerplexityResult, perplexity

__all__ = ["PerplexityResult", "perplexity"]
