"""Measuring a model: perplexity, zero-shot accuracy (lm-eval), forward throughput."""

from .perplexity import PerplexityResult, perplexity

__all__ = ["PerplexityResult", "perplexity"]
