"""The ``pzshell`` command: a thin layer over the library, one module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a ``run(args) -> int`` function. User errors (:class:`~pzshell.errors.PzError`)
become a one-paragraph message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rich.console import Console
from rich.markup import escape

from ..errors import PzError

# Subcommand modules, in the order `pzshell --help` lists them. A module that is not there yet
# (work in progress in another change) is skipped.
_COMMANDS = (
    "parse_cmd", "prune_cmd", "grad_cmd", "eval_cmd", "finetune_cmd", "report_cmd",
    "structured_cmd", "search_cmd",
)  # fmt: skip

err_console = Console(stderr=True, highlight=False)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors: exit 2 with usage
        self.print_usage(sys.stderr)
        err_console.print(f"[bold red]error:[/] {message}")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pzshell",
        description="Prune LLMs with symbolic pruning metrics (Pruner-Zero compatible).",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"pzshell {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _COMMANDS:
        try:
            mod = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except PzError as e:
        # escape: the message quotes user input, which may look like rich markup ("[/x]")
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
