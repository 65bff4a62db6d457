"""``ledger ingest``: append raw L3 events to the log."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import click

from ledger.cli._app import cli, echo_json, fail_on_ledger_error, json_option, open_db, printable, progress_bar

if TYPE_CHECKING:
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
    from ledger.services.ingest.csv_file import ingest_csv

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
    name = printable(summary.stream)
    lines = [
        f"stream {name}: {summary.lines} lines read from {printable(file)}"
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
        lines.append(f"  rejected line {sample['line']}: {printable(sample['reason'])}")
    if summary.rejects > 10:
        lines.append(f"  (see all with: ledger rejects {name})")
    click.echo("\n".join(lines))


def coinbase_options(func: F) -> F:
    """The options of a Coinbase capture (``ingest coinbase`` and ``run``)."""
    options = [
        click.option(
            "--product",
            "products",
            multiple=True,
            required=True,
            metavar="PRODUCT",
            help="A product id; repeat for more.",
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
@json_option
@fail_on_ledger_error
def ingest_coinbase_command(as_json: bool, **capture_options: Any) -> None:
    """Capture the Coinbase Exchange order-by-order feed of one or more products.

    Every message is stored as received in stream coinbase:<PRODUCT>, keyed by its
    sequence. A new stream starts from a REST level-3 book; lost messages (a sequence
    jump, a reconnect, a restart after a crash) are recorded as gaps and made up for by
    a new REST book of that product only. Runs until --duration, --max-messages, Ctrl-C
    or SIGTERM, then commits what it received and prints a summary.

    The API key comes from LEDGER_COINBASE_KEY, LEDGER_COINBASE_SECRET and
    LEDGER_COINBASE_PASSPHRASE (never printed).

    \b
    Example:
      ledger ingest coinbase --product BTC-USD --product ETH-USD --duration 3600
      ledger project --stream coinbase:BTC-USD
    """
    from ledger.venues.coinbase.capture import Capture, capture

    options, credentials = capture_settings(**capture_options)
    with open_db() as database:
        summary = capture(Capture(database.engine, options, credentials, on_summary=log_capture_progress))
    if as_json:
        echo_json(summary.as_dict())
        return
    click.echo(capture_report(summary))


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
