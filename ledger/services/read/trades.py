"""Trades: every execution of a stream, from its typed events (the venue's rules), with
time, seq, price, size, the aggressor's side and the maker's and taker's order ids where
the venue gives them.

**Which events are executions.** A :class:`~ledger.domain.events.Fill` (a resting order
executed against: the L3 CSV's TRADE, Coinbase's ``match``) and a
:class:`~ledger.domain.events.Trade` naming a resting order (Databento's ``F``) are each
one execution against that order, the *maker*: one row. A ``Trade`` naming no resting
order is a *print* (Databento's ``T``: the aggressor's side and order): the fills that
follow it in the same exchange event at the same price are its executions, and take its
aggressor side and taker id; a print that no fill follows (in its exchange event, before the
next print) is a row of its own, its maker unknown. So each execution is one row, and the
sizes add up to the traded volume whichever way the venue reports it.

**The taker.** The print's where there is one, else the fill's; a venue whose stored
columns leave it out but whose raw messages name it (Coinbase's ``match``:
``Venue.fill_taker``) has it read from the raw of those rows, one query a chunk.

**The aggressor.** The side that took liquidity: the print's where there is one, else the
event's (Coinbase says it), else the side opposite to the maker's when the maker's side is
known (an execution is a taker's order meeting a resting one on the other side: the L3 CSV's
``trade_side`` is the resting order's side). None where nothing says it.

    >>> tape = TradeTape()
    >>> tape.feed([trade(1, 10, 3, aggressor=BUY, taker_id="t", flags=0),
    ...            trade(2, 10, 1, aggressor=BUY, order_id="m1", flags=0),
    ...            trade(3, 10, 2, aggressor=BUY, order_id="m2", flags=0), mark(4)])  # doctest: +NORMALIZE_WHITESPACE
    [TradeRow(seq=2, time=None, price=10, size=1, aggressor='B', maker_id='m1', taker_id='t'),
     TradeRow(seq=3, time=None, price=10, size=2, aggressor='B', maker_id='m2', taker_id='t')]
    >>> tape.feed([fill(5, "m3", SELL, 9, 4)])
    [TradeRow(seq=5, time=None, price=9, size=4, aggressor='B', maker_id='m3', taker_id=None)]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy.engine import Engine

from ledger.domain.events import BUY, LAST, SELL, Record
from ledger.services.project.replay import read_ahead
from ledger.services.read.research import Bound, decimal_type, seq_range, stream_metadata, timestamp_type
from ledger.storage.log import EventLog, Streams
from ledger.storage.research import EventRows
from ledger.venues import venue

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["TradeRow", "TradeTape", "trades_batches"]

_OTHER = {BUY: SELL, SELL: BUY}


class TradeRow(NamedTuple):
    """One execution: the seq and time of its record, price, size, the aggressor's side
    (``B``, ``S`` or None), the maker's and the taker's order ids (None where unknown)."""

    seq: int
    time: Any
    price: Any
    size: Any
    aggressor: str | None
    maker_id: str | None
    taker_id: str | None


class TradeTape:
    """Typed events in, executions out (see the module). Pure; it keeps the print of the
    exchange event in hand across calls to :meth:`feed`, so events may come in chunks."""

    def __init__(self) -> None:
        self._print: Record | None = None  # the print whose fills may follow
        self._matched = False  # whether a fill has taken it

    def feed(self, events: Sequence[Record]) -> list[TradeRow]:
        out: list[TradeRow] = []
        for event in events:
            kind = event[0]
            if kind == "fill":  # (..., order_id, side, price, size, keep_at_zero, aggressor, taker_id)
                self._fill(event, event[5], event[6], event[7], event[8], event[10], event[11], out)
            elif kind == "trade":  # (..., price, size, aggressor, order_id, taker_id)
                if event[8] is None:
                    self._flush(out)
                    self._print, self._matched = event, False
                else:
                    self._fill(event, event[8], None, event[5], event[6], event[7], event[9], out)
            if event[3] & LAST:
                self._flush(out)
        return out

    def close(self) -> list[TradeRow]:
        """The print in hand, when no fill took it (the log ends inside its event)."""
        out: list[TradeRow] = []
        self._flush(out)
        return out

    def _fill(self, event: Record, maker: str, side: str | None, price: Any, size: Any, aggressor: str | None,
              taker: str | None, out: list[TradeRow]) -> None:  # fmt: skip
        printed = self._print
        if printed is not None and printed[5] == price:
            self._matched = True
            aggressor = printed[7] or aggressor
            taker = printed[9] or taker
        if aggressor is None and side is not None:
            aggressor = _OTHER.get(side)
        out.append(TradeRow(event[1], event[2], price, size, aggressor, maker, taker))

    def _flush(self, out: list[TradeRow]) -> None:
        printed = self._print
        if printed is not None and not self._matched:
            out.append(TradeRow(printed[1], printed[2], printed[5], printed[6], printed[7], None, printed[9]))
        self._print = None


def trades_batches(
    engine: Engine, stream: str, *, start: Bound = None, end: Bound = None, chunk: int = 100_000
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema and record batches of ``stream``'s executions from ``start`` through
    ``end`` (seqs or times, inclusive): seq, time, price, size, aggressor, maker_id,
    taker_id, in seq order, up to ``chunk`` rows a batch."""
    import pyarrow as pa

    with engine.connect() as conn:
        stream_id = Streams(conn).get(stream)
        found = venue(Streams(conn).source(stream_id))
        rules = found.rules()
        bounds = seq_range(conn, stream_id, start=start, end=end)
        scale = 0 if bounds is None else EventRows(conn, stream_id, start=bounds.first, end=bounds.last).scale()
    number = decimal_type(scale)
    schema = pa.schema(
        [
            ("seq", pa.int64()),
            ("time", timestamp_type()),
            ("price", number),
            ("size", number),
            ("aggressor", pa.string()),
            ("maker_id", pa.string()),
            ("taker_id", pa.string()),
        ],
        metadata=stream_metadata(engine, stream, "trades"),
    )

    def batch(rows: list[TradeRow]) -> pa.RecordBatch:
        columns = [list(c) for c in zip(*rows, strict=True)]
        columns[1] = [_time(t) for t in columns[1]]
        return pa.RecordBatch.from_arrays(
            [pa.array(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
        )

    def batches() -> Iterator[pa.RecordBatch]:
        if bounds is None:
            return
        tape = TradeTape()
        rows: list[TradeRow] = []
        records_read = read_ahead(
            engine, stream_id, after=bounds.first - 1, upto=bounds.last, chunk=20_000, extra=found.fields
        )
        for records in records_read:
            found_rows = tape.feed(rules.events(records))
            if found.fill_taker is not None:
                found_rows = _with_takers(engine, stream_id, found_rows, found.fill_taker)
            rows += found_rows
            while len(rows) >= chunk:
                yield batch(rows[:chunk])
                rows = rows[chunk:]
        rows += tape.close()
        if rows:
            yield batch(rows)

    return schema, batches()


def _with_takers(
    engine: Engine, stream_id: int, rows: list[TradeRow], taker_of: Callable[[str], str | None]
) -> list[TradeRow]:
    """``rows`` with the taker read from the raw message of each execution that has none."""
    missing = [row.seq for row in rows if row.taker_id is None and row.maker_id is not None]
    if not missing:
        return rows
    with engine.connect() as conn:
        raws = EventLog(conn).raw_of(stream_id, missing)
    out = []
    for row in rows:
        raw = raws.get(row.seq) if row.taker_id is None and row.maker_id is not None else None
        taker = None if raw is None else taker_of(raw)
        out.append(row if taker is None else row._replace(taker_id=taker))
    return out


def _time(ts: datetime | str | None) -> datetime | None:
    return datetime.fromisoformat(ts) if isinstance(ts, str) else ts
