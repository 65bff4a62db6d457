"""Cold history in blocks: many events per row, compressed (#15).

- The event table is renamed ``event_rows``: the recent events, one row each, where every
  ingest appends (COPY) and late events land.
- ``ledger_event``: the composite type of one event without its stream (the columns of
  ``event_rows`` after ``stream_id``, in order).
- ``event_blocks (stream_id, first_seq, last_seq, n_events, events ledger_event[])``: runs
  of a stream's events folded out of ``event_rows`` by ``ledger db compact``, each block up
  to a few thousand events in seq order, disjoint from the stream's other blocks. The
  array is one value that PostgreSQL compresses as a whole (TOAST, pglz): the row's own
  overhead is paid once per block, and the compression sees the repeats between events.
- ``events``: a view, ``event_rows`` UNION ALL the blocks' events, with the table's columns
  in the table's order. Every query that read the table reads the view unchanged and sees
  the whole history; readers of long ranges read blocks directly (``EventLog.read_chunks``).
- ``ledger_raw(e events)`` for the view's rows (the one on the table's rows stays, under its
  new type name).

Downgrade unpacks every block back into rows, then drops the view, the blocks and the type
and gives the table its name back.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_FIELDS = (
    "seq bigint, kind text, order_id text, side text, price numeric, size numeric, ts timestamptz, raw text,"
    " flags smallint, ts_event bigint, ts_recv bigint, sequence bigint, channel smallint"
)
_NAMES = "seq, kind, order_id, side, price, size, ts, raw, flags, ts_event, ts_recv, sequence, channel"
_E_NAMES = ", ".join(f"e.{name.strip()}" for name in _NAMES.split(","))

_VIEW = f"""
CREATE VIEW events AS
SELECT stream_id, {_NAMES} FROM event_rows
UNION ALL
SELECT b.stream_id, {_E_NAMES} FROM event_blocks b CROSS JOIN LATERAL unnest(b.events) AS e
"""

_RAW = """
CREATE FUNCTION ledger_raw(e events) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT coalesce(e.raw, ledger_csv_line(e.kind, e.order_id, e.side, e.price, e.size, e.ts, e.seq))
$$
"""

_COMMENT = (
    "Append-only event log, recent events one row each (ledger db compact folds older ones into"
    " event_blocks); raw is the input line or message exactly as received (ledger_raw: NULL rebuilt from"
    " the columns)."
)
_OLD_COMMENT = (
    "Append-only event log; raw is the input line or message exactly as received"
    " (ledger_raw(events): NULL rebuilt from the columns)."
)
_VIEW_COMMENT = (
    "Every event of the log: event_rows and the events of event_blocks, with the columns of event_rows."
    " Read long ranges of a compacted stream by seq range with ledger_events(stream_id, after, upto)."
)

# The events of one stream with after < seq <= upto, blocks pruned by their seq range (a query
# on the view unpacks every block of the stream): plain SQL, inlined into the caller's query.
_RANGE = f"""
CREATE FUNCTION ledger_events(stream integer, after bigint, upto bigint) RETURNS SETOF events
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT stream_id, {_NAMES} FROM event_rows r
 WHERE r.stream_id = stream AND r.seq > after AND r.seq <= upto
UNION ALL
SELECT b.stream_id, {_E_NAMES} FROM event_blocks b CROSS JOIN LATERAL unnest(b.events) AS e
 WHERE b.stream_id = stream AND b.last_seq > after AND b.first_seq <= upto AND e.seq > after AND e.seq <= upto
$$
"""


def upgrade() -> None:
    op.execute("ALTER TABLE events RENAME TO event_rows")
    op.execute("ALTER INDEX events_pkey RENAME TO event_rows_pkey")
    op.execute("ALTER INDEX events_venue_marks RENAME TO event_rows_venue_marks")
    op.create_table_comment("event_rows", _COMMENT, existing_comment=_OLD_COMMENT)
    op.execute(f"CREATE TYPE ledger_event AS ({_FIELDS})")
    op.execute(
        """
        CREATE TABLE event_blocks (
            stream_id integer NOT NULL,
            first_seq bigint NOT NULL,
            last_seq bigint NOT NULL,
            n_events integer NOT NULL,
            events ledger_event[] NOT NULL,
            CONSTRAINT event_blocks_pkey PRIMARY KEY (stream_id, first_seq),
            CONSTRAINT event_blocks_range CHECK (first_seq <= last_seq AND n_events >= 1)
        )
        """
    )
    op.execute(
        "COMMENT ON TABLE event_blocks IS 'Runs of a stream''s older events, in seq order, one compressed"
        " array per row (ledger db compact); read them through the events view.'"
    )
    op.execute(_VIEW)
    op.execute(f"COMMENT ON VIEW events IS '{_VIEW_COMMENT}'")
    op.execute(_RAW)
    op.execute(_RANGE)


def downgrade() -> None:
    op.execute(
        f"INSERT INTO event_rows (stream_id, {_NAMES})"
        f" SELECT b.stream_id, {_E_NAMES} FROM event_blocks b CROSS JOIN LATERAL unnest(b.events) AS e"
    )
    op.execute("DROP FUNCTION ledger_events(integer, bigint, bigint)")
    op.execute("DROP FUNCTION ledger_raw(events)")
    op.execute("DROP VIEW events")
    op.execute("DROP TABLE event_blocks")
    op.execute("DROP TYPE ledger_event")
    op.create_table_comment("event_rows", _OLD_COMMENT, existing_comment=_COMMENT)
    op.execute("ALTER INDEX event_rows_venue_marks RENAME TO events_venue_marks")
    op.execute("ALTER INDEX event_rows_pkey RENAME TO events_pkey")
    op.execute("ALTER TABLE event_rows RENAME TO events")
