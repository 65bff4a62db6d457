"""``ledger db``: migrations and the database in use."""

from __future__ import annotations

import click

from ledger.cli._app import cli, fail_on_ledger_error, open_ledger, printable


@cli.group()
def db() -> None:
    """Database housekeeping.

    \b
    Example:
      ledger db upgrade
      ledger db url
    """


@db.command("upgrade")
@fail_on_ledger_error
def db_upgrade() -> None:
    """Apply the schema migrations (other commands do it on first use too).

    \b
    Example:
      LEDGER_DATABASE_URL=postgresql+psycopg://me@localhost/ledger ledger db upgrade
    """
    with open_ledger() as ledger:
        current, head = ledger.schema_revision()
    click.echo(f"schema at revision {current} (head {head})")


@db.command("url")
@click.option("--psql", "for_psql", is_flag=True, help="Print a URL psql (libpq) accepts, without the password.")
@fail_on_ledger_error
def db_url(for_psql: bool) -> None:
    """Print the database URL in use, password hidden.

    The plain form is a SQLAlchemy URL (what LEDGER_DATABASE_URL takes); --psql prints one
    that psql and other libpq tools accept. The embedded PostgreSQL runs only while a ledger
    command uses it: use `ledger psql` to keep it up while you work.

    \b
    Example:
      ledger db url
      psql "$(ledger db url --psql)" -c "SELECT 1"    # with your own server
    """
    with open_ledger() as ledger:
        click.echo(printable(ledger.libpq()[0] if for_psql else ledger.url))
        if ledger.embedded:
            click.echo(
                "(embedded PostgreSQL: it runs while a ledger command uses it; "
                "set LEDGER_DATABASE_URL to use your own server)",
                err=True,
            )
