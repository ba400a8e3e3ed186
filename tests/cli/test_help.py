"""Every option of every command says what it is for in ``--help``."""

from __future__ import annotations

import argparse

from pzshell.cli import build_parser


def test_every_option_of_every_command_has_a_help_text():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert {"prune", "search", "tui", "structured"} <= set(sub.choices)
    silent = {
        f"{name} {'/'.join(a.option_strings)}"
        for name, p in sub.choices.items()
        for a in p._actions
        if a.option_strings and not (a.help or "").strip()
    }
    assert not silent, f"options without a help text: {sorted(silent)}"
