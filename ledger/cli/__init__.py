"""The ``ledger`` command line (see :mod:`ledger.cli._app`)."""

from ledger.cli import db, export, ingest, ingest_dbn, live, plot, project, reports, sql  # noqa: F401  (they register their commands)
from ledger.cli._app import cli, main

__all__ = ["cli", "main"]
