"""``ledger ingest dbn``: Databento MBO files into the event log."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ledger.cli._app import STREAM, fail_on_ledger_error, open_ledger, printable, progress_bar
from ledger.cli._output import echo_csv, echo_json, format_option
from ledger.cli._signals import stopping_on_signals
from ledger.cli.ingest import ingest

if TYPE_CHECKING:
    from ledger.services.ingest.dbn_file import DbnIngestSummary


@ingest.command("dbn")
@click.argument("inputs", nargs=-1, required=True, metavar="FILE|FOLDER|-...")
@click.option(
    "-s",
    "--stream",
    type=STREAM,
    help="Stream to append to, for inputs that each hold one instrument. "
    "Default: databento:<dataset>:<symbol>, one stream per instrument.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=50_000,
    show_default=True,
    help="Records per transaction.",
)
@click.option("--no-resume", is_flag=True, help="Read each file whole even if a killed run left a checkpoint.")
@format_option
@fail_on_ledger_error
def ingest_dbn_command(inputs: tuple[str, ...], stream: str | None, batch_size: int, no_resume: bool, fmt: str) -> None:
    """Append Databento MBO files (.dbn or .dbn.zst, or '-' for stdin) to the event log.

    Several files, a folder of them or a glob (quoted: ledger expands it) are read in the
    time order of their metadata.
    Each instrument is its own stream, databento:<dataset>:<symbol>; every record is kept
    (its bytes, as hex, in raw) with its fields: action, side, exact price, size, order id,
    flags, ts_recv, ts_event, the venue's sequence and channel. Idempotent and resumable:
    records already stored count as duplicates, a killed run goes on after its last
    committed batch; records that cannot be events go to the rejects table with their
    record number and the reason. Ctrl-C (or SIGTERM) stops cleanly after whole records:
    run the same command again to resume.

    \b
    Example:
      ledger ingest dbn esh4-glbx-mdp3-20231224.mbo.dbn.zst esh4-glbx-mdp3-20231225.mbo.dbn.zst
      ledger ingest dbn data/databento/ -f json
      ledger project databento:GLBX.MDP3:ESH4
    """
    from ledger.api import Ledger
    from ledger.errors import InputError
    from ledger.services.ingest.dbn_file import dbn_inputs
    from ledger.services.ingest.inputs import InputsError

    if "-" in inputs and len(inputs) > 1:
        raise InputError("'-' (stdin) is read alone: give it as the only input")
    try:
        files: list[Path] | None = None if inputs == ("-",) else dbn_inputs(inputs)
    except InputsError as e:  # an empty folder, a glob matching nothing: a usage error (exit 2)
        raise click.UsageError(str(e)) from None
    total = None if files is None else sum(path.stat().st_size for path in files)
    stop = Ledger.stop_request()
    with (
        stopping_on_signals(stop.request) as signalled,
        open_ledger() as ledger,
        progress_bar(total, "ingesting") as progress,
    ):
        summaries = ledger.ingest_dbn(
            "-" if files is None else files,
            stream=stream,
            batch_size=batch_size,
            resume=not no_resume,
            progress=progress,
            stop=stop,
        )
    if fmt == "csv":  # a line per input and stream
        rows = [_csv_row(s, counts) for s in summaries for counts in s.streams.values()]
        echo_csv(list(rows[0]) if rows else list(_csv_row(None, None)), [list(r.values()) for r in rows])
    elif fmt == "json":  # an object per input
        echo_json([s.as_dict() for s in summaries])
    else:
        click.echo(_report(summaries))
    # Rule: a stream whose projection the run stored records behind is named, with the
    # command that mends it, whatever the format (on stderr; JSON also says needs_rebuild).
    behind = dict.fromkeys(counts.stream for s in summaries for counts in s.streams.values() if counts.needs_rebuild)
    for name in behind:
        click.echo(
            f"Warning: stream {printable(name)}: records were stored behind its projection, whose book and L1 "
            f"rows lack them; run `ledger project --rebuild {shlex.quote(printable(name))}`",
            err=True,
        )
    failed = [s for s in summaries if s.error]
    if failed:
        for s in failed:
            click.echo(f"Error: {printable(s.error or '')}", err=True)
        click.echo(f"ledger: {len(failed)} of {len(summaries)} inputs could not be read whole", err=True)
        sys.exit(1)
    if any(s.interrupted for s in summaries):
        click.echo(
            f"ledger: stopped by {signalled.name}; the records read so far are stored: "
            "run the same command again to resume",
            err=True,
        )
        sys.exit(signalled.exit_code)


def _csv_row(summary: DbnIngestSummary | None, counts: Any) -> dict[str, Any]:
    """One line of ``--format csv``: an input's figures for one of its streams."""
    return {
        "source": summary and summary.source,
        "stream": counts and counts.stream,
        "records": summary and summary.records,
        "events_stored": counts and counts.events_stored,
        "duplicates": counts and counts.duplicates,
        "conflicting_duplicates": counts and counts.conflicting_duplicates,
        "rejects": counts and counts.rejects,
        "seconds": summary and round(summary.seconds, 3),
        "interrupted": summary and summary.interrupted,
        "error": summary and summary.error,
    }


def _report(summaries: list[DbnIngestSummary]) -> str:
    lines: list[str] = []
    for s in summaries:
        lines.append(
            f"{printable(s.source)}: {s.records:,} records"
            + (f" (resumed at record {s.resumed_from_record:,})" if s.resumed_from_record else "")
            + (" (stopped before the end)" if s.interrupted else "")
            + f", {s.records_per_second:,.0f} records/s in {s.seconds:.2f}s"
            + (f"; stopped: {printable(s.error)}" if s.error else "")
        )
        for counts in s.streams.values():
            dups = f"{counts.duplicates:,} duplicates" + (
                f" ({counts.conflicting_duplicates:,} with other bytes, kept in rejects)"
                if counts.conflicting_duplicates
                else ""
            )
            lines.append(
                f"  stream {printable(counts.stream)}: {counts.events_stored:,} events stored, "
                f"{dups}, {counts.rejects:,} rejects"
            )
        for sample in s.reject_samples[:10]:
            lines.append(f"  rejected record {sample['record']}: {printable(str(sample['reason']))}")
    if len(summaries) > 1:
        stored = sum(s.events_stored for s in summaries)
        records = sum(s.records for s in summaries)
        seconds = sum(s.seconds for s in summaries)
        lines.append(f"total: {records:,} records, {stored:,} events stored in {seconds:.2f}s")
    return "\n".join(lines)
