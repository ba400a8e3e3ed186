"""pzshell: a workbench for pruning LLMs with symbolic pruning metrics."""

__version__ = "0.1.0"
