"""``ledger db``: migrations and the database in use."""

from __future__ import annotations

import contextlib
import sys

import click

from ledger.cli._app import cli, fail_on_ledger_error, open_ledger, printable, streams_argument


@cli.group()
def db() -> None:
    """Database housekeeping.

    \b
    Example:
      ledger db upgrade
      ledger db url
      ledger db compact
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


@db.command("compact")
@streams_argument
@click.option(
    "--upto",
    type=int,
    metavar="SEQ",
    help="Fold events up to this seq (default: the projector's position, or the stream's last seq "
    "when it has no projection).",
)
@fail_on_ledger_error
def db_compact(streams: tuple[str, ...], upto: int | None) -> None:
    """Fold streams' older events into compressed blocks: a few bytes an event.

    Events stored one row each (event_rows) are folded, in seq order, into blocks of 4,096
    events held as one compressed array (event_blocks): about a fifth of the bytes for CSV
    events, a quarter for Coinbase messages. Every reader, the events view and SQL included,
    sees the same events byte for byte before and after; the raw input stays recoverable
    (ledger_raw). It goes by default up to the projector's position (events after it are
    what a follower reads next), one transaction per batch of blocks: stop it at any time
    and run it again to go on. Give no STREAM for all streams. PostgreSQL reuses the freed
    space for new rows; VACUUM FULL event_rows gives it back to the disk.

    \b
    Example:
      ledger db compact                      # every stream, up to its projection
      ledger db compact csv:sample --upto 20000
    """
    with open_ledger() as ledger, contextlib.ExitStack() as stack:
        # A bar on a terminal; its length grows as each stream says how much it has to fold.
        bar = (
            stack.enter_context(click.progressbar(length=1, label="compacting", file=sys.stderr))
            if sys.stderr.isatty()
            else None
        )
        todo = 0

        def start(_stream: str, events: int) -> None:
            nonlocal todo
            todo += events
            if bar is not None:
                bar.length = max(todo, 1)

        def advance(_stream: str, events: int) -> None:
            if bar is not None:
                bar.update(events)

        results = ledger.compact(list(streams) or None, upto=upto, start=start, progress=advance)
    for name, folded in results.items():
        if folded.upto is None:
            click.echo(f"{printable(name)}: no events")
            continue
        line = f"{printable(name)}: {folded.events:,} events folded into {folded.blocks:,} blocks"
        line += f" (up to seq {folded.upto})"
        if folded.left:
            line += f"; {folded.left:,} late events below the blocks stay rows"
        click.echo(line)
