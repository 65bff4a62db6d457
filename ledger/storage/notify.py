"""Telling followers that a stream grew: PostgreSQL NOTIFY on commit, LISTEN to wait.

Ingest calls :func:`notify_appended` inside the transaction that stores a batch; the
server delivers the notification when (and only if) that transaction commits, so a
follower woken by it always finds the new events. :class:`Listener` holds one
autocommit connection that LISTENs, and :meth:`Listener.wait` blocks until a
notification comes or a timeout passes (the slow poll a follower falls back on).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger.errors import DatabaseError
from ledger.storage.database import driver_errors, drop_connection

__all__ = ["CHANNEL", "Listener", "notify_appended"]

#: The notification channel; the payload is the stream id, in decimal.
CHANNEL = "ledger_events"


def notify_appended(conn: Connection, stream_ids: Iterable[int]) -> None:
    """Announce, on commit of the current transaction, that these streams have new events."""
    params = [{"channel": CHANNEL, "payload": str(sid)} for sid in sorted(set(stream_ids))]
    if params:
        conn.execute(sa.text("SELECT pg_notify(:channel, :payload)"), params)


class Listener:
    """A connection that LISTENs on :data:`CHANNEL`. Close it (or use ``with``) when done."""

    def __init__(self, engine: Engine) -> None:
        self._conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._conn.execute(sa.text(f"LISTEN {CHANNEL}"))
        driver = self._conn.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        self._driver: psycopg.Connection[object] = driver

    def wait(self, timeout: float) -> set[int]:
        """Stream ids notified within ``timeout`` seconds (empty when none). Returns as soon
        as one arrives, with any others already queued."""
        woken: set[int] = set()
        deadline = time.monotonic() + timeout
        with driver_errors():
            for note in self._driver.notifies(timeout=max(0.0, deadline - time.monotonic()), stop_after=1):
                woken.add(_stream_id(note.payload))
            if woken:  # take what else is queued, without waiting
                for note in self._driver.notifies(timeout=0.0):
                    woken.add(_stream_id(note.payload))
        woken.discard(-1)
        return woken

    def close(self) -> None:
        try:
            self._conn.close()
        except DatabaseError:  # the server is gone: drop the connection
            drop_connection(self._conn)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stream_id(payload: str) -> int:
    return int(payload) if payload.isdigit() else -1
