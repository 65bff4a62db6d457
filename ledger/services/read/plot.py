"""A picture of a stream over a time range: best bid and ask (and mid) as steps, trades as
points (green where the buyer took liquidity, red the seller, grey where nothing says), and
the depth of the top N levels as a heat map behind them (darker: more size resting at that
price then).

Drawn with matplotlib, the optional extra ``pip install 'ledger[plot]'``: the plotting
library of the scientific Python stack, maintained for two decades, with no browser or
server needed to write a PNG, and already in most research environments. A PNG (or SVG) is
written as it is; an HTML page holds the SVG inline (one self-contained file to open
anywhere). Without matplotlib, :func:`plot` raises ImportError saying how to install it.

The data are the module's own outputs, never floats until drawn: the L2 samples of
:mod:`ledger.services.read.depth` on a grid of about ``columns`` points over the range
(the best levels are their first level), and the executions of
:mod:`ledger.services.read.trades`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from ledger.errors import StreamError
from ledger.services.read.depth import depth_batches
from ledger.services.read.research import Bound, seq_range
from ledger.services.read.trades import trades_batches
from ledger.storage.log import Streams

if TYPE_CHECKING:
    import numpy as np

__all__ = ["FORMATS", "PlotSummary", "plot", "require_matplotlib"]

#: The output formats, by file suffix.
FORMATS = {".png": "png", ".svg": "svg", ".html": "html", ".htm": "html"}

_MISSING = "ledger plot needs matplotlib, the optional extra: pip install 'ledger[plot]' (or pip install matplotlib)"


@dataclass(frozen=True)
class PlotSummary:
    """What a picture shows: the range, the grid's step, the samples and trades drawn."""

    first_time: datetime
    last_time: datetime
    step: timedelta
    samples: int
    trades: int


def require_matplotlib() -> Any:
    """matplotlib's pyplot, set to draw files only; ImportError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(_MISSING) from None
    matplotlib.use("Agg")  # files only: never a window
    import matplotlib.pyplot as plt

    return plt


def plot(
    engine: Engine,
    stream: str,
    out: str | Path | IO[bytes],
    *,
    fmt: str = "png",
    start: Bound = None,
    end: Bound = None,
    depth: int = 10,
    columns: int = 1200,
    size: tuple[float, float] = (16, 9),
    dpi: int = 100,
) -> PlotSummary:
    """Draw ``stream`` from ``start`` through ``end`` (seqs or times) to ``out`` (a path or
    a binary file) as ``fmt`` (png, svg or html), ``size`` inches at ``dpi`` (1600x900
    pixels by default), the heat map of the top ``depth`` levels per side."""
    plt = require_matplotlib()
    import numpy as np

    if fmt not in ("png", "svg", "html"):
        raise ValueError(f"format is png, svg or html, not {fmt!r}")
    with engine.connect() as conn:
        bounds = seq_range(conn, Streams(conn).get(stream), start=start, end=end)
    if bounds is None or bounds.first_time is None or bounds.last_time is None:
        raise StreamError(f"stream {stream!r} has no events with a time in that range")
    span = (bounds.last_time - bounds.first_time) // timedelta(microseconds=1)
    step = timedelta(microseconds=max(1, span // max(1, columns)))
    # The grid, by seq: the same events as the range asked for.
    _, batches = depth_batches(engine, stream, depth=depth, every=step, start=bounds.first, end=bounds.last)
    book = _book_arrays(batches, depth)
    _, trade_batches = trades_batches(engine, stream, start=bounds.first, end=bounds.last)
    trades = _trade_arrays(trade_batches)

    fig, ax = plt.subplots(figsize=size, dpi=dpi)
    times = book["time"]
    if len(times):
        _heat_map(ax, fig, book, step, np)
        ax.step(times, book["bid"], where="post", color="#1a9850", linewidth=1.2, label="best bid")
        ax.step(times, book["ask"], where="post", color="#d73027", linewidth=1.2, label="best ask")
        mid = (book["bid"] + book["ask"]) / 2
        ax.step(times, mid, where="post", color="#555555", linewidth=0.8, linestyle="--", label="mid")
    if len(trades["time"]):
        colours = np.where(
            trades["aggressor"] == "B", "#006837", np.where(trades["aggressor"] == "S", "#a50026", "#777777")
        )
        area = 8 + 40 * np.sqrt(trades["size"] / max(float(trades["size"].max()), 1e-12))
        ax.scatter(trades["time"], trades["price"], s=area, c=colours, edgecolors="white", linewidths=0.4,
                   zorder=3, label="trades (green: buyer took, red: seller took)")  # fmt: skip
    ax.set_title(
        f"{stream}  {bounds.first_time.astimezone(UTC):%Y-%m-%d %H:%M:%S} .. "
        f"{bounds.last_time.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC  "
        f"(book every {_duration(step)}, {len(trades['time'])} trades)"
    )
    if len(times):
        ax.set_ylim(*_price_window(book, np))
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel("price")
    ax.grid(True, linewidth=0.3, alpha=0.5)
    ax.legend(loc="upper left", fontsize="small")
    fig.autofmt_xdate()
    fig.tight_layout()
    _save(fig, out, fmt, stream)
    plt.close(fig)
    return PlotSummary(bounds.first_time, bounds.last_time, step, len(times), len(trades["time"]))


def _book_arrays(batches: Any, depth: int) -> dict[str, Any]:
    """Times (numpy datetime64, UTC), best bid and ask, and every level's price and size as
    floats (NaN where a side is shallower), from wide L2 batches."""
    import numpy as np
    import pyarrow as pa

    listed = list(batches)
    if not listed or sum(b.num_rows for b in listed) == 0:
        return {"time": np.array([], dtype="datetime64[us]")}
    table = pa.Table.from_batches(listed)

    def column(name: str) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in table[name].to_pylist()])

    prices = [column(f"{side}_price_{i}") for side in ("bid", "ask") for i in range(1, depth + 1)]
    sizes = [column(f"{side}_size_{i}") for side in ("bid", "ask") for i in range(1, depth + 1)]
    times = np.array([t.replace(tzinfo=None) for t in table["time"].to_pylist()], dtype="datetime64[us]")
    return {
        "time": times,
        "bid": column("bid_price_1"),
        "ask": column("ask_price_1"),
        "prices": np.stack(prices, axis=1),
        "sizes": np.stack(sizes, axis=1),
    }


def _trade_arrays(batches: Any) -> dict[str, Any]:
    import numpy as np

    times, prices, sizes, sides = [], [], [], []
    for batch in batches:
        for row in batch.to_pylist():
            times.append(row["time"].replace(tzinfo=None))
            prices.append(float(row["price"]))
            sizes.append(float(row["size"]))
            sides.append(row["aggressor"] or "")
    return {
        "time": np.array(times, dtype="datetime64[us]"),
        "price": np.array(prices),
        "size": np.array(sizes),
        "aggressor": np.array(sides, dtype=object),
    }


def _heat_map(ax: Any, fig: Any, book: dict[str, Any], step: timedelta, np: Any) -> None:
    """The size resting at each price (binned) at each sample, as an image behind the lines."""
    prices, sizes = book["prices"], book["sizes"]
    low, high = _price_window(book, np)
    shown = ~np.isnan(prices) & (prices >= low) & (prices <= high)
    if not shown.any():
        return
    # One row per price tick when there are at most 1,000 of them (each level a band), else
    # 240 rows over the window.
    distinct = np.unique(prices[shown])
    tick = float(np.min(np.diff(distinct))) if len(distinct) > 1 else 1.0
    base, top = float(distinct[0]), float(distinct[-1])
    bins = round((top - base) / tick) + 1
    if bins > 1000:
        base, top, bins = low, high, 240
        tick = (top - base) / (bins - 1)
    rows = np.clip(((prices[shown] - base) / tick).round().astype(int), 0, bins - 1)
    grid = np.zeros((bins, len(book["time"])))
    cols = np.broadcast_to(np.arange(len(book["time"]))[:, None], prices.shape)
    np.add.at(grid, (rows, cols[shown]), sizes[shown])
    grid[grid == 0] = np.nan
    import matplotlib.dates as mdates
    from matplotlib.colors import LogNorm

    first = mdates.date2num(book["time"][0])  # type: ignore[no-untyped-call]
    last = mdates.date2num(book["time"][-1] + np.timedelta64(step // timedelta(microseconds=1), "us"))  # type: ignore[no-untyped-call]
    image = ax.imshow(
        grid,
        origin="lower",
        aspect="auto",
        extent=(first, last, base - tick / 2, base + (bins - 1) * tick + tick / 2),
        cmap="Blues",
        norm=LogNorm(vmin=max(float(np.nanmin(grid)), 1e-12), vmax=max(float(np.nanmax(grid)), 1e-12)),
        interpolation="nearest",
        alpha=0.85,
        zorder=0,
    )
    ax.xaxis_date()
    fig.colorbar(image, ax=ax, pad=0.01, label="size resting at the price (top levels)")


def _price_window(book: dict[str, Any], np: Any) -> tuple[float, float]:
    """The prices shown: from the lowest best bid to the highest best ask of the range, with
    a margin of a fifth of that on each side (deeper levels are cut off, so the top of the
    book keeps the height of the picture)."""
    best = np.concatenate([book["bid"], book["ask"]])
    best = best[~np.isnan(best)]
    if not len(best):
        best = book["prices"][~np.isnan(book["prices"])]
    low, high = float(best.min()), float(best.max())
    margin = max((high - low) / 5, abs(high) * 1e-4, 1e-9)
    return low - margin, high + margin


def _save(fig: Any, out: str | Path | IO[bytes], fmt: str, stream: str) -> None:
    if fmt != "html":
        fig.savefig(out, format=fmt)
        return
    svg = io.BytesIO()
    fig.savefig(svg, format="svg")
    body = svg.getvalue().decode("utf-8")
    body = body[body.index("<svg") :]  # the XML prologue does not belong inside HTML
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>ledger plot: {escape(stream)}</title>\n"
        "<style>body{margin:0;font-family:sans-serif} svg{width:100%;height:auto}</style>\n"
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    ).encode()
    if isinstance(out, str | Path):
        Path(out).write_bytes(page)
    else:
        out.write(page)


def _duration(step: timedelta) -> str:
    micros = step // timedelta(microseconds=1)
    for unit, size in (("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000), ("ms", 1_000)):
        if micros >= size:
            return f"{micros / size:.3g}{unit}"
    return f"{micros}us"
