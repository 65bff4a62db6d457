"""Venue fields on events (Databento MBO, issue #12) and the venue's "book may be wrong" mark.

- ``events``: ``flags`` (the record's flags as the venue gives them), ``ts_event`` and
  ``ts_recv`` (exact integer nanoseconds: ``ts`` keeps only microseconds), the venue's
  ``sequence`` and ``channel``. NULL for venues without them (CSV, Coinbase): adding
  nullable columns without a default rewrites nothing, and a NULL costs a bit in the row's
  null bitmap.
- ``l1.maybe_bad``: true where the venue said the book may be wrong at this row
  (Databento's ``F_MAYBE_BAD_BOOK``, until the next clear or snapshot); NULL otherwise (a
  NULL costs nothing there: the row's null bitmap fits in the header's padding).
- ``projector_positions.maybe_bad``: the same, for the book where the projector stands.
- ``events_venue_marks``: a partial index of the records that can start or end such a
  period (flags ``F_MAYBE_BAD_BOOK`` 4 or ``F_SNAPSHOT`` 32, or a clear), so ``ledger gaps``
  finds them without reading the stream.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("flags", sa.SmallInteger))
    op.add_column("events", sa.Column("ts_event", sa.BigInteger))
    op.add_column("events", sa.Column("ts_recv", sa.BigInteger))
    op.add_column("events", sa.Column("sequence", sa.BigInteger))
    op.add_column("events", sa.Column("channel", sa.SmallInteger))
    op.create_index(
        "events_venue_marks",
        "events",
        ["stream_id", "seq"],
        postgresql_where=sa.text("(flags & 36) <> 0 OR kind = 'clear'"),
    )
    op.add_column("l1", sa.Column("maybe_bad", sa.Boolean))
    op.add_column(
        "projector_positions", sa.Column("maybe_bad", sa.Boolean, nullable=False, server_default=sa.text("false"))
    )


def downgrade() -> None:
    op.drop_column("projector_positions", "maybe_bad")
    op.drop_column("l1", "maybe_bad")
    op.drop_index("events_venue_marks", table_name="events")
    for column in ("channel", "sequence", "ts_recv", "ts_event", "flags"):
        op.drop_column("events", column)
