"""Reads for research outputs (Arrow tables, Parquet files): a stream's L1 rows and parsed
events over a range, in key-range chunks, and the decimal scale that holds every value of a
numeric column exactly (so one Arrow decimal type fits the whole range)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.storage.schema import events, l1

__all__ = ["EventRows", "L1Range"]

Bound = int | datetime | None


class _Range:
    """A stream's rows of one table from ``start`` through ``end`` (seqs or times, inclusive),
    read in key-range chunks; the largest scale among its numeric columns."""

    _table: Any
    _numbers: tuple[Any, ...]
    _columns: tuple[Any, ...]

    def __init__(self, conn: Connection, stream_id: int, *, start: Bound, end: Bound) -> None:
        self._conn = conn
        c = self._table.c
        where = [c.stream_id == stream_id]
        if start is not None:
            where.append((c.ts if isinstance(start, datetime) else c.seq) >= start)
        if end is not None:
            where.append((c.ts if isinstance(end, datetime) else c.seq) <= end)
        self._where = where

    def scale(self) -> int:
        """The largest number of fractional digits among the range's prices and sizes."""
        parts = [sa.func.max(sa.func.scale(c)) for c in self._numbers]
        row = self._conn.execute(sa.select(*parts).select_from(self._table).where(*self._where)).one()
        return max((int(v) for v in row if v is not None), default=0)

    def chunks(self, chunk: int = 100_000, *, extra: tuple[Any, ...] = ()) -> Iterator[list[Any]]:
        """Lists of up to ``chunk`` rows of :attr:`_columns` (and ``extra``) in seq order."""
        seq = self._table.c.seq
        query = sa.select(*self._columns, *extra).where(*self._where)
        after: int | None = None
        while True:
            page = query if after is None else query.where(seq > after)
            rows = list(self._conn.execute(page.order_by(seq).limit(chunk)).all())
            if rows:
                yield rows
            if len(rows) < chunk:
                return
            after = int(rows[-1][0])


class L1Range(_Range):
    """L1 rows: (seq, ts, bid_price, bid_size, ask_price, ask_size)."""

    _table = l1
    _numbers = (l1.c.bid_price, l1.c.bid_size, l1.c.ask_price, l1.c.ask_size)
    _columns = (l1.c.seq, l1.c.ts, *_numbers)


class EventRows(_Range):
    """Parsed events: (seq, ts, kind, order_id, side, price, size), and raw when asked."""

    _table = events
    _numbers = (events.c.price, events.c.size)
    _columns = (events.c.seq, events.c.ts, events.c.kind, events.c.order_id, events.c.side, *_numbers)

    def chunks(self, chunk: int = 100_000, *, extra: tuple[Any, ...] = (), raw: bool = False) -> Iterator[list[Any]]:
        return super().chunks(chunk, extra=(*extra, events.c.raw) if raw else extra)
