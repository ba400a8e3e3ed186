"""The base of every error a user can cause; the CLI turns these into a message and exit 2."""

from __future__ import annotations


class PzError(Exception):
    """A problem with the user's input (model, data, formula, file, setting), not a bug."""
