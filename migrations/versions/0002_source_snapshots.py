"""Source snapshots: full L3 books published by a venue (Coinbase REST ``book?level=3``),
kept as received, so the projector can restart a book from them after a gap.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TIMESTAMP

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "source_snapshots",
        sa.Column("stream_id", sa.Integer, sa.ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("received_at", TIMESTAMP(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("order_count", sa.Integer, nullable=False),
        sa.Column("raw", sa.Text, nullable=False),
        comment="Books published by the venue at a sequence (e.g. Coinbase REST level 3), as received.",
    )


def downgrade() -> None:
    op.drop_table("source_snapshots")
