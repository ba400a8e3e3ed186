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

from .. import atomic
from ..errors import PzError
from ..lang.diagnostics import MetricError

# Subcommand modules, in the order `pzshell --help` lists them. Each is imported for real: a
# command that fails to import is a bug to see, never a command that silently disappears.
_COMMANDS = (
    "parse_cmd",
    "prune_cmd",
    "grad_cmd",
    "eval_cmd",
    "finetune_cmd",
    "report_cmd",
    "structured_cmd",
    "search_cmd",
    "tui_cmd",
)

err_console = Console(stderr=True, highlight=False)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors: exit 2 with usage
        self.print_usage(sys.stderr)
        err_console.print(f"[bold red]error:[/] {message}")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pzshell",
        description="Prune LLMs with symbolic pruning metrics (Pruner-Zero compatible). With no "
        "command (or only options, e.g. `pzshell --model tiny`) it opens the terminal app.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"pzshell {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _COMMANDS:
        importlib.import_module(f".{name}", __name__).register(sub)
    return parser


def _default_to_tui(argv: list[str]) -> list[str]:
    """``pzshell`` alone, or with only option flags (``pzshell --model tiny``), opens the app:
    the command becomes ``pzshell tui ...``. ``--help`` and ``--version`` keep their meaning."""
    if not argv:
        return ["tui"]
    if argv[0].startswith("-") and not {"-h", "--help", "--version"} & set(argv):
        return ["tui", *argv]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_default_to_tui(argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except PzError as e:
        # a formula error draws its caret line to fit the terminal ("error: " takes 7 columns)
        text = e.render(max(40, err_console.width - 7)) if isinstance(e, MetricError) else str(e)
        # escape: the message quotes user input, which may look like rich markup ("[/x]")
        err_console.print(f"[bold red]error:[/] {escape(text)}", markup=True, soft_wrap=True)
        return 2
    except atomic.WriteFailed as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        return 2
    except OSError as e:  # reading: a vanished file, a permission, a device error
        where = f" {e.filename}" if e.filename else ""
        reason = e.strerror or str(e)
        err_console.print(
            f"[bold red]error:[/] input/output failed{escape(where)}: {escape(reason)}",
            soft_wrap=True,
        )
        return 2
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
