"""``ledger plot``: a picture of a stream's book and trades over a time range."""

from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING

import click

from ledger.cli._app import STREAM, STREAM_NAME_HELP, cli, fail_on_ledger_error, open_ledger, printable
from ledger.cli.export import parse_range, write_file
from ledger.services.read.times import iso_time

if TYPE_CHECKING:
    from ledger.services.read.plot import PlotSummary


@cli.command(epilog=STREAM_NAME_HELP)
@click.argument("stream", type=STREAM)
@click.option("-o", "--output", required=True, help="The picture to write: .png, .svg or .html (the SVG in a page).")
@click.option(
    "--from", "start", default=None, help="Start: a seq, or an ISO time (UTC unless it says). Default: the first event."
)
@click.option("--to", "end", default=None, help="End (inclusive): a seq or an ISO time. Default: the last event.")
@click.option(
    "-n", "--depth", type=click.IntRange(min=1), default=10, show_default=True, help="Levels per side in the heat map."
)
@click.option("--width", type=click.IntRange(min=200, max=20_000), default=1600, show_default=True, help="Pixels.")
@click.option("--height", type=click.IntRange(min=150, max=20_000), default=900, show_default=True, help="Pixels.")
@fail_on_ledger_error
def plot(stream: str, output: str, start: str | None, end: str | None, depth: int, width: int, height: int) -> None:
    """Draw a stream from --from to --to: best bid and ask (and mid) over time, trades as
    points (green: the buyer took liquidity, red: the seller, grey: not said), and the size
    resting in the top N levels as a heat map behind them.

    The book is sampled on about 1,200 points of event time over the range, replayed from
    the log (the stream need not be projected); every trade in the range is drawn. The
    file is written whole or not at all, as `ledger export` does. Needs the optional extra:
    pip install 'ledger[plot]' (matplotlib).

    \b
    Example:
      ledger plot csv:l3_data_v3.1 -o chart.png
      ledger plot csv:l3_data_v3.1 --from '2021-08-03 05:00' --to '2021-08-03 06:00' -o hour.html
    """
    from ledger.services.read.plot import FORMATS, require_matplotlib
    from ledger.services.read.plot import plot as draw

    fmt = FORMATS.get(Path(output).suffix.lower())
    if fmt is None:
        raise click.BadParameter(f"{printable(output)}: give a file ending in .png, .svg or .html", param_hint="-o")
    try:
        require_matplotlib()
    except ImportError as e:
        raise click.ClickException(str(e)) from None
    low, high = parse_range(start, end)
    drawn: list[PlotSummary] = []

    def write(out: IO[bytes]) -> int:
        dpi = 100
        drawn.append(draw(ledger.engine, stream, out, fmt=fmt, start=low, end=high, depth=depth,
                          size=(width / dpi, height / dpi), dpi=dpi))  # fmt: skip
        return drawn[-1].samples

    with open_ledger() as ledger:
        _, written, _ = write_file(Path(output), write)
    [summary] = drawn
    click.echo(
        f"wrote {printable(written)}: {printable(stream)} from {iso_time(summary.first_time)} "
        f"to {iso_time(summary.last_time)}, {summary.samples} book samples, {summary.trades} trades",
        err=True,
    )
