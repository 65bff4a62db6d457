"""``ledger ingest``: append raw L3 events to the log."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import click

from ledger.cli._app import (
    STREAM,
    cli,
    compact_every_option,
    compacting,
    fail_on_ledger_error,
    open_ledger,
    printable,
    progress_bar,
    stream_name_problem,
)
from ledger.cli._output import echo_csv, echo_json, echo_one, format_option
from ledger.cli._progress import CountingReader, line_ticker
from ledger.cli._signals import stopping_on_signals

if TYPE_CHECKING:
    from ledger.api import Ledger
    from ledger.services.ingest.csv_file import IngestSummary
    from ledger.venues.coinbase.options import ApiCredentials, CaptureSummary, CoinbaseOptions

F = TypeVar("F", bound=Callable[..., Any])


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
@click.argument("files", nargs=-1, required=True, metavar="FILE|FOLDER|GLOB|-...")
@click.option(
    "-s",
    "--stream",
    type=STREAM,
    help="Stream to append to (every file, in the order given): any non-empty text without "
    "control characters. Default: csv:<file name without extension>, one stream per file.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=25_000,
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
@format_option
@fail_on_ledger_error
def ingest_csv_command(
    files: tuple[str, ...],
    stream: str | None,
    batch_size: int,
    flush_interval: float | None,
    no_resume: bool,
    fmt: str,
) -> None:
    """Append L3 CSV files (or '-' for stdin) to the event log.

    Idempotent and resumable: rows already stored are counted as duplicates, a run that was
    killed goes on after its last committed batch. Bad rows go to the rejects table with
    their line number and the reason; gaps in seq_num are recorded and closed when the
    missing rows arrive. On a terminal, progress goes to stderr: a bar for a file, lines
    read and lines/s for stdin. Ctrl-C (or SIGTERM, SIGHUP) stops it cleanly: the lines read so far
    are stored, the summary printed, and the exit code is 130 (143, 129); run the same
    command again to resume. A second Ctrl-C stops at once.

    Several files, a folder (its .csv files) or a quoted glob (expanded by ledger, '**'
    spanning folders) are read in one run, in the order given (a folder's or a glob's files
    in name order): each file is its own stream unless --stream names one for all, and
    keeps its checkpoint, duplicates and rejects; a summary is printed per file, then the
    total. A file that cannot be read (missing, not CSV, its stream busy) is named and
    skipped, the others are ingested, and the exit code is 1.

    \b
    Example:
      ledger ingest csv tests/data/l3-l1/v3.1/l3_data_v3.1.csv
      ledger ingest csv data/ 'archive/2021-08-*.csv'
      ledger ingest csv -s csv:BTC-USD day1.csv day2.csv day3.csv
      tail -f live.csv | ledger ingest csv - -s csv:live --flush-interval 1
    """
    if "-" in files and len(files) > 1:
        raise click.BadParameter("'-' (stdin) is read alone: give it as the only input")
    if len(files) > 1 or _names_many(files[0]):
        _ingest_files(files, stream, batch_size, flush_interval, no_resume, fmt)
        return
    _ingest_file(files[0], stream, batch_size, flush_interval, no_resume, fmt)


def _names_many(argument: str) -> bool:
    """Whether one argument may name several files: a folder, or a glob (see
    ``ledger.services.ingest.inputs``)."""
    path = Path(argument)
    return path.is_dir() or (not path.exists() and any(c in argument for c in "*?["))


def _ingest_file(
    file: str, stream: str | None, batch_size: int, flush_interval: float | None, no_resume: bool, fmt: str
) -> None:
    from ledger.api import Ledger
    from ledger.errors import InputError

    counter = None
    if file == "-":
        fp: BinaryIO = _stdin()
        source, size = "stdin", None
        fp = counter = CountingReader(fp)  # type: ignore[assignment]  # a file that counts its lines
    else:
        path = Path(file)
        try:
            fp = path.open("rb")
            size = path.stat().st_size
        except OSError as e:
            raise InputError(f"cannot read {file}: {e.strerror or e}") from None
        source = str(path.resolve())
    if stream is None:  # checked once the file is known to be there: that is the first thing to fix
        stream = _default_stream(file)
        problem = stream_name_problem(stream)
        if problem is not None:
            fp.close()
            raise click.BadParameter(f"the file name gives no stream name: {problem}; name one with --stream")
    stop = Ledger.stop_request()
    with (
        stopping_on_signals(stop.request) as signalled,
        open_ledger() as ledger,
        fp,
        progress_bar(size, "ingesting") as progress,
        line_ticker(counter, "ingesting stdin") if counter is not None else contextlib.nullcontext(),
    ):
        summary = ledger.ingest_csv(
            fp,
            stream=stream,
            source_name=source,
            batch_size=batch_size,
            flush_interval=flush_interval,
            resume=file != "-" and not no_resume,
            progress=progress,
            stop=stop,
        )
    echo_one(fmt, summary.as_dict(), table=lambda: click.echo(_ingest_report(summary, file)))
    if summary.interrupted:
        # Rule: an ingest stopped by a signal has stored whole lines only, and says how to
        # go on; its exit code is 128 + the signal's number (see ledger.cli._signals).
        last = (summary.resumed_from_line or 2) - 1 + summary.lines
        if file == "-":
            how = "run the same command again to resume (lines read again count as duplicates: none is stored twice)"
        elif no_resume:
            how = "run the same command again without --no-resume to resume after them"
        else:
            how = "run the same command again to resume after them"
        click.echo(f"ledger: stopped by {signalled.name}; the lines up to {last} are stored: {how}", err=True)
        sys.exit(signalled.exit_code)


def _ingest_files(
    arguments: tuple[str, ...],
    stream: str | None,
    batch_size: int,
    flush_interval: float | None,
    no_resume: bool,
    fmt: str,
) -> None:
    """Several files in one run: a summary per file, then the total."""
    import time

    from ledger.api import Ledger
    from ledger.errors import InputError

    try:
        files = Ledger.csv_files(arguments, stream=stream)
    except InputError as e:  # an empty folder, a glob matching nothing, two files for one stream
        raise click.BadParameter(str(e)) from None
    if stream is None:
        for path, name in files:
            problem = stream_name_problem(name)
            if problem is not None:
                raise click.BadParameter(
                    f"the file name {printable(str(path))} gives no stream name: {problem}; name one with --stream"
                )
    sizes = [path.stat().st_size if path.is_file() else 0 for path, _ in files]
    stop = Ledger.stop_request()
    started = time.perf_counter()
    with (
        stopping_on_signals(stop.request) as signalled,
        open_ledger() as ledger,
        progress_bar(sum(sizes), "ingesting") as progress,
    ):
        summaries = ledger.ingest_csv_files(
            [path for path, _ in files],
            stream=stream,
            batch_size=batch_size,
            flush_interval=flush_interval,
            resume=not no_resume,
            progress=progress,
            stop=stop,
        )
    total = _total(summaries, len(files), time.perf_counter() - started)
    if fmt == "json":
        echo_json({"files": [s.as_dict() for s in summaries], "total": total})
    elif fmt == "csv":  # a line per file
        rows = [s.as_dict() for s in summaries]
        echo_csv(list(rows[0]) if rows else ["stream", "source"], [list(r.values()) for r in rows])
    else:
        reports = [_ingest_report(s, s.source) if s.error is None else _failed_report(s) for s in summaries]
        click.echo("\n".join([*reports, _total_report(total)]))
    failed = [s for s in summaries if s.error is not None]
    if any(s.interrupted for s in summaries):
        begun = len(summaries)
        click.echo(
            f"ledger: stopped by {signalled.name} in {printable(summaries[-1].source)}; the lines read so far "
            f"are stored{f' and {len(files) - begun} files were not begun' if begun < len(files) else ''}: "
            "run the same command again to resume",
            err=True,
        )
        sys.exit(signalled.exit_code)
    if failed:
        raise InputError(
            f"{len(failed)} of {len(files)} files could not be ingested (the others were): "
            + "; ".join(printable(s.error or "") for s in failed[:3])
            + (" ..." if len(failed) > 3 else "")
        )


def _total(summaries: Sequence[IngestSummary], files: int, seconds: float) -> dict[str, Any]:
    """The run's figures over every file (its wall time, start-up excluded)."""
    lines = sum(s.lines for s in summaries)
    return {
        "files": files,
        "failed": sum(s.error is not None for s in summaries),
        "not_begun": files - len(summaries),
        "lines": lines,
        "events_stored": sum(s.events_stored for s in summaries),
        "duplicates": sum(s.duplicates for s in summaries),
        "rejects": sum(s.rejects for s in summaries),
        "seconds": round(seconds, 3),
        "events_per_second": round(lines / seconds, 1) if seconds > 0 else 0.0,
    }


def _failed_report(summary: IngestSummary) -> str:
    stored = f" ({summary.lines} lines stored before it)" if summary.lines else ""
    return f"stream {printable(summary.stream)}: not ingested{stored}: {printable(summary.error or '')}"


def _total_report(total: dict[str, Any]) -> str:
    failed = f", {total['failed']} not ingested" if total["failed"] else ""
    begun = f", {total['not_begun']} not begun" if total["not_begun"] else ""
    return (
        f"total: {total['files']} files{failed}{begun}, {total['lines']:,} lines, {total['events_stored']:,} events "
        f"stored, {total['duplicates']:,} duplicates, {total['rejects']:,} rejects, "
        f"{total['events_per_second']:,.0f} lines/s in {total['seconds']:.2f}s"
    )


def _stdin() -> BinaryIO:
    """Standard input, unbuffered: a read returns what the pipe holds, and no buffer lock is
    held while it blocks, so a stop request can cut it short and the process can end while
    a reading thread still waits for input (a buffered reader would hang at exit then)."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (the CLI test runner's)
        return sys.stdin.buffer
    return open(fd, "rb", buffering=0, closefd=False)


def _ingest_report(summary: IngestSummary, file: str) -> str:
    name = printable(summary.stream)
    lines = [
        f"stream {name}: {summary.lines} lines read from {printable(file)}"
        + (f" (resumed at line {summary.resumed_from_line})" if summary.resumed_from_line else "")
        + (" (stopped before the end)" if summary.interrupted else ""),
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
        lines.append(f"  rejected line {sample['line']}: {printable(sample['reason'])}")
    if summary.rejects > 10:
        lines.append(f"  (see all with: ledger rejects {name})")
    return "\n".join(lines)


def compacting_products(
    ledger: Ledger, products: Sequence[str], every: float | None
) -> contextlib.AbstractContextManager[Any]:
    """:func:`~ledger.cli._app.compacting` of the products' streams."""
    from ledger.venues.coinbase.options import stream_name

    return compacting(ledger, [stream_name(p) for p in products], every)


def coinbase_options(func: F) -> F:
    """The options of a Coinbase capture (``ingest coinbase`` and ``run``)."""
    options = [
        click.option(
            "--product",
            "products",
            multiple=True,
            required=True,
            metavar="PRODUCT",
            callback=_check_products,
            help="A product id; repeat for more. Its stream is coinbase:<PRODUCT>.",
        ),
        click.option("--channel", type=click.Choice(["full", "level3"]), default="full", show_default=True),
        click.option(
            "--ws-url",
            default=None,
            help="Websocket feed. Default: Coinbase Exchange's wss://ws-feed.exchange.coinbase.com "
            "(the direct feed, wss://ws-direct.exchange.coinbase.com, takes the same key).",
        ),
        click.option("--rest-url", default=None, help="REST API for level-3 books. Default: Coinbase Exchange's."),
        click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Stop after this many seconds."),
        click.option("--max-messages", type=click.IntRange(min=1), help="Stop after this many feed messages."),
        click.option(
            "--summary-every",
            type=click.FloatRange(min=1),
            default=60,
            show_default=True,
            help="Seconds between progress summaries on stderr.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _check_products(_ctx: click.Context, _param: click.Parameter, products: Sequence[str]) -> Sequence[str]:
    """Each product names a stream, coinbase:<PRODUCT>: an empty product or one with control
    characters is refused like any bad stream name."""
    for product in products:
        if not product:
            raise click.BadParameter("a product id cannot be empty")
        problem = stream_name_problem(f"coinbase:{product}")
        if problem is not None:
            raise click.BadParameter(problem)
    return products


def capture_settings(
    *,
    products: tuple[str, ...],
    channel: str,
    ws_url: str | None,
    rest_url: str | None,
    duration: float | None,
    max_messages: int | None,
    summary_every: float,
) -> tuple[CoinbaseOptions, ApiCredentials]:
    """The capture's options from the command line (the values of :func:`coinbase_options`),
    and the API key from the environment."""
    from ledger.venues.coinbase.options import REST_URL, WS_URL, ApiCredentials, CoinbaseOptions

    credentials = ApiCredentials.from_env()
    options = CoinbaseOptions(
        products=tuple(dict.fromkeys(products)),
        channel=channel,
        ws_url=ws_url or WS_URL,
        rest_url=rest_url or REST_URL,
        duration=duration,
        max_messages=max_messages,
        summary_every=summary_every,
    )
    return options, credentials


@ingest.command("coinbase")
@coinbase_options
@compact_every_option
@format_option
@fail_on_ledger_error
def ingest_coinbase_command(fmt: str, compact_every: float | None, **capture_options: Any) -> None:
    """Capture the Coinbase Exchange order-by-order feed of one or more products.

    Every message is stored as received in stream coinbase:<PRODUCT>, keyed by its
    sequence. A new stream starts from a REST level-3 book; lost messages (a sequence
    jump, a reconnect, a restart after a crash) are recorded as gaps and made up for by
    a new REST book of that product only. Runs until --duration, --max-messages, Ctrl-C
    or SIGTERM, then commits what it received and prints a summary (with --format csv,
    a line per product).

    The API key comes from LEDGER_COINBASE_KEY, LEDGER_COINBASE_SECRET and
    LEDGER_COINBASE_PASSPHRASE (never printed).

    \b
    Example:
      ledger ingest coinbase --product BTC-USD --product ETH-USD --duration 3600
      ledger ingest coinbase --product BTC-USD --compact-every 10m
      ledger project coinbase:BTC-USD
    """
    options, credentials = capture_settings(**capture_options)
    with open_ledger() as ledger, compacting_products(ledger, options.products, compact_every):
        summary = ledger.capture(options, credentials, on_summary=log_capture_progress)
    if fmt == "csv":
        rows = capture_rows(summary)
        echo_csv(list(rows[0]) if rows else ["product"], [list(r.values()) for r in rows])
    else:
        echo_one(fmt, summary.as_dict(), table=lambda: click.echo(capture_report(summary)))


def capture_rows(summary: CaptureSummary) -> list[dict[str, Any]]:
    """The capture's figures, a row per product (its CSV form)."""
    return [dict(vars(p)) for p in summary.products]


def capture_report(summary: CaptureSummary) -> str:
    head = (
        f"captured {sum(p.messages for p in summary.products):,} messages in {summary.seconds:.1f}s "
        f"({summary.messages_per_second:,.0f}/s), {summary.reconnects} reconnects, stopped by {summary.stopped_by}"
    )
    return head + "\n" + _product_table(summary)


def _product_table(summary: CaptureSummary) -> str:
    # gaps: the gap rows the run created (as `ledger gaps --all` lists them); late: messages
    # that came after a later one and closed its jump, which is no gap.
    head = f"  {'product':<12} {'messages':>10} {'stored':>10} {'dups':>6} {'gaps':>5} {'late':>5} {'resyncs':>7} "
    lines = [head + f"{'rejects':>7} {'lag p50/p99 ms':>15}  state"]
    for p in summary.products:
        lag = "-" if p.lag_ms_p50 is None else f"{p.lag_ms_p50:.0f}/{p.lag_ms_p99:.0f}"
        lines.append(
            f"  {printable(p.product):<12} {p.messages:>10,} {p.events_stored:>10,} {p.duplicates:>6,} {p.gaps:>5,} "
            f"{p.late:>5,} {p.resyncs:>7,} {p.rejects:>7,} {lag:>15}  {p.state}"
            + (f" ({p.awaiting_book:,} waiting for a first book, not stored)" if p.awaiting_book else "")
        )
    return "\n".join(lines)


def log_capture_progress(summary: CaptureSummary) -> None:
    click.echo(_product_table(summary), err=True)
