"""Projection: the log replayed into books, with L1 rows and book snapshots (batch, follow mode, live, replay)."""
