"""Research outputs as Arrow: a stream's L1 rows and parsed events as ``pyarrow`` record
batches (exact prices and sizes as Arrow decimals, times as UTC timestamps), gathered into a
table or written to Parquet row group by row group, so memory stays bounded for any size.

    >>> schema, batches = l1_batches(engine, "csv:l3_data_v3.1")   # doctest: +SKIP
    >>> pyarrow.Table.from_batches(batches, schema).to_pandas()      # doctest: +SKIP
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from ledger.storage.log import Streams
from ledger.storage.research import EventRows, L1Range

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["events_batches", "l1_batches", "write_parquet"]

Bound = int | datetime | None


def _decimal(scale: int) -> pa.DataType:
    """An Arrow decimal type that holds every value of a column with ``scale`` fractional
    digits exactly (20 integer digits at least, as the log's inputs allow)."""
    import pyarrow as pa

    return pa.decimal128(38, scale) if scale <= 18 else pa.decimal256(76, scale)


def _metadata(engine: Engine, stream: str, table: str) -> dict[bytes, bytes]:
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
    (seqs or times, inclusive): seq, time, bid_price, bid_size, ask_price, ask_size."""
    import pyarrow as pa

    with engine.connect() as conn:
        stream_id = Streams(conn).get(stream)
        number = _decimal(L1Range(conn, stream_id, start=start, end=end).scale())
    schema = pa.schema(
        [
            ("seq", pa.int64()),
            ("time", pa.timestamp("us", tz="UTC")),
            ("bid_price", number),
            ("bid_size", number),
            ("ask_price", number),
            ("ask_size", number),
        ],
        metadata=_metadata(engine, stream, "l1"),
    )

    def batches() -> Iterator[pa.RecordBatch]:
        with engine.connect() as conn:
            for rows in L1Range(conn, stream_id, start=start, end=end).chunks(chunk):
                yield _batch(rows, schema)

    return schema, batches()


def events_batches(
    engine: Engine, stream: str, *, start: Bound = None, end: Bound = None, raw: bool = False, chunk: int = 100_000
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema and record batches of ``stream``'s parsed events (the log) from ``start``
    through ``end``: seq, time, kind, order_id, side, price, size, and raw when asked."""
    import pyarrow as pa

    with engine.connect() as conn:
        stream_id = Streams(conn).get(stream)
        number = _decimal(EventRows(conn, stream_id, start=start, end=end).scale())
    fields = [
        ("seq", pa.int64()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("kind", pa.string()),
        ("order_id", pa.string()),
        ("side", pa.string()),
        ("price", number),
        ("size", number),
    ]
    schema = pa.schema(fields + ([("raw", pa.string())] if raw else []), metadata=_metadata(engine, stream, "events"))

    def batches() -> Iterator[pa.RecordBatch]:
        with engine.connect() as conn:
            for rows in EventRows(conn, stream_id, start=start, end=end).chunks(raw=raw, chunk=chunk):
                yield _batch(rows, schema)

    return schema, batches()


def _batch(rows: list[Any], schema: pa.Schema) -> pa.RecordBatch:
    import pyarrow as pa

    columns = zip(*rows, strict=True)
    return pa.RecordBatch.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
    )


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
