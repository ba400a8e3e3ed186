"""Small helpers with no domain knowledge."""

from __future__ import annotations

import resource
import sys


def runtime_versions() -> dict[str, str]:
    """The versions a measured number depends on: Python, torch, transformers and pzshell (the
    same model file can give other perplexities under another torch or transformers)."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "pzshell"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "?"
    return out


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20
