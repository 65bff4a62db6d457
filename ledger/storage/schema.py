"""The tables, as SQLAlchemy Core objects for building queries.

The schema itself is created and changed only by the Alembic migrations in ``migrations/``;
``tests/test_schema.py`` checks that these objects and the migrated database agree.

Every table that holds per-stream rows starts its key with ``stream_id`` and every query
on the log is scoped by stream in primary-key order, so the event table can later be
partitioned (by stream, then by seq or time range) without code changes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.types import UserDefinedType

__all__ = [
    "book_snapshots",
    "event_blocks",
    "event_rows",
    "events",
    "gaps",
    "ingest_checkpoints",
    "l1",
    "metadata",
    "projector_positions",
    "rejects",
    "source_snapshots",
    "streams",
    "views",
]

metadata = MetaData()
_TS = TIMESTAMP(timezone=True)

streams = Table(
    "streams",
    metadata,
    Column("id", Integer, Identity(), primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("source", Text, nullable=False),
    Column("created_at", _TS, nullable=False, server_default=func.now()),
    comment="One sequence space: a venue and a product, or one CSV feed.",
)

# The recent events, one row each: every ingest appends here (COPY), late events land here.
# No foreign key on event_rows: a per-row referential check would halve COPY throughput.
# Ingest creates the stream row before its first event.
event_rows = Table(
    "event_rows",
    metadata,
    Column("stream_id", Integer, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("order_id", Text),
    Column("side", Text),
    Column("price", Numeric),
    Column("size", Numeric),
    Column("ts", _TS),
    # NULL for a CSV line in canonical form: ledger_raw(events) rebuilds it (migration 0004).
    Column("raw", Text),
    # What some venues give beyond the common columns (Databento MBO); NULL for the others.
    Column("flags", SmallInteger),
    Column("ts_event", BigInteger),
    Column("ts_recv", BigInteger),
    Column("sequence", BigInteger),
    Column("channel", SmallInteger),
    # The records that start or end a "book may be wrong" period (ledger gaps reads them).
    Index("event_rows_venue_marks", "stream_id", "seq", postgresql_where=text("(flags & 36) <> 0 OR kind = 'clear'")),
    comment=(
        "Append-only event log, recent events one row each (ledger db compact folds older ones into"
        " event_blocks); raw is the input line or message exactly as received (ledger_raw: NULL rebuilt from"
        " the columns)."
    ),
)


class _EventArray(UserDefinedType[Any]):
    """``ledger_event[]``: a block's events (migration 0005), read through the ``events`` view."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "ledger_event[]"


# A stream's older events, folded out of event_rows by ``ledger db compact``: up to a few
# thousand events a row, in seq order, one array PostgreSQL compresses whole.
event_blocks = Table(
    "event_blocks",
    metadata,
    Column("stream_id", Integer, primary_key=True),
    Column("first_seq", BigInteger, primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    Column("n_events", Integer, nullable=False),
    Column("events", _EventArray(), nullable=False),
    CheckConstraint("first_seq <= last_seq AND n_events >= 1", name="event_blocks_range"),
    comment=(
        "Runs of a stream's older events, in seq order, one compressed array per row (ledger db compact);"
        " read them through the events view."
    ),
)

#: The view ``events`` (migration 0005): event_rows UNION ALL the events of event_blocks,
#: the whole log with the columns of event_rows. Queries read it; nothing writes to it. It is
#: kept out of :data:`metadata` (a view, not a table of the migrations' comparison).
views = MetaData()
events = Table(
    "events",
    views,
    *(Column(c.name, c.type, primary_key=c.primary_key) for c in event_rows.columns),
)


gaps = Table(
    "gaps",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("stream_id", Integer, ForeignKey("streams.id", ondelete="CASCADE"), nullable=False),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("status", Text, nullable=False, server_default="open"),
    Column("detected_at", _TS, nullable=False, server_default=func.now()),
    Column("resolved_at", _TS),
    Column("resolved_by_seq", BigInteger),
    Column("projector_skipped_at", _TS),
    CheckConstraint("first_seq <= last_seq", name="gaps_range"),
    CheckConstraint("status IN ('open', 'filled', 'snapshot')", name="gaps_status"),
    Index("gaps_stream_first", "stream_id", "first_seq"),
    Index("gaps_open", "stream_id", "first_seq", unique=True, postgresql_where=text("status = 'open'")),
    comment="Runs of missing seqs: open, filled by late events, or resolved by a source snapshot.",
)

rejects = Table(
    "rejects",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("stream_id", Integer, ForeignKey("streams.id", ondelete="CASCADE"), nullable=False),
    Column("source", Text, nullable=False),
    Column("line_no", BigInteger, nullable=False),
    Column("raw", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", _TS, nullable=False, server_default=func.now()),
    Index("rejects_once", "stream_id", "source", "line_no", text("md5(raw)"), unique=True),
    comment="Input that could not be stored as an event, with where it came from and why.",
)

book_snapshots = Table(
    "book_snapshots",
    metadata,
    Column("stream_id", Integer, ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("format_version", SmallInteger, nullable=False),
    Column("order_count", Integer, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("checksum", Text, nullable=False),
    Column("created_at", _TS, nullable=False, server_default=func.now()),
    comment="The projector's own saved books; payload layout given by format_version.",
)

l1 = Table(
    "l1",
    metadata,
    Column("stream_id", Integer, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("ts", _TS),
    Column("bid_price", Numeric, nullable=False),
    Column("bid_size", Numeric, nullable=False),
    Column("ask_price", Numeric, nullable=False),
    Column("ask_size", Numeric, nullable=False),
    Column("maybe_bad", Boolean),
    comment="Every best bid/offer change, keyed by the seq of the event that caused it.",
)

projector_positions = Table(
    "projector_positions",
    metadata,
    Column("stream_id", Integer, ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("events_applied", BigInteger, nullable=False, server_default="0"),
    Column("l1_rows", BigInteger, nullable=False, server_default="0"),
    Column("anomalies", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("gaps_skipped", Integer, nullable=False, server_default="0"),
    Column("status", Text, nullable=False, server_default="ok"),
    Column("message", Text),
    Column("updated_at", _TS, nullable=False, server_default=func.now()),
    Column("maybe_bad", Boolean, nullable=False, server_default=text("false")),
    comment="Where the projector stands on each stream; written with its L1 rows.",
)

ingest_checkpoints = Table(
    "ingest_checkpoints",
    metadata,
    Column("stream_id", Integer, ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True),
    Column("source", Text, primary_key=True),
    Column("lines_done", BigInteger, nullable=False),
    Column("bytes_done", BigInteger, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("complete", Boolean, nullable=False, server_default=text("false")),
    Column("events_stored", BigInteger, nullable=False, server_default="0"),
    Column("duplicates", BigInteger, nullable=False, server_default="0"),
    Column("rejects", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", _TS, nullable=False, server_default=func.now()),
    comment="How far the latest ingest of one source got (and what it counted), so a killed run resumes.",
)

source_snapshots = Table(
    "source_snapshots",
    metadata,
    Column("stream_id", Integer, ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("received_at", _TS, nullable=False, server_default=func.now()),
    Column("order_count", Integer, nullable=False),
    Column("raw", Text, nullable=False),
    comment="Books published by the venue at a sequence (e.g. Coinbase REST level 3), as received.",
)
