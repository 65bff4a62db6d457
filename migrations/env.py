"""Alembic environment: runs migrations on the connection ledger hands over, or on
LEDGER_DATABASE_URL (or the embedded default) when started from the ``alembic`` command."""

from __future__ import annotations

from alembic import context

config = context.config


def _run(connection: object) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from ledger.storage.database import open_database

    with open_database(migrate=False) as database, database.engine.begin() as conn:
        _run(conn)
