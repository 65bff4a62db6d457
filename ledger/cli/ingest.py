"""``ledger ingest``: append raw L3 events to the log."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO

import click

from ledger.cli._app import cli, echo_json, fail_on_ledger_error, json_option, open_db, progress_bar


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
@json_option
@fail_on_ledger_error
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
    with open_db() as database, fp, progress_bar(size, "ingesting") as progress:
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
        echo_json(summary.as_dict())
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
