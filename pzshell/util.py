"""Small helpers with no domain knowledge."""

from __future__ import annotations

import resource
import sys


def runtime_versions() -> dict[str, str]:
    """The versions a measured number depends on: Python, torch, transformers, pzshell, and the
    libraries that read the model file and the text (tokenizers, gguf, safetensors, numpy), and
    the CPU (:func:`cpu_description`): the same model file can give other perplexities under
    another of any of them."""
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
    out["cpu"] = cpu_description()
    return out


def cpu_description() -> str:
    """The processor and the instruction set torch uses on it (``AMD EPYC, AVX512``): the same
    prune can round differently on another CPU, and at 2:4 that moves perplexity by ~1%."""
    import platform

    import torch

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name
            )
    except OSError:
        pass
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # an older torch without the query
        cap = "?"
    return f"{name}, {cap}"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20
