"""The Alembic migrations: up, down to base, up again, and agreement with the Core tables."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from ledger.storage.database import HEAD_REVISION, current_revision, downgrade, head_revision, upgrade
from ledger.storage.schema import metadata

TABLES = {
    "streams", "event_rows", "event_blocks", "gaps", "rejects", "book_snapshots", "l1", "projector_positions",
    "ingest_checkpoints", "source_snapshots",
}  # fmt: skip


def _tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_to_base_and_upgrade_again(scratch_engine: Engine) -> None:
    assert upgrade(scratch_engine) == "empty"
    assert _tables(scratch_engine) == TABLES
    assert upgrade(scratch_engine) is None  # already at head: nothing to do
    downgrade(scratch_engine, "base")
    assert _tables(scratch_engine) == set()
    with scratch_engine.connect() as conn:
        assert current_revision(conn) is None
    upgrade(scratch_engine)
    assert _tables(scratch_engine) == TABLES
    with scratch_engine.connect() as conn:
        assert current_revision(conn) == head_revision()


def test_head_revision_constant_is_the_newest_migration() -> None:
    assert head_revision() == HEAD_REVISION


# SQLAlchemy has no type of its own for event_blocks.events (ledger_event[], a composite of
# the migrations): it says so when reflecting it, and compares the rest.
@pytest.mark.filterwarnings("ignore:Did not recognize type 'ledger_event'")
def test_core_tables_match_the_migrated_schema(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_event_log_key_is_stream_then_seq(engine: Engine) -> None:
    pk = sa.inspect(engine).get_pk_constraint("event_rows")
    assert pk["constrained_columns"] == ["stream_id", "seq"]
