"""``ledger sql`` (a query on the ledger database) and ``ledger psql``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import click

from ledger.cli._app import cli, fail_on_ledger_error, open_ledger
from ledger.cli._output import echo_csv, echo_table, json_ready


@cli.command("sql")
@click.argument("query")
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="table: aligned columns; csv: a header and RFC 4180 rows; json: one JSON object per line (it streams).",
)
@click.option("--write", is_flag=True, help="Allow the query to change data (default: a read-only transaction).")
@fail_on_ledger_error
def sql_command(query: str, fmt: str, write: bool) -> None:
    """Run a SQL query on the ledger database (the embedded one too) and print its rows.

    Read-only unless --write. Rows stream: a large result does not fill memory. Exact
    numbers stay exact (JSON numbers written from their decimal text); times are written in
    the one format of every ledger report (ISO 8601 in UTC with microseconds).

    \b
    Example:
      ledger sql "SELECT name, source FROM streams"
      ledger sql "SELECT seq, bid_price, ask_price FROM l1 ORDER BY seq DESC LIMIT 5" --format csv
      ledger sql "SELECT * FROM gaps WHERE status = 'open'" --format json
    """
    with open_ledger() as ledger:
        result = ledger.sql(query, write=write)
        try:
            if fmt == "csv":
                echo_csv(result.columns, result.rows)
            elif fmt == "json":
                _json(result.columns, result.rows)
            elif not result.columns:
                click.echo("(done: the statement returned no rows)")
            else:
                echo_table(result.columns, result.rows)
        finally:
            close = getattr(result.rows, "close", None)
            if close is not None:  # ends the transaction of a result not read to its end
                close()


def _default(o: Any) -> Any:
    ready = json_ready(o)
    return ready if isinstance(ready, str) else str(o)


def _json(columns: list[str], rows: Iterator[tuple[Any, ...]]) -> None:
    import json

    encode = json.JSONEncoder(ensure_ascii=False, default=_default).encode
    for row in rows:
        parts = []
        for name, value in zip(columns, row, strict=True):
            # An exact decimal is written as a JSON number from its own text (never a float).
            text = str(value) if isinstance(value, Decimal) and value.is_finite() else encode(value)
            parts.append(f"{encode(name)}: {text}")
        sys.stdout.write("{" + ", ".join(parts) + "}\n")


@cli.command("psql", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@fail_on_ledger_error
def psql_command(psql_args: tuple[str, ...]) -> None:
    """Open psql on the ledger database, keeping the embedded PostgreSQL up while it runs.

    Arguments after the command go to psql. The password, if any, is handed to psql in its
    environment (PGPASSWORD), never on its command line.

    \b
    Example:
      ledger psql
      ledger psql -c "SELECT count(*) FROM events"
    """
    import os
    import shutil
    import subprocess

    found = shutil.which("psql")
    if found is None:
        raise click.ClickException("psql is not installed (Debian: apt install postgresql-client)")
    with open_ledger() as ledger:
        url, secret = ledger.libpq()
        code = subprocess.call([found, url, *psql_args], env={**os.environ, **secret})
    sys.exit(code)
