"""The ``ledger`` command line (see :mod:`ledger.cli._app`). Each command's module is
imported when the command is looked up (``ledger --help`` imports none of them);
``cli.commands`` loads them all."""

from ledger.cli._app import cli, main

__all__ = ["cli", "main"]
