"""L2 depth: the top N levels per side (price, size, order count) of a stream's book, sampled
on a grid of event time and/or whenever they change, replayed from the log.

**The samples.** With ``every`` (a duration), a sample falls on each whole multiple of it
since the Unix epoch (every whole second for ``1s``), from the first event's time rounded up
through the last event's time (of the range asked for), one sample per point, whether a
side is empty, shallower than N or not. With ``on_change``, a sample falls at each end of an
exchange event after which the top N levels differ from those at the previous one (its
time is that event's). Both together give both kinds, in time order.

**What a sample shows.** The sample at time T is the book after the last exchange event at
or before T, in seq order (the time of an event is its last record's: a record's ``ts``,
when it was received). Never the transient state inside a venue's event: records without
:data:`~ledger.domain.events.LAST` are held back until the record that ends their event
(the projector's event-end rule), and an event the log does not end is never shown. This
is what ``ledger book --depth N --at-time T`` shows where every record is an event of its
own (the L3 CSV, Coinbase).

**The replay.** The book is rebuilt with the projector's own code: the newest readable book
snapshot at or before the range (or the venue's book at the stream's start), then the log
in chunks read ahead on a thread. At a gap it resets to the venue's book that makes up for
it, as a projection does (the samples before that book's receive time show the book before
the gap); a gap without one is crossed. Memory is the book and one batch of samples.

    >>> sampler = DepthSampler(Projector(), depth=1, every=1_000_000, first_point=1_000_000)
    >>> sampler.feed([add(1, "a", BUY, 228, 50, ts="1970-01-01 00:00:00.5+00"),
    ...               add(2, "b", SELL, 230, 7, ts="1970-01-01 00:00:02.5+00")])  # doctest: +NORMALIZE_WHITESPACE
    [Sample(time=1000000, seq=1, bids=[LevelView(price=228, size=50, orders=1)], asks=[]),
     Sample(time=2000000, seq=1, bids=[LevelView(price=228, size=50, orders=1)], asks=[])]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy.engine import Engine

from ledger.domain.book import Book, LevelView
from ledger.domain.events import LAST, Record
from ledger.domain.projector import Projector
from ledger.services.project.replay import contiguous, read_ahead, stream_projector
from ledger.services.read.book import rebuild
from ledger.services.read.research import (
    Bound,
    SeqRange,
    decimal_type,
    micros,
    seq_range,
    stream_metadata,
    timestamp_type,
)
from ledger.storage.log import EventLog, Streams
from ledger.storage.research import EventRows

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["DepthSampler", "Sample", "depth_batches", "parse_duration"]

_UNITS = {"us": 1, "ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
_DURATION = re.compile(r"\s*(-?[0-9]*\.?[0-9]+)\s*(us|ms|s|m|h|d)\s*")


def parse_duration(value: str | timedelta) -> int:
    """A duration in whole microseconds, from a timedelta or text: a number and a unit among
    us, ms, s, m, h, d (``1s``, ``250ms``, ``0.5s``, ``15m``). Raises ValueError, saying
    why, for anything else, for 0 or less, and for a fraction of a microsecond."""
    if isinstance(value, timedelta):
        amount = value // timedelta(microseconds=1)
        if amount * timedelta(microseconds=1) != value:
            raise ValueError(f"{value} is not a whole number of microseconds")
    else:
        found = _DURATION.fullmatch(value)
        if found is None:
            raise ValueError(f"not a duration: {value!r} (a number and a unit: us, ms, s, m, h, d; e.g. 1s, 250ms)")
        try:
            exact = Decimal(found[1]) * _UNITS[found[2]]
        except InvalidOperation:
            raise ValueError(f"not a duration: {value!r}") from None
        if exact != exact.to_integral_value():
            raise ValueError(f"{value!r} is not a whole number of microseconds")
        amount = int(exact)
    if amount <= 0:
        raise ValueError(f"a duration must be more than 0: {value!r}")
    return amount


class Sample(NamedTuple):
    """The top levels at one point: its time (microseconds since the epoch, UTC), the seq of
    the last record applied (None before any), and the levels per side, best first."""

    time: int
    seq: int | None
    bids: list[LevelView]
    asks: list[LevelView]


class DepthSampler:
    """Feeds typed events to a projector and takes the samples of the module's rule. Pure:
    the caller reads the log and hands over events in seq order (:meth:`feed`), tells it of
    resets to a venue's book (:meth:`reset`), and ends it (:meth:`close`).

    ``every`` is the grid's step in microseconds (None: no grid) and ``first_point`` its
    first point; ``last_point`` (None: unbounded) the last one :meth:`close` reaches."""

    def __init__(
        self,
        projector: Projector,
        *,
        depth: int,
        every: int | None = None,
        on_change: bool = False,
        first_point: int | None = None,
        last_point: int | None = None,
        seq: int | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be 1 or more, not {depth}")
        if every is not None and every <= 0:
            raise ValueError(f"every must be more than 0 microseconds, not {every}")
        self.projector = projector
        self._depth = depth
        self._every = every
        self._on_change = on_change
        self._next = first_point if every is not None else None
        self._last_point = last_point
        self._seq = seq
        self._pending: list[Record] = []  # the records of an event that has not ended yet
        # per price: (the level, its total, orders held, its LevelView) when last counted
        self._bid_counts: dict[Any, Any] = {}
        self._ask_counts: dict[Any, Any] = {}
        self._top = self._levels()

    def _levels(self) -> tuple[list[LevelView], list[LevelView]]:
        """The top N levels per side, as :meth:`Book.levels <ledger.domain.book.Book.levels>`
        gives them (orders resting at size 0 not counted), with each level's count of orders
        kept from the last sample while the level is the same object with the same total and
        the same number of orders held: counting a level's orders one by one is what costs,
        and one record changes one order (or moves it), so the number of orders of size 0 in
        a level cannot change while its total and its number of orders stay the same."""
        book = self.projector.book
        bids, asks, depth = book.bids, book.asks, self._depth
        return (
            self._side(bids, reversed(bids.keys()[-depth:]), self._bid_counts),
            self._side(asks, asks.keys()[:depth], self._ask_counts),
        )

    def _side(self, levels: Any, prices: Iterable[Any], counts: dict[Any, Any]) -> list[LevelView]:
        out = []
        for price in prices:
            level = levels[price]
            total, held = level.total, len(level.orders)
            known = counts.get(price)
            if known is not None and known[0] is level and known[1] == total and known[2] == held:
                out.append(known[3])
                continue
            orders = held if held == 1 and total else sum(1 for order in level.orders.values() if order.size)
            view = LevelView(price, total, orders)
            if len(counts) > 64 * self._depth:  # prices long gone from the top
                counts.clear()
            counts[price] = (level, total, held, view)
            out.append(view)
        return out

    def _grid_before(self, time: int, out: list[Sample]) -> None:
        """Samples at every grid point before ``time`` (and not past the last point)."""
        point, every = self._next, self._every
        if point is None or every is None or point >= time:
            return
        end = time if self._last_point is None else min(time, self._last_point + 1)
        if point < end:
            bids, asks = self._levels()
            while point < end:
                out.append(Sample(point, self._seq, bids, asks))
                point += every
        self._next = point

    def feed(self, events: Sequence[Record]) -> list[Sample]:
        """Apply ``events`` (records in seq order, with times: datetime or PostgreSQL text)
        up to the last event end among them, and return the samples they bring. Records
        after that end wait for the rest of their event."""
        out: list[Sample] = []
        if self._pending:
            events = [*self._pending, *events]
        end = len(events)
        while end and not events[end - 1][3] & LAST:
            end -= 1
        self._pending = list(events[end:])
        apply = self.projector.apply
        applied = start = 0  # start: the first record of the event being read
        for i in range(end):
            record = events[i]
            if not record[3] & LAST:
                continue
            time = micros(record[2])
            if time is not None and self._next is not None and self._next < time:
                if start > applied:
                    apply(events[applied:start], None, l1=False)
                    self._seq = events[start - 1][1]
                    applied = start
                self._grid_before(time, out)
            if self._on_change:
                apply(events[applied : i + 1], None, l1=False)
                applied = i + 1
                self._seq = record[1]
                top = self._levels()
                if top != self._top:
                    self._top = top
                    out.append(Sample(self._time(time), self._seq, *top))
            start = i + 1
        if end > applied:
            apply(events[applied:end], None, l1=False)
            self._seq = events[end - 1][1]
        if self._on_change:
            self._top = self._levels()
        return out

    def _time(self, time: int | None) -> int:
        """A change's time: its event's, or the grid's last point when the event has none."""
        if time is not None:
            return time
        return 0 if self._next is None or self._every is None else self._next - self._every

    def reset(self, book: Book, seq: int, received: datetime | None) -> list[Sample]:
        """The book becomes ``book`` (a venue's, at ``seq``, received at ``received``): the grid
        points before that time show the book as it was; the records of an unfinished event
        are dropped (the venue's book supersedes them)."""
        out: list[Sample] = []
        time = micros(received)
        if time is not None:
            self._grid_before(time, out)
        self._pending = []
        self.projector.reset(book)
        self._bid_counts.clear()  # another book: count its levels afresh
        self._ask_counts.clear()
        self._seq = seq
        top = self._levels()
        if self._on_change and top != self._top:
            out.append(Sample(self._time(time), seq, *top))
        self._top = top
        return out

    def close(self) -> list[Sample]:
        """The grid's points through the last one (the records of an event the log does not
        end are not applied)."""
        out: list[Sample] = []
        if self._last_point is not None:
            self._grid_before(self._last_point + 1, out)
        return out


def _grid(first: int | None, last: int | None, every: int | None) -> tuple[int | None, int | None]:
    """The first and last grid points: multiples of ``every`` from ``first`` rounded up
    through ``last`` (times in microseconds)."""
    if every is None or first is None or last is None:
        return None, None
    return -(-first // every) * every, last // every * every


def _replay(engine: Engine, stream: str, bounds: SeqRange, depth: int, every: int | None, on_change: bool,
            stream_id: int) -> Iterator[Sample]:  # fmt: skip
    """The samples of ``bounds`` (see the module)."""
    with engine.connect() as conn:
        low, _ = EventLog(conn).seq_range(stream_id)
    assert low is not None
    after = bounds.first - 1
    if after < low:
        proj, sources = stream_projector(engine, stream_id, stream)
        sources.start(proj, low)
    else:
        rebuilt = rebuild(engine, stream_id, stream, first=low, upto=after)
        proj, after = rebuilt.proj, rebuilt.last
        _, sources = stream_projector(engine, stream_id, stream)
    first_point, last_point = _grid(micros(bounds.first_time), micros(bounds.last_time), every)
    sampler = DepthSampler(
        proj,
        depth=depth,
        every=every,
        on_change=on_change,
        first_point=first_point,
        last_point=last_point,
        seq=after if after >= low else None,
    )
    rules = proj.rules
    expected = after + 1
    skip_until: int | None = None
    dense, extra = sources.venue.dense_seqs, sources.venue.fields
    for rows in read_ahead(engine, stream_id, after=after, upto=bounds.last, chunk=20_000, extra=extra):
        rest = rows if skip_until is None else [r for r in rows if r[0] > skip_until]
        while rest:
            segment, gap = contiguous(rest, expected, dense=dense)
            if segment:
                yield from sampler.feed(rules.events(segment))
            if gap is None:
                expected = rest[-1][0] + 1
                break
            # The replay's rule at a gap (services.project.replay): the venue's book that
            # makes up for it, else go across.
            before = proj.book
            covered = sources.reset_at_gap(proj, gap)
            rest = rest[len(segment) :]
            if covered is None:
                expected = gap[1] + 1
                continue
            venue_book, proj.book = proj.book, before
            yield from sampler.reset(venue_book, covered.seq, covered.received_at)
            skip_until = covered.seq
            expected = covered.seq + 1
            rest = [r for r in rest if r[0] > covered.seq]
    yield from sampler.close()


def depth_batches(
    engine: Engine,
    stream: str,
    *,
    depth: int,
    every: str | timedelta | None = None,
    on_change: bool = False,
    layout: str = "wide",
    start: Bound = None,
    end: Bound = None,
    chunk: int = 10_000,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema and record batches of ``stream``'s L2 samples (see the module) from
    ``start`` through ``end`` (seqs or times, inclusive), ``chunk`` samples a batch.

    ``layout="wide"``: one row per sample: time, seq, then bid_price_1, bid_size_1,
    bid_orders_1 .. bid_orders_N, ask_price_1 .. ask_orders_N (null past a side's depth).
    ``layout="long"``: 2N rows per sample: time, seq, side (bid, ask), level (1..N), price,
    size, orders (null past a side's depth)."""
    import pyarrow as pa

    if depth < 1:
        raise ValueError(f"depth must be 1 or more, not {depth}")
    step = None if every is None else parse_duration(every)
    if step is None and not on_change:
        raise ValueError("give every (a duration) and/or on_change")
    if layout not in ("wide", "long"):
        raise ValueError(f"layout is wide or long, not {layout!r}")
    with engine.connect() as conn:
        stream_id = Streams(conn).get(stream)
        bounds = seq_range(conn, stream_id, start=start, end=end)
        # Every price and size the book can hold came from the log up to the range's end.
        number = decimal_type(
            EventRows(conn, stream_id, start=None, end=None if bounds is None else bounds.last).scale()
        )
    head: list[tuple[str, pa.DataType]] = [("time", timestamp_type()), ("seq", pa.int64())]
    if layout == "wide":
        fields = head + [
            (f"{side}_{what}_{i}", pa.int32() if what == "orders" else number)
            for side in ("bid", "ask")
            for i in range(1, depth + 1)
            for what in ("price", "size", "orders")
        ]
    else:
        fields = [
            *head,
            ("side", pa.string()),
            ("level", pa.int16()),
            ("price", number),
            ("size", number),
            ("orders", pa.int32()),
        ]
    metadata = stream_metadata(engine, stream, "l2")
    metadata[b"ledger.l2"] = f"depth={depth} every_us={step} on_change={on_change} layout={layout}".encode()
    schema = pa.schema(fields, metadata=metadata)
    to_columns = _wide if layout == "wide" else _long

    def batches() -> Iterator[pa.RecordBatch]:
        if bounds is None:
            return
        samples: list[Sample] = []
        for sample in _replay(engine, stream, bounds, depth, step, on_change, stream_id):
            samples.append(sample)
            if len(samples) >= chunk:
                yield _batch(to_columns(samples, depth), schema)
                samples = []
        if samples:
            yield _batch(to_columns(samples, depth), schema)

    return schema, batches()


def _batch(columns: list[list[Any]], schema: pa.Schema) -> pa.RecordBatch:
    import pyarrow as pa

    return pa.RecordBatch.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
    )


def _times(samples: list[Sample]) -> list[datetime]:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return [epoch + timedelta(microseconds=s.time) for s in samples]


def _wide(samples: list[Sample], depth: int) -> list[list[Any]]:
    columns: list[list[Any]] = [_times(samples), [s.seq for s in samples]]
    for side in ("bids", "asks"):
        per_sample = [getattr(s, side) for s in samples]
        for i in range(depth):
            levels = [each[i] if i < len(each) else None for each in per_sample]
            for what in range(3):  # price, size, orders
                columns.append([None if level is None else level[what] for level in levels])
    return columns


def _long(samples: list[Sample], depth: int) -> list[list[Any]]:
    times = _times(samples)
    columns: list[list[Any]] = [[], [], [], [], [], [], []]
    time_col, seq_col, side_col, level_col, price_col, size_col, orders_col = columns
    for sample, time in zip(samples, times, strict=True):
        for name, levels in (("bid", sample.bids), ("ask", sample.asks)):
            for i in range(depth):
                level = levels[i] if i < len(levels) else None
                time_col.append(time)
                seq_col.append(sample.seq)
                side_col.append(name)
                level_col.append(i + 1)
                price_col.append(None if level is None else level.price)
                size_col.append(None if level is None else level.size)
                orders_col.append(None if level is None else level.orders)
    return columns
