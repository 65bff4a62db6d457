"""``ledger export``: a stream's L1 rows, depth, trades and events, as CSV or Parquet."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import stat
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

import click

from ledger.cli._app import STREAM, STREAM_NAME_HELP, cli, fail_on_ledger_error, open_ledger, printable

if TYPE_CHECKING:
    from ledger.api import Ledger


@cli.group()
def export() -> None:
    """Write projected data out.

    \b
    Example:
      ledger export l1 csv:l3_data_v3.1 -o l1.csv
    """


def _safe_name(stream: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stream).strip("_") or "stream"


@export.command("l1", epilog=STREAM_NAME_HELP)
@click.argument("stream", type=STREAM)
@click.option(
    "-o",
    "--output",
    default=None,
    help="File to write, or '-' for stdout. Default: l1_<stream>.csv (or .parquet) in this folder.",
)
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(["csv", "parquet"]),
    default="csv",
    show_default=True,
    help="csv: the L1 CSV format below; parquet: zstd row groups, exact decimals, UTC timestamps.",
)
@click.option("--from", "start", default=None, help="First row: a seq, or an ISO time (UTC unless it says).")
@click.option("--to", "end", default=None, help="Last row (inclusive): a seq or an ISO time.")
@fail_on_ledger_error
def export_l1(stream: str, output: str | None, fmt: str, start: str | None, end: str | None) -> None:
    """Write a stream's L1 rows as CSV: time,bid_price,ask_price,bid_size,ask_size,seq_num.

    UTF-8 with BOM, LF line ends; time with six fractional digits; prices and sizes in their
    shortest exact decimal form. A regular file (or a new one) is written whole or not at
    all: written aside, then renamed over it, keeping its permissions. Anything else (a
    FIFO, /dev/stdout, a device) is written to as it is; a symbolic link is followed to its
    target. The stream must have been projected (`ledger project`); a projection behind
    the log is exported with a warning.

    \b
    With --format parquet it writes a Parquet file instead (seq, time, bid_price, bid_size,
    ask_price, ask_size; the stream, venue and ledger version in its metadata). Either
    format holds the rows from --from through --to (both inclusive; the whole stream by
    default): a seq bounds the rows' seqs, a time their times.

    \b
    Example:
      ledger export l1 csv:l3_data_v3.1 -o l1_data_v3.1.csv
      ledger export l1 csv:l3_data_v3.1 -o - | head
      ledger export l1 csv:l3_data_v3.1 --from 1627942268920660000 --to '2021-08-03 06:00' -o -
      ledger export l1 csv:l3_data_v3.1 -f parquet --from '2021-08-03 05:00' --to '2021-08-03 06:00'
    """
    low, high = _range(start, end)
    with open_ledger() as ledger:
        _check_projection(ledger, stream)

        def write(out: IO[bytes]) -> int:
            if fmt == "parquet":
                return ledger.export_parquet("l1", stream, out, start=low, end=high)
            return ledger.export_l1_csv(stream, out, start=low, end=high)

        if output == "-":
            _write_stdout(write)
            return
        count, written, replaced = _write_file(Path(output or f"l1_{_safe_name(stream)}.{fmt}"), write)
    # Written through (/dev/stdout, a FIFO), the rows may be on stdout: the note is not.
    click.echo(f"wrote {count} L1 rows of {printable(stream)} to {printable(written)}", err=not replaced)


@export.command("events", epilog=STREAM_NAME_HELP)
@click.argument("stream", type=STREAM)
@click.option("-o", "--output", default=None, help="File to write. Default: events_<stream>.parquet in this folder.")
@click.option("--from", "start", default=None, help="First event: a seq, or an ISO time (UTC unless it says).")
@click.option("--to", "end", default=None, help="Last event (inclusive): a seq or an ISO time.")
@fail_on_ledger_error
def export_events(stream: str, output: str | None, start: str | None, end: str | None) -> None:
    """Write a stream's parsed events (the log) as a Parquet file: seq, time, kind,
    order_id, side, price, size (exact decimals), in zstd row groups of 100,000 events.

    \b
    Example:
      ledger export events csv:l3_data_v3.1 -o events.parquet
      ledger export events coinbase:BTC-USD --from 2026-11-30T12:00 --to 2026-11-30T13:00
    """
    low, high = _range(start, end)
    with open_ledger() as ledger:

        def write(out: IO[bytes]) -> int:
            return ledger.export_parquet("events", stream, out, start=low, end=high)

        count, written, _ = _write_file(Path(output or f"events_{_safe_name(stream)}.parquet"), write)
    click.echo(f"wrote {count} events of {printable(stream)} to {printable(written)}", err=True)


def _range(start: str | None, end: str | None) -> tuple[int | datetime | None, int | datetime | None]:
    """The --from and --to of an export: each a seq or a time; two of a kind must be in order."""
    low, high = _bound(start, "--from"), _bound(end, "--to")
    if low is not None and high is not None and type(low) is type(high) and low > high:  # type: ignore[operator]
        raise click.BadParameter(f"--from is after --to ({start} > {end}): the range is empty", param_hint="--from")
    return low, high


def _bound(text: str | None, option: str) -> int | datetime | None:
    """A range bound: a seq (digits) or an ISO date and time, UTC unless it says otherwise."""
    if text is None:
        return None
    if text.strip().isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.strip().removesuffix(" UTC").removesuffix("Z"))
    except ValueError:
        raise click.BadParameter(f"not a seq or an ISO date and time: {text!r}", param_hint=option) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _check_projection(ledger: Ledger, stream: str) -> None:
    """Rule: an export is of a projection. A stream never projected is an error that says how
    to make one (not a file with a header only); a projection behind the log is exported as
    it is, with a warning on stderr saying by how much and how to bring it up to date."""
    [status] = ledger.status(stream)
    command = f"ledger project --stream {shlex.quote(printable(stream))}"
    if status.projected_seq is None:
        raise click.ClickException(
            f"stream {printable(stream)} has no projection yet, so it has no L1 rows: run `{command}` first"
        )
    if status.lag_events:
        click.echo(
            f"warning: the projection of {printable(stream)} is {status.lag_events} events behind the log "
            f"(projected up to seq {status.projected_seq}, the log goes on to seq {status.last_seq}); "
            f"the export ends there: run `{command}` first to include them",
            err=True,
        )


def _write_stdout(write: Callable[[IO[bytes]], int]) -> None:
    try:
        write(sys.stdout.buffer)
        sys.stdout.flush()
    except OSError as e:
        if e.errno == errno.EPIPE:
            raise  # `| head` has what it wanted: click ends quietly
        _drop_stdout()
        raise click.ClickException(f"cannot write to standard output: {e.strerror or e}") from None


def _drop_stdout() -> None:
    """Send what is still buffered for stdout to /dev/null, so that the flush at exit does
    not fail a second time (and print a traceback of its own)."""
    with contextlib.suppress(OSError, ValueError):  # a test runner's stdout has no descriptor
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _write_file(target: Path, write: Callable[[IO[bytes]], int]) -> tuple[int, Path, bool]:
    """Write to ``target`` by the rule of export_l1: the row count, the path written, and
    whether it was a regular file (replaced) rather than written through.

    Rule: only a regular file, or a path where nothing is yet, is replaced, by renaming a
    finished copy over it (so a reader never sees half a file, and a failure leaves the old
    one), with the old file's mode (and owner, where allowed). A symbolic link is followed:
    its target is the file replaced, the link stays. Anything else is written through, as
    `cat > PATH` would: a FIFO's reader gets the rows, /dev/stdout goes to standard output,
    a device gets the bytes (and its error: /dev/full is "no space left"), and none of them
    is ever replaced by a regular file. Any write error is one line saying what and where.
    """

    def failed(e: OSError) -> click.ClickException:
        return click.ClickException(f"cannot write {printable(target)}: {e.strerror or e}")

    try:
        found: os.stat_result | None = os.stat(target)  # through symbolic links
    except FileNotFoundError:
        found = None
    except OSError as e:
        raise failed(e) from None
    if found is not None and stat.S_ISDIR(found.st_mode):
        raise click.ClickException(f"cannot write {printable(target)}: it is a folder")
    if found is not None and not stat.S_ISREG(found.st_mode):
        try:
            with open(target, "wb") as out:
                count = write(out)
        except OSError as e:
            raise failed(e) from None
        return count, target, False
    final = Path(os.path.realpath(target))  # a link's target, existing or not
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "xb") as out:
            count = write(out)
        if found is not None:
            os.chmod(tmp, stat.S_IMODE(found.st_mode))
            if (found.st_uid, found.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(OSError):  # only root may give a file away
                    os.chown(tmp, found.st_uid, found.st_gid)
        os.replace(tmp, final)
    except OSError as e:
        raise failed(e) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return count, final, True
