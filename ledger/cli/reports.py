"""``ledger status``, ``gaps`` and ``rejects``."""

from __future__ import annotations

import contextlib
import shlex
import sys
import threading
from dataclasses import fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from ledger.cli._app import (
    STREAM,
    STREAM_NAME_HELP,
    cli,
    fail_on_ledger_error,
    open_ledger,
    printable,
)
from ledger.cli._output import echo_csv, echo_json, echo_rows, echo_table, format_option
from ledger.cli._signals import stopping_on_signals
from ledger.services.read.times import iso_time

if TYPE_CHECKING:
    from ledger.services.read.status import StreamStatus


@cli.command(epilog=STREAM_NAME_HELP)
@click.argument("stream", required=False, type=STREAM)
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds until Ctrl-C.")
@click.option(
    "--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True, help="Seconds between redraws."
)
@format_option
@fail_on_ledger_error
def status(stream: str | None, watch: bool, interval: float, fmt: str) -> None:
    """Per stream: events, seq range, gaps, duplicates, rejects, projector position and lag,
    latest book snapshot, last ingest activity.

    With --watch it redraws in place on a terminal (a block of text per round when the
    output is not a terminal; with -f json a JSON array per round, one a line; with -f csv
    the lines of each round under one header), until Ctrl-C (or SIGTERM, SIGHUP), which
    ends it after the round in hand, with exit code 0.

    Duplicates are those counted by the ingests of each source (file, stdin, capture): for
    a CSV stream, in the last run of each of its sources; for a capture, over all its runs.

    \b
    Example:
      ledger status
      ledger status csv:l3_data_v3.1 -f json
      ledger status --watch --interval 0.5
    """
    from ledger.services.read.status import StreamStatus

    stop = threading.Event()
    # Rule: --watch ends on a signal between two rounds, never inside one (a query cut
    # short by Ctrl-C used to end it with an error); it runs until stopped, so it exits 0.
    signals = stopping_on_signals(stop.set) if watch else contextlib.nullcontext()
    with signals, open_ledger() as ledger:
        header = True
        while True:
            rows = ledger.status(stream)  # each round in a transaction of its own
            if fmt == "json":
                echo_json([r.as_dict() for r in rows], line=watch)
            elif fmt == "csv":
                columns = [f.name for f in fields(StreamStatus)]
                echo_csv(columns, ([getattr(r, c) for c in columns] for r in rows), header=header)
                header = False
            else:
                text = _status_text(rows) or f"no streams yet in {printable(ledger.url)}: run `ledger ingest` first"
                if watch and sys.stdout.isatty():
                    click.clear()
                    text = f"{iso_time(datetime.now(UTC))}  (every {interval:g}s, Ctrl-C to stop)\n{text}"
                click.echo(text)
            if not watch or stop.wait(interval):
                return


def _folded(r: StreamStatus) -> str:
    return f" ({r.folded_events} in {r.blocks} compressed blocks)" if r.blocks else ""


def _status_text(rows: list[StreamStatus]) -> str:
    blocks = []
    for r in rows:
        name = printable(r.stream)
        if r.projected_seq is None:
            projector = "not run yet"
        else:
            lag = f"{r.lag_events} events" + (f" / {r.lag_seconds:.3f}s" if r.lag_seconds is not None else "")
            projector = f"{r.projector_status} at seq {r.projected_seq}, {lag} behind, {r.l1_rows} L1 rows"
        snapshot = "none" if r.latest_snapshot_seq is None else f"seq {r.latest_snapshot_seq} ({r.latest_snapshot_at})"
        blocks.append(
            f"{name}  ({printable(r.source)})\n"
            f"  events {r.events}{_folded(r)}, seqs {r.first_seq}..{r.last_seq}, last ingest {r.last_ingest or '-'}\n"
            f"  open gaps {r.open_gaps} ({r.missing_seqs} seqs missing), duplicates {r.duplicates}"
            f"{_duplicates_scope(r)}, rejects {r.rejects}\n"
            f"  projector: {projector}; latest book snapshot {snapshot}"
            + (f"\n  {printable(r.projector_message)}" if r.projector_message else "")
            + (
                f"\n  {r.skipped_then_filled} gaps the projector skipped have been filled since: "
                f"`ledger project --rebuild {shlex.quote(name)}` includes them"
                if r.skipped_then_filled
                else ""
            )
        )
    return "\n".join(blocks)


def _duplicates_scope(r: StreamStatus) -> str:
    """What the duplicate count counts, in words (see ledger.services.read.status)."""
    if r.duplicates_scope == "all_runs":
        return " (over all runs)"
    if r.ingest_sources > 1:
        return f" (in the last run of each of its {r.ingest_sources} sources)"
    return " (in the last run)" if r.ingest_sources else ""


@cli.command(epilog=STREAM_NAME_HELP)
@click.argument("stream", type=STREAM)
@click.option("--all", "include_closed", is_flag=True, help="Also list gaps that were filled later.")
@format_option
@fail_on_ledger_error
def gaps(stream: str, include_closed: bool, fmt: str) -> None:
    """List the runs of seqs missing from a stream's log: first and last seq, how many,
    status (open, filled, or snapshot: made up for by the venue's book at resolved_by_seq),
    when found and resolved, and whether the projector skipped it.

    \b
    Example:
      ledger gaps csv:l3_data_v3
      ledger gaps csv:l3_data_v3 --all -f json
    """
    with open_ledger() as ledger:
        rows = ledger.gaps(stream, include_closed=include_closed)

    def table() -> None:
        if not rows:
            click.echo(f"{printable(stream)}: no {'' if include_closed else 'open '}gaps")
            return
        columns = ["first_seq", "last_seq", "missing", "status", "detected_at", "skipped"]
        cells = ([*(g[c] for c in columns[:-1]), "yes" if g["projector_skipped_at"] else ""] for g in rows)
        echo_table(columns, cells, count="gap")

    echo_rows(fmt, rows, columns=_GAP_COLUMNS, table=table)


_GAP_COLUMNS = [
    "first_seq",
    "last_seq",
    "missing",
    "status",
    "detected_at",
    "resolved_at",
    "resolved_by_seq",
    "projector_skipped_at",
]


@cli.command(epilog=STREAM_NAME_HELP)
@click.argument("stream", type=STREAM)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show at most this many.")
@format_option
@fail_on_ledger_error
def rejects(stream: str, limit: int | None, fmt: str) -> None:
    """List the input rows of a stream that could not be stored, with file, line and reason.

    \b
    Example:
      ledger rejects csv:l3_data_v3.1 --limit 20
      ledger rejects csv:l3_data_v3.1 -f csv > rejects.csv
    """
    with open_ledger() as ledger:
        rows = ledger.rejects(stream, limit=limit)

    def table() -> None:
        if not rows:
            click.echo(f"{printable(stream)}: no rejects")
        for r in rows:
            source, reason, raw = printable(r["source"]), printable(r["reason"]), printable(r["raw"])
            click.echo(f"{source}:{r['line_no']}: {reason}\n    {raw}")

    echo_rows(fmt, rows, columns=["source", "line_no", "reason", "raw"], table=table)
