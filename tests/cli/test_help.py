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


def test_the_method_suffixes_the_help_names_are_read_from_the_command_line():
    from pzshell.cli.prune_cmd import job_from_args

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    method_help = next(a.help for a in sub.choices["prune"]._actions if a.dest == "prune_method")
    assert "+reconstruct" in method_help and "+iterative" in method_help
    for method, iterative in (("metric+reconstruct", False), ("metric+iterative", True)):
        args = parser.parse_args(["prune", "--method", method, "--metric", "W * sqrt(X)"])
        job = job_from_args(args)
        assert (job.method, job.reconstruct, job.iterative) == ("metric", True, iterative)


def test_a_metric_method_without_a_formula_names_the_flags_and_the_header_names_the_method(
    capsys,
):
    from pzshell.cli import main

    for method in ("metric", "metric+iterative", "metric+reconstruct"):
        assert main(["prune", "--model", "/nonexistent/model-dir", "--method", method]) == 2
        err = capsys.readouterr().err
        assert f"--method {method} prunes with a formula of yours" in err
        assert "--metric FORMULA or --json_tree FILE" in err
    fast = ["--model", "tiny", "--nsamples", "2", "--seqlen", "32", "--eval-windows", "1"]
    argv = ["prune", *fast, "--method", "metric+iterative", "--metric", "W * sqrt(X)"]
    assert main(argv) == 0
    err = capsys.readouterr().err  # the header, as the summary and results.json say
    assert "method=metric+iterative" in err
    assert main(["prune", *fast, "--method", "wanda", "--reconstruct"]) == 0
    assert "method=wanda+reconstruct" in capsys.readouterr().err
