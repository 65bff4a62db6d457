"""The first schema: streams, the event log, gaps, rejects, book snapshots, L1 rows,
projector positions and ingest checkpoints.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = TIMESTAMP(timezone=True)


def _stream_fk() -> sa.ForeignKey:
    return sa.ForeignKey("streams.id", ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "streams",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        comment="One sequence space: a venue and a product, or one CSV feed.",
    )
    op.create_table(
        "events",
        sa.Column("stream_id", sa.Integer, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("order_id", sa.Text),
        sa.Column("side", sa.Text),
        sa.Column("price", sa.Numeric),
        sa.Column("size", sa.Numeric),
        sa.Column("ts", _TS),
        sa.Column("raw", sa.Text, nullable=False),
        comment="Append-only event log; raw is the input line or message exactly as received.",
    )
    op.create_table(
        "gaps",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("stream_id", sa.Integer, _stream_fk(), nullable=False),
        sa.Column("first_seq", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="open"),
        sa.Column("detected_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("resolved_at", _TS),
        sa.Column("resolved_by_seq", sa.BigInteger),
        sa.Column("projector_skipped_at", _TS),
        sa.CheckConstraint("first_seq <= last_seq", name="gaps_range"),
        sa.CheckConstraint("status IN ('open', 'filled', 'snapshot')", name="gaps_status"),
        comment="Runs of missing seqs: open, filled by late events, or resolved by a source snapshot.",
    )
    op.create_index("gaps_stream_first", "gaps", ["stream_id", "first_seq"])
    op.create_index(
        "gaps_open",
        "gaps",
        ["stream_id", "first_seq"],
        unique=True,
        postgresql_where=sa.text("status = 'open'"),
    )
    op.create_table(
        "rejects",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("stream_id", sa.Integer, _stream_fk(), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("line_no", sa.BigInteger, nullable=False),
        sa.Column("raw", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        comment="Input that could not be stored as an event, with where it came from and why.",
    )
    op.create_index("rejects_once", "rejects", ["stream_id", "source", "line_no", sa.text("md5(raw)")], unique=True)
    op.create_table(
        "book_snapshots",
        sa.Column("stream_id", sa.Integer, _stream_fk(), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("format_version", sa.SmallInteger, nullable=False),
        sa.Column("order_count", sa.Integer, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("checksum", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        comment="The projector's own saved books; payload layout given by format_version.",
    )
    op.create_table(
        "l1",
        sa.Column("stream_id", sa.Integer, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("ts", _TS),
        sa.Column("bid_price", sa.Numeric, nullable=False),
        sa.Column("bid_size", sa.Numeric, nullable=False),
        sa.Column("ask_price", sa.Numeric, nullable=False),
        sa.Column("ask_size", sa.Numeric, nullable=False),
        comment="Every best bid/offer change, keyed by the seq of the event that caused it.",
    )
    op.create_table(
        "projector_positions",
        sa.Column("stream_id", sa.Integer, _stream_fk(), primary_key=True),
        sa.Column("first_seq", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("events_applied", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("l1_rows", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("anomalies", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("gaps_skipped", sa.Integer, nullable=False, server_default="0"),
        sa.Column("status", sa.Text, nullable=False, server_default="ok"),
        sa.Column("message", sa.Text),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
        comment="Where the projector stands on each stream; written with its L1 rows.",
    )
    op.create_table(
        "ingest_checkpoints",
        sa.Column("stream_id", sa.Integer, _stream_fk(), primary_key=True),
        sa.Column("source", sa.Text, primary_key=True),
        sa.Column("lines_done", sa.BigInteger, nullable=False),
        sa.Column("bytes_done", sa.BigInteger, nullable=False),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("complete", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("events_stored", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("duplicates", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rejects", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
        comment="How far the latest ingest of one source got (and what it counted), so a killed run resumes.",
    )


def downgrade() -> None:
    for table in (
        "ingest_checkpoints",
        "projector_positions",
        "l1",
        "book_snapshots",
        "rejects",
        "gaps",
        "events",
        "streams",
    ):
        op.drop_table(table)
