"""Alembic migrations of the ledger schema (installed as ``ledger.migrations``)."""
