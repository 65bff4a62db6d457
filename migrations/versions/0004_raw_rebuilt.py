"""A CSV event's raw line is rebuilt from its columns when it was in canonical form (#15).

- ``ledger_csv_time(ts)``: a time as the L3 CSV writes it, ``2021-08-02 22:11:21.94404 UTC``
  (UTC, the fraction without trailing zeros, none at a whole second).
- ``ledger_csv_line(kind, order_id, side, price, size, ts, seq)``: the canonical CSV line of
  an event from its columns (no line end). Both are IMMUTABLE: they format every field
  themselves (``AT TIME ZONE 'UTC'``, ``extract`` from a plain timestamp, the integer and
  numeric output functions, ``lpad``), so DateStyle, TimeZone, extra_float_digits and the
  locale change nothing; and being plain SQL expressions they are inlined into a query.
- ``ledger_raw(e events)``: ``coalesce(e.raw, ledger_csv_line(...))``, the line as received.
- ``events.raw`` becomes nullable: the CSV ingest stores NULL exactly when the line equals
  its rebuild byte for byte (``ledger.venues.csv.format.csv_line``, the same rule in Python).
  Other venues always store raw.

Downgrade puts every rebuilt line back into ``raw`` before making it NOT NULL again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Each field of the time in UTC, from a plain timestamp (extract from one is IMMUTABLE); the
# seconds and microseconds as one integer make the seconds and the fraction.
_CSV_TIME = """
CREATE FUNCTION ledger_csv_time(ts timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT lpad(extract(year FROM (ts AT TIME ZONE 'UTC'))::int::text, 4, '0')
    || '-' || lpad(extract(month FROM (ts AT TIME ZONE 'UTC'))::int::text, 2, '0')
    || '-' || lpad(extract(day FROM (ts AT TIME ZONE 'UTC'))::int::text, 2, '0')
    || ' ' || lpad(extract(hour FROM (ts AT TIME ZONE 'UTC'))::int::text, 2, '0')
    || ':' || lpad(extract(minute FROM (ts AT TIME ZONE 'UTC'))::int::text, 2, '0')
    || ':' || lpad((extract(microseconds FROM (ts AT TIME ZONE 'UTC'))::bigint / 1000000)::text, 2, '0')
    || CASE WHEN extract(microseconds FROM (ts AT TIME ZONE 'UTC'))::bigint % 1000000 = 0 THEN ''
            ELSE '.' || rtrim(
                lpad((extract(microseconds FROM (ts AT TIME ZONE 'UTC'))::bigint % 1000000)::text, 6, '0'), '0'
            ) END
    || ' UTC'
$$
"""

_CSV_LINE = """
CREATE FUNCTION ledger_csv_line(
    kind text, order_id text, side text, price numeric, size numeric, ts timestamptz, seq bigint
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT seq::text || ','
    || CASE kind
        WHEN 'add' THEN order_id || ',' || CASE side WHEN 'B' THEN 'BUY' WHEN 'S' THEN 'SELL' END
            || ',' || price::text || ',' || size::text || ',,,,,,,,,,,'
        WHEN 'update' THEN ',,,,' || order_id || ',' || CASE side WHEN 'B' THEN 'BUY' WHEN 'S' THEN 'SELL' END
            || ',' || price::text || ',' || size::text || ',,,,,,,'
        WHEN 'delete' THEN ',,,,,,,,' || order_id || ',' || CASE side WHEN 'B' THEN 'BUY' WHEN 'S' THEN 'SELL' END
            || ',,,,,'
        WHEN 'trade' THEN ',,,,,,,,,,' || order_id || ',' || CASE side WHEN 'B' THEN 'BUY' WHEN 'S' THEN 'SELL' END
            || ',' || price::text || ',' || size::text || ','
       END
    || ledger_csv_time(ts)
$$
"""

_RAW = """
CREATE FUNCTION ledger_raw(e events) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT coalesce(e.raw, ledger_csv_line(e.kind, e.order_id, e.side, e.price, e.size, e.ts, e.seq))
$$
"""

_COMMENT = (
    "Append-only event log; raw is the input line or message exactly as received"
    " (ledger_raw(events): NULL rebuilt from the columns)."
)
_OLD_COMMENT = "Append-only event log; raw is the input line or message exactly as received."


def upgrade() -> None:
    op.execute(_CSV_TIME)
    op.execute(_CSV_LINE)
    op.execute(_RAW)
    op.alter_column("events", "raw", nullable=True)
    op.create_table_comment("events", _COMMENT, existing_comment=_OLD_COMMENT)


def downgrade() -> None:
    op.create_table_comment("events", _OLD_COMMENT, existing_comment=_COMMENT)
    op.execute("UPDATE events SET raw = ledger_raw(events) WHERE raw IS NULL")
    op.alter_column("events", "raw", nullable=False)
    op.execute("DROP FUNCTION ledger_raw(events)")
    op.execute("DROP FUNCTION ledger_csv_line(text, text, text, numeric, numeric, timestamptz, bigint)")
    op.execute("DROP FUNCTION ledger_csv_time(timestamptz)")
