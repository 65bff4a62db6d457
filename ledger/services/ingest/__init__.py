"""Ingest: files into the event log (resumable, idempotent, with gap tracking)."""
