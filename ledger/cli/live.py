"""``ledger watch`` (the live top of a stream's book) and ``ledger run`` (capture and project)."""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime
from typing import Any

import click

from ledger.cli._app import (
    STREAM,
    STREAM_NAME_HELP,
    cli,
    compact_every_option,
    fail_on_ledger_error,
    level_dict,
    level_table,
    open_ledger,
    printable,
)
from ledger.cli._output import echo_csv, echo_json, echo_one, format_option
from ledger.cli._signals import stopping_on_signals
from ledger.cli.ingest import (
    capture_report,
    capture_rows,
    capture_settings,
    coinbase_options,
    compacting_products,
    log_capture_progress,
)
from ledger.services.read.times import iso_time


@cli.command(epilog=STREAM_NAME_HELP)
@click.argument("stream", type=STREAM)
@click.option("-n", "--depth", type=click.IntRange(min=1), default=10, show_default=True, help="Levels per side.")
@click.option(
    "--fps", type=click.FloatRange(min=0.1, max=60), default=10, show_default=True, help="Most redraws per second."
)
@format_option
@fail_on_ledger_error
def watch(stream: str, depth: int, fps: float, fmt: str) -> None:
    """Show a stream's top levels live, redrawn as ingest appends events (Ctrl-C to stop).

    The book is rebuilt at the head of the log (newest snapshot, then replay), then moved
    on by each new batch, woken by ingest's notifications. A redraw happens only when the
    top levels change, at most --fps times a second, the latest state winning. When the
    output is not a terminal, each change is one line; -f json makes it a JSON object per
    line ({"stream", "seq", "bids", "asks"}, levels as {"price", "size", "orders"}), -f csv
    a CSV line per level under one header.
    A stream that does not exist yet is waited for (as `tail -F` waits for a file), and a
    long stream's book is rebuilt with a word on stderr. Ctrl-C (or SIGTERM, SIGHUP) ends
    it, with exit code 0.

    \b
    Example:
      ledger watch coinbase:BTC-USD -n 5
      ledger watch csv:live -f json | head
    """
    tty = sys.stdout.isatty() and fmt == "table"
    stop = threading.Event()
    header = True
    # Rule: watch runs until stopped: a signal ends it between two frames, exit code 0.
    with stopping_on_signals(stop.set), open_ledger() as ledger:
        try:

            def say(message: str) -> None:
                click.echo(printable(message), err=True)

            for view in ledger.watch(stream, depth=depth, max_fps=fps, stop=stop.is_set, say=say):
                if fmt == "json":
                    bids = [level_dict(lv) for lv in view.bids]
                    asks = [level_dict(lv) for lv in view.asks]
                    echo_json({"stream": stream, "seq": view.seq, "bids": bids, "asks": asks}, line=True)
                elif fmt == "csv":
                    rows = [
                        (stream, view.seq, side, i, lv.price, lv.size, lv.orders)
                        for side, levels in (("B", view.bids), ("S", view.asks))
                        for i, lv in enumerate(levels, start=1)
                    ]
                    echo_csv(["stream", "seq", "side", "level", "price", "size", "orders"], rows, header=header)
                    header = False
                elif tty:
                    now = iso_time(datetime.now(UTC))
                    head = f"{printable(stream)} at seq {view.seq}   {now}   (Ctrl-C to stop)"
                    warning = f"\n{len(view.missing)} gaps crossed: the book may be wrong" if view.missing else ""
                    click.echo("\x1b[H\x1b[J" + "\n".join([head, *level_table(view.bids, view.asks)]) + warning)
                else:
                    left = " ".join(f"{lv.price}x{lv.size}" for lv in view.bids)
                    right = " ".join(f"{lv.price}x{lv.size}" for lv in view.asks)
                    click.echo(f"{printable(stream)} seq {view.seq}  bids {left or '-'} | asks {right or '-'}")
        except BrokenPipeError:  # `| head` closed the pipe: nothing more to show
            sys.stderr.close()


@cli.command()
@coinbase_options
@compact_every_option
@click.option(
    "--snapshot-every",
    type=click.IntRange(min=0),
    default=250_000,
    show_default=True,
    help="Save each book every N events (0: never by count).",
)
@click.option(
    "--snapshot-interval",
    type=click.FloatRange(min=0.1),
    default=300.0,
    show_default=True,
    help="Also save each book every SECONDS.",
)
@format_option
@fail_on_ledger_error
def run(
    snapshot_every: int, snapshot_interval: float, fmt: str, compact_every: float | None, **capture_options: Any
) -> None:
    """Capture Coinbase products and project them live, in one process.

    The capture of `ledger ingest coinbase` and the follower of `ledger project --follow`
    run side by side: each commit of the capture wakes the follower through a bounded
    queue, so L1 rows land milliseconds after their events. Watch the books with
    `ledger watch` and the streams with `ledger status --watch` in other terminals.
    Stops on --duration, --max-messages, Ctrl-C or SIGTERM.

    \b
    Example:
      ledger run --product BTC-USD --product ETH-USD
      ledger run --product BTC-USD --compact-every 10m     # older events folded as it goes
      ledger watch coinbase:BTC-USD -n 5
    """
    from ledger.api import ProjectSettings

    options, credentials = capture_settings(**capture_options)
    settings = ProjectSettings(snapshot_every=snapshot_every or None, snapshot_interval=snapshot_interval)
    with open_ledger() as ledger, compacting_products(ledger, options.products, compact_every):
        summary, projected = ledger.run_live(options, credentials, settings=settings, on_summary=log_capture_progress)
    if fmt == "csv":  # a line per product: its capture's figures, then its projection's
        by_stream = {s.stream: s for s in projected}
        rows = []
        for row in capture_rows(summary):
            done = by_stream.get(row["stream"])
            rows.append(
                {
                    **row,
                    "projection_status": done and done.status,
                    "events_applied": done and done.events_applied,
                    "l1_rows": done and done.l1_rows,
                    "last_seq": done and done.last_seq,
                }
            )
        echo_csv(list(rows[0]) if rows else ["product"], [list(r.values()) for r in rows])
        return

    def text() -> None:
        click.echo(capture_report(summary))
        for s in projected:
            click.echo(
                f"projected {printable(s.stream)}: {s.status}, {s.events_applied} events, {s.l1_rows} L1 rows, "
                f"at seq {s.last_seq}"
            )

    echo_one(fmt, {"capture": summary.as_dict(), "projection": [s.as_dict() for s in projected]}, table=text)
