"""``ledger export``, ``status``, ``gaps`` and ``rejects``."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ledger.cli._app import cli, echo_json, fail_on_ledger_error, json_option, open_db, printable

if TYPE_CHECKING:
    from ledger.services.read.status import StreamStatus


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
@fail_on_ledger_error
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

    with open_db() as database, database.engine.connect() as conn:
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
    click.echo(f"wrote {count} L1 rows of {printable(stream)} to {printable(target.resolve())}")


@cli.command()
@click.argument("stream", required=False)
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds until Ctrl-C.")
@click.option(
    "--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True, help="Seconds between redraws."
)
@json_option
@fail_on_ledger_error
def status(stream: str | None, watch: bool, interval: float, as_json: bool) -> None:
    """Per stream: events, seq range, gaps, duplicates, rejects, projector position and lag,
    latest book snapshot, last ingest activity.

    With --watch it redraws in place on a terminal (a JSON line per round with --json,
    or a block of text per round when the output is not a terminal).

    \b
    Example:
      ledger status
      ledger status csv:l3_data_v3.1 --json
      ledger status --watch --interval 0.5
    """
    from ledger.services.read.status import stream_status

    with open_db() as database, database.engine.connect() as conn:
        while True:
            rows = stream_status(conn, stream)
            conn.rollback()  # a fresh snapshot of the tables for the next round
            if as_json:
                click.echo(json.dumps([r.as_dict() for r in rows], default=str, indent=None if watch else 2))
            else:
                text = (
                    _status_text(rows)
                    or f"no streams yet in {printable(database.display_url)}: run `ledger ingest` first"
                )
                if watch and sys.stdout.isatty():
                    click.clear()
                    stamp = f"{datetime.now().astimezone():%Y-%m-%d %H:%M:%S}"
                    text = f"{stamp}  (every {interval:g}s, Ctrl-C to stop)\n{text}"
                click.echo(text)
            if not watch:
                return
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                return


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
            f"  events {r.events}, seqs {r.first_seq}..{r.last_seq}, last ingest {r.last_ingest or '-'}\n"
            f"  open gaps {r.open_gaps} ({r.missing_seqs} seqs missing), duplicates {r.duplicates}, "
            f"rejects {r.rejects}\n"
            f"  projector: {projector}; latest book snapshot {snapshot}"
            + (f"\n  {printable(r.projector_message)}" if r.projector_message else "")
            + (
                f"\n  {r.skipped_then_filled} gaps the projector skipped have been filled since: "
                f"`ledger project --rebuild --stream {name}` includes them"
                if r.skipped_then_filled
                else ""
            )
        )
    return "\n".join(blocks)


@cli.command()
@click.argument("stream")
@click.option("--all", "include_closed", is_flag=True, help="Also list gaps that were filled later.")
@json_option
@fail_on_ledger_error
def gaps(stream: str, include_closed: bool, as_json: bool) -> None:
    """List the runs of seqs missing from a stream's log.

    \b
    Example:
      ledger gaps csv:l3_data_v3
      ledger gaps csv:l3_data_v3 --all --json
    """
    from ledger.services.read.status import gap_rows

    with open_db() as database, database.engine.connect() as conn:
        rows = gap_rows(conn, stream, include_closed=include_closed)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(f"{printable(stream)}: no {'' if include_closed else 'open '}gaps")
    for g in rows:
        skipped = " (skipped by the projector)" if g["projector_skipped_at"] else ""
        click.echo(f"{g['first_seq']}..{g['last_seq']}  {g['missing']} missing  {g['status']}{skipped}")


@cli.command()
@click.argument("stream")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show at most this many.")
@json_option
@fail_on_ledger_error
def rejects(stream: str, limit: int | None, as_json: bool) -> None:
    """List the input rows of a stream that could not be stored, with file, line and reason.

    \b
    Example:
      ledger rejects csv:l3_data_v3.1 --limit 20
    """
    from ledger.services.read.status import reject_rows

    with open_db() as database, database.engine.connect() as conn:
        rows = reject_rows(conn, stream, limit=limit)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(f"{printable(stream)}: no rejects")
    for r in rows:
        source, reason, raw = printable(r["source"]), printable(r["reason"]), printable(r["raw"])
        click.echo(f"{source}:{r['line_no']}: {reason}\n    {raw}")
