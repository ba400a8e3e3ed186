"""The terminal app (Textual): a client of the domain through the worker process.

Nothing outside this package imports it; ``pzshell tui`` (or ``pzshell`` with no subcommand)
starts it.
"""
