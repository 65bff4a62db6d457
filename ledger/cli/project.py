"""``ledger project``, ``ledger book`` and ``ledger snapshots``."""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING, Any

import click

from ledger.cli._app import (
    STREAM,
    STREAM_NAME_HELP,
    cli,
    compact_every_option,
    compacting,
    fail_on_ledger_error,
    level_dict,
    level_table,
    open_ledger,
    printable,
    progress_bar,
    streams_argument,
)
from ledger.cli._output import echo_csv, echo_json, echo_rows, format_option
from ledger.cli._signals import stopping_on_signals
from ledger.services.read.times import iso_time

if TYPE_CHECKING:
    from ledger.api import Ledger, ProjectSettings
    from ledger.services.project.run import ProjectSummary

log = logging.getLogger("ledger")


@cli.command(epilog=STREAM_NAME_HELP)
@streams_argument
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
@click.option(
    "--follow",
    is_flag=True,
    help="After catching up, keep applying new events as ingest appends them, until Ctrl-C or SIGTERM. "
    "Several followers on one database share the streams.",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="With --follow: seconds between looks at the log when no notification comes.",
)
@compact_every_option
@format_option
@fail_on_ledger_error
def project(
    streams: tuple[str, ...],
    skip_gaps: bool,
    error_threshold: int | None,
    from_snapshot: bool,
    snapshot_every: int,
    snapshot_interval: float | None,
    rebuild: bool,
    follow: bool,
    poll: float,
    compact_every: float | None,
    fmt: str,
) -> None:
    """Replay the event log into books and record every best bid/offer change (L1).

    The streams named (all of them when none is) are projected.
    Goes on from where the last run stopped (from its newest book snapshot); nothing is
    written twice. A stream stops at a gap in its seqs (exit code 3) unless --skip-gaps is
    given. With --follow it keeps going as the log grows, woken by ingest (PostgreSQL
    LISTEN/NOTIFY); a stream waiting at a gap goes on when the gap is filled. Start as many
    followers as you like: they split the streams between them, and take over the streams
    of one that stops or dies.

    Ctrl-C (or SIGTERM, SIGHUP) stops it cleanly after the chunk of events in hand, whose
    L1 rows and position are committed: a batch run prints its summary and exits 130 (143,
    129), and the same command run again goes on from there; --follow exits 0. A second
    Ctrl-C stops at once. With --follow, --compact-every folds the streams' events up to
    their projector positions into compressed blocks as it goes (see `ledger db compact`).

    \b
    Example:
      ledger project
      ledger project csv:l3_data_v3 --skip-gaps
      ledger project --rebuild csv:l3_data_v3.1
      ledger project --follow
      ledger project --follow --compact-every 10m
    """
    from ledger.api import ProjectSettings

    if compact_every is not None and not follow:
        raise click.UsageError("--compact-every goes with --follow; after a batch run, fold with `ledger db compact`")

    settings = ProjectSettings(
        skip_gaps=skip_gaps,
        error_threshold=error_threshold,
        from_snapshot=from_snapshot,
        snapshot_every=snapshot_every or None,
        snapshot_interval=snapshot_interval,
    )
    stop = threading.Event()
    with stopping_on_signals(stop.set) as signalled, open_ledger() as ledger:
        if rebuild:
            dropped = ledger.drop_projection(streams)
            log.info("dropped the projection of %s", ", ".join(dropped) or "no stream")
        if follow:
            log.info("following the log; Ctrl-C to stop")
            with compacting(ledger, streams, compact_every):
                summaries = ledger.follow(streams, stop=stop, poll=poll, settings=settings)
        else:
            summaries = _batch(ledger, streams, settings, stop)
    _report(summaries, fmt)
    if signalled.is_set() and not follow:
        # Rule: a batch projection stopped by a signal has committed what it applied, says
        # how to go on, and exits 128 + the signal's number (see ledger.cli._signals).
        again = "the same command without --rebuild" if rebuild else "the same command"
        click.echo(
            f"ledger: stopped by {signalled.name}, what was projected is committed: run {again} again to resume",
            err=True,
        )
        sys.exit(signalled.exit_code)
    stopped = ("stopped_at_gap", "error_threshold", "needs_rebuild", "busy")
    if not follow and any(s.status in stopped for s in summaries):
        sys.exit(3)


def _batch(
    ledger: Ledger, streams: tuple[str, ...], settings: ProjectSettings, stop: threading.Event
) -> list[ProjectSummary]:
    total = None
    if sys.stderr.isatty():
        rows = [r for r in ledger.status() if not streams or r.stream in streams]
        total = sum(r.events if r.lag_events is None else r.lag_events for r in rows)
    with progress_bar(total or None, "projecting") as bar:
        done = 0

        def advance(_stream: str, applied: int) -> None:
            nonlocal done
            done += applied
            if bar is not None:
                bar(done)

        return ledger.project(streams, settings=settings, progress=advance, stop=stop.is_set)


def _report(summaries: list[ProjectSummary], fmt: str) -> None:
    rows = [_summary_row(s) for s in summaries]
    echo_rows(fmt, rows, columns=list(rows[0]) if rows else ["stream"], table=lambda: _report_text(summaries))


def _summary_row(summary: ProjectSummary) -> dict[str, Any]:
    row = summary.as_dict()
    row["gaps_skipped"] = [{"first_seq": a, "last_seq": z} for a, z in summary.gaps_skipped]
    return row


def _report_text(summaries: list[ProjectSummary]) -> None:
    if not summaries:
        click.echo("no streams yet: run `ledger ingest csv FILE` first")
    for s in summaries:
        skipped = f", {len(s.gaps_skipped)} gaps skipped" if s.gaps_skipped else ""
        started = f", restarted from the snapshot at seq {s.from_snapshot}" if s.from_snapshot else ""
        anomalies = ", ".join(f"{k} {v}" for k, v in sorted(s.anomalies.items()) if v)
        click.echo(
            f"stream {printable(s.stream)}: {s.status}, {s.events_applied} events applied, {s.l1_rows} L1 rows "
            f"({s.events_per_second:,.0f} events/s){skipped}{started}, position {s.last_seq}"
            + (f"; anomalies: {anomalies}" if anomalies else "")
        )
        if s.message:
            click.echo(f"  {printable(s.message)}", err=True)


@cli.command(epilog=STREAM_NAME_HELP)
@click.argument("stream", type=STREAM)
@click.option("-n", "--depth", type=click.IntRange(min=1), default=10, show_default=True, help="Levels per side.")
@click.option("--at-seq", type=int, default=None, help="The book after the event with this seq.")
@click.option(
    "--at-time",
    type=str,
    default=None,
    help="The book after the last event at or before this time (ISO 8601, UTC unless it says otherwise).",
)
@click.option("--orders", "show_orders", is_flag=True, help="List every resting order instead of levels.")
@format_option
@fail_on_ledger_error
def book(stream: str, depth: int, at_seq: int | None, at_time: str | None, show_orders: bool, fmt: str) -> None:
    """Show a stream's book now, or at any past seq or time.

    Rebuilt from the nearest book snapshot at or before that point plus the events after it.
    JSON: the stream, seq, time, the gaps crossed (missing) and the levels ({"price",
    "size", "orders"}, best first) or, with --orders, every resting order; CSV: a line per
    level (side B or S, level from 1) or per order.

    \b
    Example:
      ledger book csv:l3_data_v3.1 -n 5
      ledger book csv:l3_data_v3.1 --at-time '2021-08-03 05:00:00' -f json
      ledger book csv:l3_data_v3.1 --at-seq 1627942268920660000 --orders
    """
    from ledger.domain.events import BUY, SELL
    from ledger.services.read.times import parse_time

    if at_seq is not None and at_time is not None:
        raise click.UsageError("give --at-seq or --at-time, not both")
    when = None
    if at_time is not None:
        try:
            when = parse_time(at_time)
        except ValueError:
            raise click.BadParameter(f"not an ISO 8601 date and time: {at_time!r}", param_hint="--at-time") from None
    with open_ledger() as ledger:
        view = ledger.book(stream, at_seq=at_seq, at_time=when)
    b = view.book
    head = {"stream": view.stream, "seq": view.seq, "time": view.time}
    # exact numbers as text: a price may be an int or a Decimal
    items: list[dict[str, Any]]
    if show_orders:
        columns = ["side", "price", "size", "order_id"]
        items = [
            {"side": o.side, "price": str(o.price), "size": str(o.size), "order_id": o.order_id}
            for o in b.iter_orders()
        ]
    else:
        columns = ["side", "level", "price", "size", "orders"]
        items = [
            {"side": side, "level": i, **level_dict(lv)}
            for side in (BUY, SELL)
            for i, lv in enumerate(b.levels(side, depth), start=1)
        ]
    if fmt == "json":
        missing = [{"first_seq": a, "last_seq": z} for a, z in view.missing]
        data: dict[str, Any] = {**head, "from_snapshot": view.from_snapshot, "missing": missing}
        if show_orders:
            data["orders"] = items
        else:
            data["bids"] = [level_dict(lv) for lv in b.levels(BUY, depth)]
            data["asks"] = [level_dict(lv) for lv in b.levels(SELL, depth)]
        echo_json(data)
        return
    if view.missing:
        gaps = ", ".join(f"{a}..{z}" for a, z in view.missing[:5])
        click.echo(f"  warning: {len(view.missing)} gaps crossed, the book may be wrong: {gaps}", err=True)
    if fmt == "csv":
        echo_csv([*head, *columns], ([*head.values(), *item.values()] for item in items))
        return
    when_text = "" if view.time is None else f" ({iso_time(view.time)})"
    click.echo(f"{printable(view.stream)} after seq {view.seq}{when_text}: {len(b)} resting orders")
    if show_orders:
        for o in b.iter_orders():
            side = "BUY " if o.side == BUY else "SELL"
            click.echo(f"{side} {o.price!s:>14} {o.size!s:>12}  {printable(o.order_id)}")
        return
    click.echo("\n".join(level_table(b.levels(BUY, depth), b.levels(SELL, depth))))


@cli.group()
def snapshots() -> None:
    """List and prune the projector's book snapshots.

    \b
    Example:
      ledger snapshots list csv:l3_data_v3.1
      ledger snapshots prune --keep 3 --keep-every 10
    """


@snapshots.command("list", epilog=STREAM_NAME_HELP)
@click.argument("stream", type=STREAM)
@format_option
@fail_on_ledger_error
def snapshots_list(stream: str, fmt: str) -> None:
    """List a stream's book snapshots, newest first: seq, format version, orders, bytes and
    when each was taken.

    \b
    Example:
      ledger snapshots list csv:l3_data_v3.1
      ledger snapshots list csv:l3_data_v3.1 -f csv
    """
    with open_ledger() as ledger:
        infos = ledger.snapshots(stream)
    rows = [dict(vars(i)) for i in infos]
    echo_rows(fmt, rows, columns=["seq", "format_version", "order_count", "size", "created_at"], count="snapshot")


@snapshots.command("prune", epilog=STREAM_NAME_HELP)
@streams_argument
@click.option("--keep", type=click.IntRange(min=1), required=True, help="Keep the newest N snapshots per stream.")
@click.option("--keep-every", type=click.IntRange(min=1), default=None, help="Of the older ones, keep every M-th.")
@format_option
@fail_on_ledger_error
def snapshots_prune(streams: tuple[str, ...], keep: int, keep_every: int | None, fmt: str) -> None:
    """Delete old book snapshots of the streams named (all when none is), so their storage
    stays bounded; says how many it deleted per stream.

    \b
    Example:
      ledger snapshots prune --keep 3
      ledger snapshots prune csv:l3_data_v3.1 --keep 3 --keep-every 10
    """
    with open_ledger() as ledger:
        deleted = ledger.prune_snapshots(streams, keep=keep, keep_every=keep_every)
    rows = [{"stream": name, "deleted": gone} for name, gone in deleted.items()]

    def text() -> None:
        for name, gone in deleted.items():
            click.echo(f"{printable(name)}: deleted {gone} snapshots")

    echo_rows(fmt, rows, columns=["stream", "deleted"], table=text)
