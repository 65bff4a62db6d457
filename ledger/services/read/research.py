"""Research outputs as Arrow: a stream's L1 rows and parsed events as ``pyarrow`` record
batches (exact prices and sizes as Arrow decimals, times as UTC timestamps), gathered into a
table or written to Parquet row group by row group, so memory stays bounded for any size.

    >>> schema, batches = l1_batches(engine, "csv:l3_data_v3.1")   # doctest: +SKIP
    >>> pyarrow.Table.from_batches(batches, schema).to_pandas()      # doctest: +SKIP
"""

from __future__ import annotations

import importlib.metadata
import io
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from sqlalchemy.engine import Connection, Engine

from ledger.services.read.book import seq_at_time
from ledger.storage.copy import VENUE_FIELDS
from ledger.storage.log import EventLog, Streams
from ledger.storage.research import EventRows, L1Range
from ledger.venues import venue

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "Bound",
    "SeqRange",
    "decimal_type",
    "events_batches",
    "l1_batches",
    "micros",
    "seq_range",
    "stream_metadata",
    "timestamp_type",
    "write_csv",
    "write_parquet",
]

Bound = int | datetime | None

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def decimal_type(scale: int) -> pa.DataType:
    """An Arrow decimal type that holds every value of a column with ``scale`` fractional
    digits exactly (20 integer digits at least, as the log's inputs allow)."""
    import pyarrow as pa

    return pa.decimal128(38, scale) if scale <= 18 else pa.decimal256(76, scale)


def timestamp_type() -> pa.DataType:
    """Times in every research output: microseconds, UTC."""
    import pyarrow as pa

    return pa.timestamp("us", tz="UTC")


def micros(ts: datetime | str | None) -> int | None:
    """A time as whole microseconds since the Unix epoch: from a datetime (naive is UTC) or
    PostgreSQL's timestamptz text (the event log's ``ts`` as read for replay)."""
    if ts is None:
        return None
    when = datetime.fromisoformat(ts) if isinstance(ts, str) else ts
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // _MICROSECOND


class SeqRange(NamedTuple):
    """The events of a stream in a range: the first and last seq, and their times."""

    first: int
    last: int
    first_time: datetime | None
    last_time: datetime | None


def seq_range(conn: Connection, stream_id: int, *, start: Bound = None, end: Bound = None) -> SeqRange | None:
    """The first and last events of ``stream_id`` from ``start`` through ``end`` (seqs or
    times, inclusive; a time bounds the events' receive times, found by a binary search over
    the primary key as ``ledger book --at-time`` does); None when no event is in the range."""
    log = EventLog(conn)
    low, high = log.seq_range(stream_id)
    if low is None or high is None:
        return None
    first_ts = log.nearest(stream_id, at_or_after=low)[1]
    if start is None or (isinstance(start, datetime) and (first_ts is None or start <= first_ts)):
        first = low
    elif isinstance(start, datetime):  # after the last event before start
        first = seq_at_time(conn, stream_id, start - _MICROSECOND) + 1
    else:
        first = max(start, low)
    if end is None:
        last = high
    elif isinstance(end, datetime):
        if first_ts is not None and end < first_ts:
            return None
        last = seq_at_time(conn, stream_id, end)
    else:
        last = min(end, high)
    if first > last or first > high or last < low:
        return None
    first, first_time = log.nearest(stream_id, at_or_after=first)
    last, last_time = log.nearest(stream_id, at_or_before=last)
    if first > last:
        return None
    return SeqRange(first, last, first_time, last_time)


def stream_metadata(engine: Engine, stream: str, table: str) -> dict[bytes, bytes]:
    """The Parquet and Arrow metadata of an output: the stream, its venue, the table and the
    ledger version."""
    with engine.connect() as conn:
        streams = Streams(conn)
        venue = streams.source(streams.get(stream))
    return {
        b"ledger.stream": stream.encode(),
        b"ledger.venue": venue.encode(),
        b"ledger.table": table.encode(),
        b"ledger.version": importlib.metadata.version("ledger").encode(),
    }


def l1_batches(
    engine: Engine, stream: str, *, start: Bound = None, end: Bound = None, chunk: int = 100_000
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema and record batches of ``stream``'s L1 rows from ``start`` through ``end``
    (seqs or times, inclusive): seq, time, bid_price, bid_size, ask_price, ask_size; and
    maybe_bad (the venue said the book may be wrong there) for a venue that says so
    (Databento)."""
    import pyarrow as pa

    with engine.connect() as conn:
        streams = Streams(conn)
        stream_id = streams.get(stream)
        with_fields = bool(venue(streams.source(stream_id)).fields)
        number = decimal_type(L1Range(conn, stream_id, start=start, end=end).scale())
    fields = [
        ("seq", pa.int64()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("bid_price", number),
        ("bid_size", number),
        ("ask_price", number),
        ("ask_size", number),
    ]
    extra = ("(maybe_bad IS TRUE)::int",) if with_fields else ()
    if with_fields:
        fields.append(("maybe_bad", pa.bool_()))
    schema = pa.schema(fields, metadata=stream_metadata(engine, stream, "l1"))

    def batches() -> Iterator[pa.RecordBatch]:
        with engine.connect() as conn:
            rows = L1Range(conn, stream_id, start=start, end=end)
            yield from _csv_batches(rows.copy_csv(extra=extra), schema, chunk=chunk)

    return schema, batches()


def events_batches(
    engine: Engine, stream: str, *, start: Bound = None, end: Bound = None, raw: bool = False, chunk: int = 100_000
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema and record batches of ``stream``'s parsed events (the log) from ``start``
    through ``end``: seq, time, kind, order_id, side, price, size; for a venue with its own
    fields (Databento) flags, ts_event, ts_recv (exact nanoseconds), sequence and channel;
    and raw when asked."""
    import pyarrow as pa

    with engine.connect() as conn:
        streams = Streams(conn)
        stream_id = streams.get(stream)
        with_fields = bool(venue(streams.source(stream_id)).fields)
        number = decimal_type(EventRows(conn, stream_id, start=start, end=end).scale())
    fields = [
        ("seq", pa.int64()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("kind", pa.string()),
        ("order_id", pa.string()),
        ("side", pa.string()),
        ("price", number),
        ("size", number),
    ]
    extra: tuple[str, ...] = ()
    if with_fields:
        fields += [(name, pa.int16() if name in ("flags", "channel") else pa.int64()) for name in VENUE_FIELDS]
        extra += VENUE_FIELDS
    if raw:
        fields.append(("raw", pa.string()))
        extra += ("ledger_raw(events)",)  # the line as received (rebuilt where stored as NULL)
    schema = pa.schema(fields, metadata=stream_metadata(engine, stream, "events"))

    def batches() -> Iterator[pa.RecordBatch]:
        with engine.connect() as conn:
            rows = EventRows(conn, stream_id, start=start, end=end)
            yield from _csv_batches(rows.copy_csv(extra=extra), schema, chunk=chunk, newlines=raw)

    return schema, batches()


class _Blocks(io.RawIOBase):
    """A binary file that reads an iterator of byte blocks, for Arrow's CSV reader."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            block = next(self._blocks, None)
            if block is None:
                return 0
            self._left = block
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def _csv_batches(
    blocks: Iterator[bytes], schema: pa.Schema, *, chunk: int, newlines: bool = False
) -> Iterator[pa.RecordBatch]:
    """Record batches of ``schema`` from the CSV blocks of a COPY (``time`` as whole
    microseconds since the epoch), about ``chunk`` rows each (Arrow reads blocks of bytes)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    first = next(blocks, None)
    if first is None:  # an empty range: no batch (Arrow's reader refuses empty input)
        return
    stream = io.BufferedReader(_Blocks(itertools.chain([first], blocks)), buffer_size=1 << 20)
    # Arrow's CSV reader makes decimal128 but not decimal256 (more than 18 fractional
    # digits): such columns are read as text and made exact decimals in Python.
    wide = {f.name for f in schema if pa.types.is_decimal256(f.type)}
    types = {f.name: pa.int64() if f.name == "time" else pa.string() if f.name in wide else f.type for f in schema}
    reader = pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(column_names=schema.names, block_size=max(1 << 16, chunk * 80)),
        parse_options=pacsv.ParseOptions(newlines_in_values=newlines),
        convert_options=pacsv.ConvertOptions(
            column_types=types, strings_can_be_null=True, quoted_strings_can_be_null=False
        ),
    )
    for batch in reader:
        columns = [
            c.cast(f.type)
            if f.name == "time"
            else pa.array([None if v is None else Decimal(v) for v in c.to_pylist()], f.type)
            if f.name in wide
            else c
            for c, f in zip(batch.columns, schema, strict=True)
        ]
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


def write_parquet(schema: pa.Schema, batches: Iterator[pa.RecordBatch], path: Path | Any) -> int:
    """Write ``batches`` to a Parquet file (zstd, one row group per batch) at ``path`` (a
    path or a binary file object); the number of rows."""
    import pyarrow.parquet as pq

    rows = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def write_csv(schema: pa.Schema, batches: Iterator[pa.RecordBatch], out: IO[bytes]) -> int:
    """Write ``batches`` as CSV to ``out`` (a binary file object); the number of rows.

    UTF-8, a header of the column names, LF line ends, quoted only where needed; exact
    numbers in their shortest decimal form (``229.1``, ``300``), times in ISO-8601 UTC with
    microseconds (``2021-08-03T05:00:00.000000+00:00``), an empty field for null."""
    import csv

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(schema.names)
    rows = 0
    for batch in batches:
        columns = [[_csv_cell(v) for v in column.to_pylist()] for column in batch.columns]
        writer.writerows(zip(*columns, strict=True))
        rows += batch.num_rows
        out.write(text.getvalue().encode("utf-8"))
        text.seek(0)
        text.truncate()
    out.write(text.getvalue().encode("utf-8"))
    return rows


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime):
        return value.isoformat(timespec="microseconds")
    return value
