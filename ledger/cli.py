"""The ``ledger`` command line: a thin click layer over the services.

Each command parses its options, opens the database, calls one service function and turns
a :class:`~ledger.errors.LedgerError` into a one-line error and a non-zero exit code.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click
import psycopg
import sqlalchemy as sa

from ledger.db import Database, open_database
from ledger.errors import LedgerError, first_line

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("ledger")


def _json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(func)


@contextmanager
def _database() -> Iterator[Database]:
    try:
        with open_database() as db:
            yield db
    except LedgerError as e:
        raise click.ClickException(str(e)) from e


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _fail_on_ledger_error(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LedgerError as e:
            raise click.ClickException(str(e)) from e
        except (sa.exc.DBAPIError, psycopg.Error) as e:  # the one boundary for driver errors
            raise click.ClickException(f"database error: {first_line(e)}") from e

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log more (SQL-level details stay off).")
@click.version_option(package_name="ledger")
def cli(verbose: bool) -> None:
    """Rebuild limit order books from Level-3 market data kept in PostgreSQL.

    Uses LEDGER_DATABASE_URL when set; otherwise an embedded PostgreSQL under LEDGER_HOME.

    \b
    Example:
      ledger ingest csv l3_data_v3.1.csv
      ledger project
      ledger export l1 csv:l3_data_v3.1 -o l1.csv
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="ledger: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("alembic", "sqlalchemy", "psycopg"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # After a lost connection the pool logs each failed reset with a traceback; the command
    # itself says what happened and what to do.
    logging.getLogger("sqlalchemy.pool").setLevel(logging.WARNING if verbose else logging.CRITICAL)


# -- db ------------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Database housekeeping.

    \b
    Example:
      ledger db upgrade
      ledger db url
    """


@db.command("upgrade")
@_fail_on_ledger_error
def db_upgrade() -> None:
    """Apply the schema migrations (other commands do it on first use too).

    \b
    Example:
      LEDGER_DATABASE_URL=postgresql+psycopg://me@localhost/ledger ledger db upgrade
    """
    from ledger.db import current_revision, head_revision

    with _database() as database, database.engine.connect() as conn:
        click.echo(f"schema at revision {current_revision(conn)} (head {head_revision()})")


@db.command("url")
@_fail_on_ledger_error
def db_url() -> None:
    """Print the database URL in use, password hidden.

    \b
    Example:
      ledger db url
    """
    with _database() as database:
        click.echo(database.display_url)
        if database.embedded:
            click.echo(
                "(embedded PostgreSQL: it runs while a ledger command uses it; "
                "set LEDGER_DATABASE_URL to use your own server)",
                err=True,
            )


# -- ingest --------------------------------------------------------------------------------


@cli.group()
def ingest() -> None:
    """Append raw L3 events to the event log.

    \b
    Example:
      ledger ingest csv l3_data_v3.1.csv --stream csv:demo
    """


def _default_stream(path: str) -> str:
    return "csv:stdin" if path == "-" else "csv:" + Path(path).stem


@ingest.command("csv")
@click.argument("file", metavar="FILE|-")
@click.option("--stream", help="Stream to append to. Default: csv:<file name without extension>.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Lines per transaction.",
)
@click.option(
    "--flush-interval",
    type=click.FloatRange(min=0.01),
    default=None,
    help="Seconds after which a partial batch is committed anyway (for '-' fed live).",
)
@click.option("--no-resume", is_flag=True, help="Read from the first line even if a killed run left a checkpoint.")
@_json_option
@_fail_on_ledger_error
def ingest_csv_command(
    file: str,
    stream: str | None,
    batch_size: int,
    flush_interval: float | None,
    no_resume: bool,
    as_json: bool,
) -> None:
    """Append an L3 CSV file (or '-' for stdin) to the event log.

    Idempotent and resumable: rows already stored are counted as duplicates, a run that was
    killed goes on after its last committed batch. Bad rows go to the rejects table with
    their line number and the reason; gaps in seq_num are recorded and closed when the
    missing rows arrive.

    \b
    Example:
      ledger ingest csv tests/data/l3-l1/v3.1/l3_data_v3.1.csv
      tail -f live.csv | ledger ingest csv - --stream csv:live --flush-interval 1
    """
    from ledger.errors import InputError
    from ledger.services.ingest_csv import ingest_csv

    stream = stream or _default_stream(file)
    if file == "-":
        fp: BinaryIO = sys.stdin.buffer
        source, size = "stdin", None
    else:
        path = Path(file)
        try:
            fp = path.open("rb")
            size = path.stat().st_size
        except OSError as e:
            raise InputError(f"cannot read {file}: {e.strerror or e}") from None
        source = str(path.resolve())
    with _database() as database, fp, _progress(size, "ingesting") as progress:
        summary = ingest_csv(
            database.engine,
            fp,
            stream=stream,
            source=source,
            batch_size=batch_size,
            flush_interval=flush_interval,
            resumable=file != "-" and not no_resume,
            progress=progress,
        )
    if as_json:
        _print_json(summary.as_dict())
        return
    lines = [
        f"stream {summary.stream}: {summary.lines} lines read from {file}"
        + (f" (resumed at line {summary.resumed_from_line})" if summary.resumed_from_line else ""),
        f"  events stored   {summary.events_stored}",
        f"  duplicates      {summary.duplicates}"
        + (
            f" ({summary.conflicting_duplicates} with different content, kept in rejects)"
            if summary.conflicting_duplicates
            else ""
        ),
        f"  rejects         {summary.rejects}",
        f"  open gaps       {summary.open_gaps} ({summary.missing_seqs} seqs missing)",
        f"  speed           {summary.events_per_second:,.0f} lines/s in {summary.seconds:.2f}s",
    ]
    for sample in summary.reject_samples[:10]:
        lines.append(f"  rejected line {sample['line']}: {sample['reason']}")
    if summary.rejects > 10:
        lines.append(f"  (see all with: ledger rejects {summary.stream})")
    click.echo("\n".join(lines))


@contextmanager
def _progress(total: int | None, label: str) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on a terminal (stderr); nothing when output is piped."""
    if total is None or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        done = 0

        def update(position: int) -> None:
            nonlocal done
            bar.update(position - done)
            done = position

        yield update


# -- project -------------------------------------------------------------------------------


@cli.command()
@click.option("--stream", "streams", multiple=True, help="Stream to project (repeatable). Default: all.")
@click.option("--skip-gaps", is_flag=True, help="Go on across missing seqs, and record that it did.")
@click.option(
    "--error-threshold",
    type=click.IntRange(min=0),
    default=None,
    help="Stop a stream once it has more book anomalies (unknown orders, overfills, crossed "
    "books) than this. Default: never stop, only report.",
)
@click.option(
    "--from-snapshot/--from-start",
    default=True,
    show_default=True,
    help="On restart, rebuild the book from the newest good snapshot (else from the first event).",
)
@click.option(
    "--snapshot-every",
    type=click.IntRange(min=0),
    default=250_000,
    show_default=True,
    help="Save the book every N events (0: never by count).",
)
@click.option(
    "--snapshot-interval",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Also save the book every SECONDS of a long run.",
)
@click.option("--rebuild", is_flag=True, help="Drop the streams' L1 rows, snapshots and position first.")
@_json_option
@_fail_on_ledger_error
def project(
    streams: tuple[str, ...],
    skip_gaps: bool,
    error_threshold: int | None,
    from_snapshot: bool,
    snapshot_every: int,
    snapshot_interval: float | None,
    rebuild: bool,
    as_json: bool,
) -> None:
    """Replay the event log into books and record every best bid/offer change (L1).

    Goes on from where the last run stopped (from its newest book snapshot); nothing is
    written twice. A stream stops at a gap in its seqs (exit code 3) unless --skip-gaps is
    given.

    \b
    Example:
      ledger project
      ledger project --stream csv:l3_data_v3 --skip-gaps
      ledger project --rebuild --stream csv:l3_data_v3.1
    """
    from ledger.services.project import ProjectOptions
    from ledger.services.project import project as run_project
    from ledger.services.project import rebuild as drop_projection
    from ledger.services.status import stream_status

    options = ProjectOptions(
        skip_gaps=skip_gaps,
        error_threshold=error_threshold,
        from_snapshot=from_snapshot,
        snapshot_every=snapshot_every or None,
        snapshot_interval=snapshot_interval,
    )
    with _database() as database:
        if rebuild:
            dropped = drop_projection(database.engine, list(streams) or None)
            log.info("dropped the projection of %s", ", ".join(dropped) or "no stream")
        total = None
        if sys.stderr.isatty():
            with database.engine.connect() as conn:
                rows = [r for r in stream_status(conn) if not streams or r.stream in streams]
            total = sum(r.events if r.lag_events is None else r.lag_events for r in rows)
        with _progress(total or None, "projecting") as bar:
            done = 0

            def advance(_stream: str, applied: int) -> None:
                nonlocal done
                done += applied
                if bar is not None:
                    bar(done)

            summaries = run_project(database.engine, streams=list(streams) or None, options=options, progress=advance)
    if as_json:
        _print_json([s.as_dict() for s in summaries])
    else:
        if not summaries:
            click.echo("no streams yet: run `ledger ingest csv FILE` first")
        for s in summaries:
            skipped = f", {len(s.gaps_skipped)} gaps skipped" if s.gaps_skipped else ""
            started = f", restarted from the snapshot at seq {s.from_snapshot}" if s.from_snapshot else ""
            anomalies = ", ".join(f"{k} {v}" for k, v in sorted(s.anomalies.items()) if v)
            click.echo(
                f"stream {s.stream}: {s.status}, {s.events_applied} events applied, {s.l1_rows} L1 rows "
                f"({s.events_per_second:,.0f} events/s){skipped}{started}, position {s.last_seq}"
                + (f"; anomalies: {anomalies}" if anomalies else "")
            )
            if s.message:
                click.echo(f"  {s.message}", err=True)
    if any(s.status in ("stopped_at_gap", "error_threshold", "needs_rebuild", "busy") for s in summaries):
        sys.exit(3)


@cli.command()
@click.argument("stream")
@click.option("--depth", type=click.IntRange(min=1), default=10, show_default=True, help="Levels per side.")
@click.option("--at-seq", type=int, default=None, help="The book after the event with this seq.")
@click.option(
    "--at-time",
    type=str,
    default=None,
    help="The book after the last event at or before this time (ISO, UTC unless it says otherwise).",
)
@click.option("--orders", "show_orders", is_flag=True, help="List every resting order instead of levels.")
@_json_option
@_fail_on_ledger_error
def book(stream: str, depth: int, at_seq: int | None, at_time: str | None, show_orders: bool, as_json: bool) -> None:
    """Show a stream's book now, or at any past seq or time.

    Rebuilt from the nearest book snapshot at or before that point plus the events after it.

    \b
    Example:
      ledger book csv:l3_data_v3.1 --depth 5
      ledger book csv:l3_data_v3.1 --at-time '2021-08-03 05:00:00' --json
      ledger book csv:l3_data_v3.1 --at-seq 1627942268920660000 --orders
    """
    from datetime import UTC, datetime

    from ledger.domain.events import BUY, SELL
    from ledger.services.book_view import book_at

    if at_seq is not None and at_time is not None:
        raise click.UsageError("give --at-seq or --at-time, not both")
    when = None
    if at_time is not None:
        try:
            when = datetime.fromisoformat(at_time.strip().removesuffix(" UTC").removesuffix("Z"))
        except ValueError:
            raise click.BadParameter(f"not an ISO date and time: {at_time!r}", param_hint="--at-time") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    with _database() as database:
        view = book_at(database.engine, stream, at_seq=at_seq, at_time=when)
    b = view.book
    if as_json:
        data: dict[str, Any] = {
            "stream": view.stream,
            "seq": view.seq,
            "time": None if view.time is None else view.time.isoformat(),
            "from_snapshot": view.from_snapshot,
            "missing": view.missing,
        }
        if show_orders:
            data["orders"] = [
                {"side": o.side, "price": str(o.price), "size": str(o.size), "order_id": o.order_id}
                for o in b.iter_orders()
            ]
        else:
            data["bids"] = [[str(lv.price), str(lv.size), lv.orders] for lv in b.levels(BUY, depth)]
            data["asks"] = [[str(lv.price), str(lv.size), lv.orders] for lv in b.levels(SELL, depth)]
        _print_json(data)
        return
    when_text = "" if view.time is None else f" ({view.time.isoformat()})"
    click.echo(f"{view.stream} after seq {view.seq}{when_text}: {len(b)} resting orders")
    if view.missing:
        gaps = ", ".join(f"{a}..{z}" for a, z in view.missing[:5])
        click.echo(f"  warning: {len(view.missing)} gaps crossed, the book may be wrong: {gaps}", err=True)
    if show_orders:
        for o in b.iter_orders():
            click.echo(f"{'BUY ' if o.side == BUY else 'SELL'} {o.price!s:>14} {o.size!s:>12}  {o.order_id}")
        return
    bids, asks = b.levels(BUY, depth), b.levels(SELL, depth)
    click.echo(f"{'orders':>7} {'bid size':>12} {'bid':>12} | {'ask':<12} {'ask size':<12} {'orders':<7}")
    for i in range(max(len(bids), len(asks))):
        left = f"{bids[i].orders:>7} {bids[i].size!s:>12} {bids[i].price!s:>12}" if i < len(bids) else " " * 33
        right = f"{asks[i].price!s:<12} {asks[i].size!s:<12} {asks[i].orders:<7}" if i < len(asks) else ""
        click.echo(f"{left} | {right}".rstrip())


@cli.group()
def snapshots() -> None:
    """List and prune the projector's book snapshots.

    \b
    Example:
      ledger snapshots list csv:l3_data_v3.1
      ledger snapshots prune --keep 3 --keep-every 10
    """


@snapshots.command("list")
@click.argument("stream")
@_json_option
@_fail_on_ledger_error
def snapshots_list(stream: str, as_json: bool) -> None:
    """List a stream's book snapshots, newest first.

    \b
    Example:
      ledger snapshots list csv:l3_data_v3.1
    """
    from ledger.storage.log import Streams
    from ledger.storage.projection import Snapshots

    with _database() as database, database.engine.connect() as conn:
        infos = Snapshots(conn).infos(Streams(conn).get(stream))
    if as_json:
        _print_json([{**i.__dict__, "created_at": i.created_at.isoformat()} for i in infos])
        return
    if not infos:
        click.echo(f"{stream}: no snapshots")
    for i in infos:
        click.echo(
            f"seq {i.seq}  {i.order_count} orders  {i.size} bytes  v{i.format_version}  "
            f"{i.created_at:%Y-%m-%d %H:%M:%S}"
        )


@snapshots.command("prune")
@click.option("--stream", "streams", multiple=True, help="Stream to prune (repeatable). Default: all.")
@click.option("--keep", type=click.IntRange(min=1), required=True, help="Keep the newest N snapshots per stream.")
@click.option("--keep-every", type=click.IntRange(min=1), default=None, help="Of the older ones, keep every M-th.")
@_fail_on_ledger_error
def snapshots_prune(streams: tuple[str, ...], keep: int, keep_every: int | None) -> None:
    """Delete old book snapshots so their storage stays bounded.

    \b
    Example:
      ledger snapshots prune --keep 3
      ledger snapshots prune --keep 3 --keep-every 10 --stream csv:l3_data_v3.1
    """
    from ledger.storage.log import Streams
    from ledger.storage.projection import Snapshots

    with _database() as database, database.engine.begin() as conn:
        known = {name: sid for sid, name, _ in Streams(conn).all()}
        for name in streams:
            Streams(conn).get(name)
        for name in streams or sorted(known):
            gone = Snapshots(conn).prune(known[name], keep=keep, keep_every=keep_every)
            click.echo(f"{name}: deleted {gone} snapshots")


# -- export --------------------------------------------------------------------------------


@cli.group()
def export() -> None:
    """Write projected data out.

    \b
    Example:
      ledger export l1 csv:l3_data_v3.1 -o l1.csv
    """


def _safe_name(stream: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stream).strip("_") or "stream"


@export.command("l1")
@click.argument("stream")
@click.option(
    "-o",
    "--output",
    default=None,
    help="File to write, or '-' for stdout. Default: l1_<stream>.csv in this folder.",
)
@_fail_on_ledger_error
def export_l1(stream: str, output: str | None) -> None:
    """Write a stream's L1 rows as CSV: time,bid_price,ask_price,bid_size,ask_size,seq_num.

    UTF-8 with BOM, LF line ends; time with six fractional digits; prices and sizes in their
    shortest exact decimal form. The file is written whole or not at all.

    \b
    Example:
      ledger export l1 csv:l3_data_v3.1 -o l1_data_v3.1.csv
      ledger export l1 csv:l3_data_v3.1 -o - | head
    """
    from ledger.storage.log import Streams
    from ledger.storage.projection import L1Rows

    with _database() as database, database.engine.connect() as conn:
        stream_id = Streams(conn).get(stream)
        if output == "-":
            count = L1Rows(conn).export_csv(stream_id, sys.stdout.buffer)
            sys.stdout.flush()
            return
        target = Path(output or f"l1_{_safe_name(stream)}.csv")
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as out:
                count = L1Rows(conn).export_csv(stream_id, out)
            tmp.replace(target)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise click.ClickException(f"cannot write {target}: {e.strerror or e}") from None
        finally:
            tmp.unlink(missing_ok=True)
    click.echo(f"wrote {count} L1 rows of {stream} to {target.resolve()}")


# -- reports -------------------------------------------------------------------------------


@cli.command()
@click.argument("stream", required=False)
@_json_option
@_fail_on_ledger_error
def status(stream: str | None, as_json: bool) -> None:
    """Per stream: events, seq range, open gaps, duplicates, rejects, projector position.

    \b
    Example:
      ledger status
      ledger status csv:l3_data_v3.1 --json
    """
    from ledger.services.status import stream_status

    with _database() as database, database.engine.connect() as conn:
        rows = stream_status(conn, stream)
    if as_json:
        _print_json([r.as_dict() for r in rows])
        return
    if not rows:
        click.echo(f"no streams yet in {database.display_url}: run `ledger ingest csv FILE` first")
    for r in rows:
        click.echo(
            f"{r.stream}  ({r.source})\n"
            f"  events {r.events}, seqs {r.first_seq}..{r.last_seq}\n"
            f"  open gaps {r.open_gaps} ({r.missing_seqs} seqs missing), duplicates {r.duplicates}, "
            f"rejects {r.rejects}\n"
            f"  projector: "
            + (
                "not run yet"
                if r.projected_seq is None
                else f"{r.projector_status} at seq {r.projected_seq}, {r.lag_events} events behind, {r.l1_rows} L1 rows"
            )
            + (f"\n  {r.projector_message}" if r.projector_message else "")
            + (
                f"\n  {r.skipped_then_filled} gaps the projector skipped have been filled since: "
                f"`ledger project --rebuild --stream {r.stream}` includes them"
                if r.skipped_then_filled
                else ""
            )
        )


@cli.command()
@click.argument("stream")
@click.option("--all", "include_closed", is_flag=True, help="Also list gaps that were filled later.")
@_json_option
@_fail_on_ledger_error
def gaps(stream: str, include_closed: bool, as_json: bool) -> None:
    """List the runs of seqs missing from a stream's log.

    \b
    Example:
      ledger gaps csv:l3_data_v3
      ledger gaps csv:l3_data_v3 --all --json
    """
    from ledger.services.status import gap_rows

    with _database() as database, database.engine.connect() as conn:
        rows = gap_rows(conn, stream, include_closed=include_closed)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo(f"{stream}: no {'' if include_closed else 'open '}gaps")
    for g in rows:
        skipped = " (skipped by the projector)" if g["projector_skipped_at"] else ""
        click.echo(f"{g['first_seq']}..{g['last_seq']}  {g['missing']} missing  {g['status']}{skipped}")


@cli.command()
@click.argument("stream")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show at most this many.")
@_json_option
@_fail_on_ledger_error
def rejects(stream: str, limit: int | None, as_json: bool) -> None:
    """List the input rows of a stream that could not be stored, with file, line and reason.

    \b
    Example:
      ledger rejects csv:l3_data_v3.1 --limit 20
    """
    from ledger.services.status import reject_rows

    with _database() as database, database.engine.connect() as conn:
        rows = reject_rows(conn, stream, limit=limit)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo(f"{stream}: no rejects")
    for r in rows:
        click.echo(f"{r['source']}:{r['line_no']}: {r['reason']}\n    {r['raw']}")


def main() -> None:
    cli(prog_name="ledger")


if __name__ == "__main__":
    main()
