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
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from ledger.cli._app import STREAM, STREAM_NAME_HELP, cli, fail_on_ledger_error, open_ledger, printable

if TYPE_CHECKING:
    from ledger.api import Ledger

F = TypeVar("F", bound=Callable[..., Any])


@cli.group()
def export() -> None:
    """Write a stream's history out for research: L1 rows, L2 depth, trades, events.

    Each takes the stream, -o/--output FILE (or '-'), -f/--format csv|parquet and
    --from/--to (a seq or an ISO time each, inclusive).

    \b
    Example:
      ledger export l1 csv:l3_data_v3.1 -o l1.csv
      ledger export l2 csv:l3_data_v3.1 -n 5 --every 1s -o depth.parquet
    """


def _safe_name(stream: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stream).strip("_") or "stream"


_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_DEFAULT_FORMAT = {"l1": "csv", "l2": "parquet", "trades": "parquet", "events": "parquet"}


def _output_option(kind: str, default: str) -> Callable[[F], F]:
    return click.option(
        "-o",
        "--output",
        default=None,
        help=f"File to write, or '-' for stdout. Default: {kind}_<stream>.{default} (.csv, .parquet) in this folder.",
    )


def _format_option(default: str) -> Callable[[F], F]:
    return click.option(
        "-f",
        "--format",
        "fmt",
        type=click.Choice(["csv", "parquet"]),
        default=None,
        help=f"csv or parquet (zstd row groups, exact decimals, UTC timestamps). "
        f"Default: the --output file's suffix, else {default}.",
    )


def _range_options(noun: str) -> Callable[[F], F]:
    def decorate(f: F) -> F:
        f = click.option("--to", "end", default=None, help=f"Last {noun} (inclusive): a seq or an ISO time.")(f)
        return click.option(
            "--from", "start", default=None, help=f"First {noun}: a seq, or an ISO time (UTC unless it says)."
        )(f)

    return decorate


def _export_command(what: str, default: str, noun: str) -> Callable[[F], F]:
    """The options every export takes: STREAM, -o, -f, --from/--to (and a one-line error)."""

    def decorate(f: F) -> F:
        f = fail_on_ledger_error(_range_options(noun)(f))
        f = _output_option(what, default)(_format_option(default)(f))
        return export.command(what, epilog=STREAM_NAME_HELP)(click.argument("stream", type=STREAM)(f))  # type: ignore[return-value]

    return decorate


def _export(
    what: str,
    noun: str,
    stream: str,
    output: str | None,
    fmt: str | None,
    start: str | None,
    end: str | None,
    options: dict[str, Any] | None = None,
) -> None:
    """Write ``what`` from --from through --to to ``output`` (a file by :func:`write_file`'s
    rule, or '-' for stdout) in ``fmt`` (else the output's suffix, else the export's default)
    and say how many rows, on stderr when the rows may be on stdout."""
    low, high = parse_range(start, end)
    if fmt is None:
        default = _DEFAULT_FORMAT[what]
        fmt = _FORMATS.get(Path(output).suffix.lower(), default) if output not in (None, "-") else default
    with open_ledger() as ledger:
        if what == "l1":
            _check_projection(ledger, stream)

        def write(out: IO[bytes]) -> int:
            if fmt == "parquet":
                return ledger.export_parquet(what, stream, out, start=low, end=high, **(options or {}))
            return ledger.export_csv(what, stream, out, start=low, end=high, **(options or {}))

        if output == "-":
            _write_stdout(write)
            return
        count, written, replaced = write_file(Path(output or f"{what}_{_safe_name(stream)}.{fmt}"), write)
    # Written through (/dev/stdout, a FIFO), the rows may be on stdout: the note is not.
    click.echo(f"wrote {count} {noun} of {printable(stream)} to {printable(written)}", err=not replaced)


@_export_command("l1", "csv", "row")
def export_l1(stream: str, output: str | None, fmt: str | None, start: str | None, end: str | None) -> None:
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
    _export("l1", "L1 rows", stream, output, fmt, start, end)


@_export_command("l2", "parquet", "event")
@click.option("-n", "--depth", type=click.IntRange(min=1), default=10, show_default=True, help="Levels per side.")
@click.option("--every", default=None, help="Sample every DURATION of event time: 1s, 250ms, 5m, 1h (us ms s m h d).")
@click.option("--on-change", is_flag=True, help="Sample each time the top N levels change (at the end of an event).")
@click.option(
    "--layout",
    type=click.Choice(["wide", "long"]),
    default="wide",
    show_default=True,
    help="wide: one row per sample; long: one row per sample, side and level.",
)
def export_l2(
    stream: str,
    depth: int,
    every: str | None,
    on_change: bool,
    layout: str,
    output: str | None,
    fmt: str | None,
    start: str | None,
    end: str | None,
) -> None:
    """Write the top N levels per side of a stream's book (price, size, order count),
    sampled --every DURATION of event time and/or --on-change of those levels.

    Grid samples fall on whole multiples of the duration (every whole second for 1s), from
    the first event's time rounded up through the last event's, one row per point, also
    where a side is empty or shallower than N (its columns are then empty). A sample at time
    T shows the book after the last event at or before T, as `ledger book --depth N
    --at-time T` does, and never the state inside one venue event (records before the end
    of their event are not shown). With --on-change a row comes at each event end after
    which the top N differ; its time is that event's. Rebuilt from the nearest book
    snapshot, then the log: the stream need not be projected.

    \b
    Columns, wide: time, seq, bid_price_1, bid_size_1, bid_orders_1, .. bid_orders_N,
    ask_price_1 .. ask_orders_N; long: time, seq, side (bid, ask), level, price, size,
    orders. seq is the last event applied.

    \b
    Example:
      ledger export l2 csv:l3_data_v3.1 -n 5 --every 1s -o depth.parquet
      ledger export l2 csv:l3_data_v3.1 -n 3 --on-change --layout long -f csv -o - | head
      ledger export l2 csv:l3_data_v3.1 -n 10 --every 100ms --from '2021-08-03 05:00' --to '2021-08-03 05:10'
    """
    from ledger.services.read.depth import parse_duration

    if every is None and not on_change:
        raise click.UsageError("give --every DURATION and/or --on-change")
    if every is not None:
        try:
            parse_duration(every)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--every") from None
    options = {"depth": depth, "every": every, "on_change": on_change, "layout": layout}
    _export("l2", "L2 rows", stream, output, fmt, start, end, options)


@_export_command("trades", "parquet", "event")
def export_trades(stream: str, output: str | None, fmt: str | None, start: str | None, end: str | None) -> None:
    """Write every execution of a stream: seq, time, price, size, aggressor (B, S, or empty
    where nothing says it), maker_id, taker_id (empty where the venue does not say).

    One row per execution against a resting order (the L3 CSV's TRADE, Coinbase's match,
    Databento's F with the aggressor and taker of the T before it); a Databento T that no F
    follows is a row of its own. Read from the log: the stream need not be projected.

    \b
    Example:
      ledger export trades csv:l3_data_v3.1 -o trades.parquet
      ledger export trades csv:l3_data_v3.1 -f csv -o - | head
    """
    _export("trades", "trades", stream, output, fmt, start, end)


@click.option("--raw", is_flag=True, help="Add each event's input as received: the CSV line, message or record.")
@_export_command("events", "parquet", "event")
def export_events(
    stream: str, output: str | None, fmt: str | None, start: str | None, end: str | None, raw: bool
) -> None:
    """Write a stream's parsed events (the log): seq, time, kind, order_id, side, price,
    size (exact decimals), a venue's own fields (Databento's flags, ts_event, ts_recv,
    sequence, channel) and with --raw the input as received; Parquet in zstd row groups of
    100,000 events.

    \b
    Example:
      ledger export events csv:l3_data_v3.1 -o events.parquet
      ledger export events coinbase:BTC-USD --from 2026-11-30T12:00 --to 2026-11-30T13:00
      ledger export events csv:l3_data_v3.1 --raw -f csv -o - | head
    """
    _export("events", "events", stream, output, fmt, start, end, {"raw": raw})


def parse_range(start: str | None, end: str | None) -> tuple[int | datetime | None, int | datetime | None]:
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
    command = f"ledger project {shlex.quote(printable(stream))}"
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


def write_file(target: Path, write: Callable[[IO[bytes]], int]) -> tuple[int, Path, bool]:
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
