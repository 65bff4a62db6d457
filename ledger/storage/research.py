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


def _bounded(query: Any, seq: Any, ts: Any, start: Bound, end: Bound) -> Any:
    if start is not None:
        query = query.where((ts if isinstance(start, datetime) else seq) >= start)
    if end is not None:
        query = query.where((ts if isinstance(end, datetime) else seq) <= end)
    return query


def _chunks(conn: Connection, query: Any, seq: Any, chunk: int) -> Iterator[list[Any]]:
    after: int | None = None
    while True:
        page = query if after is None else query.where(seq > after)
        rows = list(conn.execute(page.order_by(seq).limit(chunk)).all())
        if rows:
            yield rows
        if len(rows) < chunk:
            return
        after = int(rows[-1][0])


class L1Range:
    """A stream's L1 rows from ``start`` through ``end`` (seqs or times, inclusive)."""

    _NUMBERS = (l1.c.bid_price, l1.c.bid_size, l1.c.ask_price, l1.c.ask_size)

    def __init__(self, conn: Connection, stream_id: int, *, start: Bound, end: Bound) -> None:
        self._conn = conn
        self._bounds = (stream_id, start, end)

    def _where(self, query: Any) -> Any:
        stream_id, start, end = self._bounds
        return _bounded(query.where(l1.c.stream_id == stream_id), l1.c.seq, l1.c.ts, start, end)

    def scale(self) -> int:
        """The largest number of fractional digits among the range's prices and sizes."""
        parts = [sa.func.max(sa.func.scale(c)) for c in self._NUMBERS]
        row = self._conn.execute(self._where(sa.select(*parts).select_from(l1))).one()
        return max((int(v) for v in row if v is not None), default=0)

    def chunks(self, chunk: int = 100_000) -> Iterator[list[Any]]:
        """Lists of rows (seq, ts, bid_price, bid_size, ask_price, ask_size) in seq order."""
        query = self._where(sa.select(l1.c.seq, l1.c.ts, *self._NUMBERS))
        return _chunks(self._conn, query, l1.c.seq, chunk)


class EventRows:
    """A stream's parsed events from ``start`` through ``end`` (seqs or times, inclusive)."""

    def __init__(self, conn: Connection, stream_id: int, *, start: Bound, end: Bound) -> None:
        self._conn = conn
        self._bounds = (stream_id, start, end)

    def _where(self, query: Any) -> Any:
        stream_id, start, end = self._bounds
        return _bounded(query.where(events.c.stream_id == stream_id), events.c.seq, events.c.ts, start, end)

    def scale(self) -> int:
        row = self._conn.execute(
            self._where(
                sa.select(sa.func.max(sa.func.scale(events.c.price)), sa.func.max(sa.func.scale(events.c.size)))
            ).select_from(events)
        ).one()
        return max((int(v) for v in row if v is not None), default=0)

    def chunks(self, *, raw: bool = False, chunk: int = 100_000) -> Iterator[list[Any]]:
        """Lists of rows (seq, ts, kind, order_id, side, price, size[, raw]) in seq order."""
        columns = [events.c.seq, events.c.ts, events.c.kind, events.c.order_id, events.c.side, events.c.price]
        columns += [events.c.size, *([events.c.raw] if raw else [])]
        return _chunks(self._conn, self._where(sa.select(*columns)), events.c.seq, chunk)
