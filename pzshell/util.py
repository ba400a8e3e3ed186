"""Small helpers with no domain knowledge."""

from __future__ import annotations

import resource
import sys


def runtime_versions() -> dict[str, str]:
    """The versions a measured number depends on: Python, torch, transformers, pzshell, and the
    libraries that read the model file and the text (tokenizers, gguf, safetensors, numpy): the
    same model file can give other perplexities under other versions of any of them."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in (
        "torch",
        "transformers",
        "pzshell",
        "tokenizers",
        "gguf",
        "safetensors",
        "numpy",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "?"
    return out


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20
