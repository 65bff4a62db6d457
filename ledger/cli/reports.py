"""``ledger export``, ``status``, ``gaps`` and ``rejects``."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

from ledger.cli._app import cli, echo_json, fail_on_ledger_error, json_option, open_db


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
    click.echo(f"wrote {count} L1 rows of {stream} to {target.resolve()}")


@cli.command()
@click.argument("stream", required=False)
@json_option
@fail_on_ledger_error
def status(stream: str | None, as_json: bool) -> None:
    """Per stream: events, seq range, open gaps, duplicates, rejects, projector position.

    \b
    Example:
      ledger status
      ledger status csv:l3_data_v3.1 --json
    """
    from ledger.services.status import stream_status

    with open_db() as database, database.engine.connect() as conn:
        rows = stream_status(conn, stream)
    if as_json:
        echo_json([r.as_dict() for r in rows])
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
@json_option
@fail_on_ledger_error
def gaps(stream: str, include_closed: bool, as_json: bool) -> None:
    """List the runs of seqs missing from a stream's log.

    \b
    Example:
      ledger gaps csv:l3_data_v3
      ledger gaps csv:l3_data_v3 --all --json
    """
    from ledger.services.status import gap_rows

    with open_db() as database, database.engine.connect() as conn:
        rows = gap_rows(conn, stream, include_closed=include_closed)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(f"{stream}: no {'' if include_closed else 'open '}gaps")
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
    from ledger.services.status import reject_rows

    with open_db() as database, database.engine.connect() as conn:
        rows = reject_rows(conn, stream, limit=limit)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(f"{stream}: no rejects")
    for r in rows:
        click.echo(f"{r['source']}:{r['line_no']}: {r['reason']}\n    {r['raw']}")
