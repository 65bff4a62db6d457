"""Reads for research outputs (Arrow tables, Parquet files): a stream's L1 rows and parsed
events over a range, in key-range chunks, and the decimal scale that holds every value of a
numeric column exactly (so one Arrow decimal type fits the whole range); or the range as one
CSV COPY, which Arrow's CSV reader turns into record batches at the server's speed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.storage.database import driver_errors
from ledger.storage.schema import events, l1

__all__ = ["EventRows", "L1Range"]

Bound = int | datetime | None

#: A row's time as whole microseconds since the Unix epoch (exact: extract gives numeric).
_EPOCH_MICROS = "(extract(epoch FROM ts) * 1000000)::bigint"


class _Range:
    """A stream's rows of one table from ``start`` through ``end`` (seqs or times, inclusive),
    read in key-range chunks or as one CSV COPY; the largest scale among its numeric columns."""

    _table: Any
    _numbers: tuple[Any, ...]
    _columns: tuple[Any, ...]
    #: The columns of :meth:`copy_csv`, as SQL (the time as whole microseconds since the epoch).
    _copy_columns: tuple[str, ...]

    def __init__(self, conn: Connection, stream_id: int, *, start: Bound, end: Bound) -> None:
        self._conn = conn
        c = self._table.c
        where = [c.stream_id == stream_id]
        self._copy_where = ["stream_id = %s"]
        self._copy_params: list[object] = [stream_id]
        for bound, op in ((start, ">="), (end, "<=")):
            if bound is not None:
                column = "ts" if isinstance(bound, datetime) else "seq"
                where.append(c[column] >= bound if op == ">=" else c[column] <= bound)
                self._copy_where.append(f"{column} {op} %s")
                self._copy_params.append(bound)
        self._where = where

    def copy_csv(self, *, extra: tuple[str, ...] = ()) -> Iterator[bytes]:
        """The range's rows as CSV (no header; NULL an unquoted empty field, an empty text
        ``""``) in seq order, in blocks as PostgreSQL sends them: one COPY, so the whole range
        is read in one snapshot at the server's speed."""
        driver = self._conn.connection.driver_connection
        assert driver is not None
        query = (
            f"COPY (SELECT {', '.join((*self._copy_columns, *extra))} FROM {self._table.name}"
            f" WHERE {' AND '.join(self._copy_where)} ORDER BY seq) TO STDOUT (FORMAT csv)"
        )
        with driver_errors(), driver.cursor() as cur, cur.copy(query, self._copy_params) as copy:
            for data in copy:
                yield bytes(data)

    def scale(self) -> int:
        """The largest number of fractional digits among the range's prices and sizes."""
        parts = [sa.func.max(sa.func.scale(c)) for c in self._numbers]
        row = self._conn.execute(sa.select(*parts).select_from(self._table).where(*self._where)).one()
        return max((int(v) for v in row if v is not None), default=0)


class L1Range(_Range):
    """L1 rows: (seq, ts, bid_price, bid_size, ask_price, ask_size)."""

    _table = l1
    _numbers = (l1.c.bid_price, l1.c.bid_size, l1.c.ask_price, l1.c.ask_size)
    _columns = (l1.c.seq, l1.c.ts, *_numbers)
    _copy_columns = ("seq", _EPOCH_MICROS, "bid_price", "bid_size", "ask_price", "ask_size")

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


class EventRows(_Range):
    """Parsed events: (seq, ts, kind, order_id, side, price, size), read as one CSV COPY of
    the ``events`` view (:meth:`copy_csv`, raw as ``ledger_raw(events)`` among ``extra``).
    Not in key-range chunks: each chunk's query on the view would unpack every block of a
    compacted stream; :meth:`ledger.storage.log.EventLog.read_chunks` reads ranges."""

    _table = events
    _numbers = (events.c.price, events.c.size)
    _columns = (events.c.seq, events.c.ts, events.c.kind, events.c.order_id, events.c.side, *_numbers)
    _copy_columns = ("seq", _EPOCH_MICROS, "kind", "order_id", "side", "price", "size")
