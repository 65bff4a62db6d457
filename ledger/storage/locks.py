"""Advisory locks: which process writes a stream, which one projects it, and who follows.

PostgreSQL session-level advisory locks on two int4 keys (class, object), which
``pg_locks`` lists with ``objsubid = 2``:

    ==========  ========  ===========================================  =================
    lock        class     held by                                      object
    ==========  ========  ===========================================  =================
    writer      0x1ED6    a stream's writer: a CSV ingest or a capture  the stream id
    projector   0x1ED7    a stream's projector (a batch run, a follower) the stream id
    member      0x1ED8    a live follower, for as long as it follows     its backend pid
    ==========  ========  ===========================================  =================

A lock belongs to the session (the connection) that took it: closing or losing the
connection lets go of it, so a process that dies never keeps a stream. Migrations take a
transaction lock of their own (:mod:`ledger.storage.database`).

:func:`fence_projector` is what the projector's committer checks before each write: that
its process still holds the stream's projector lock, and that the stored position is the
one it wrote last (the row stays locked until the commit).
"""

from __future__ import annotations

from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.errors import DatabaseError, LockLost
from ledger.storage.database import drop_connection
from ledger.storage.schema import projector_positions

__all__ = [
    "MEMBER_LOCK_CLASS",
    "PROJECT_LOCK_CLASS",
    "WRITER_LOCK_CLASS",
    "Lock",
    "Locks",
    "fence_projector",
    "member_lock",
    "projector_lock",
    "writer_lock",
]

#: The lock class of a stream's writer (object: the stream id).
WRITER_LOCK_CLASS = 0x1ED6
#: The lock class of a stream's projector (object: the stream id).
PROJECT_LOCK_CLASS = 0x1ED7
#: The lock class of a live follower (object: its backend pid).
MEMBER_LOCK_CLASS = 0x1ED8

_IN_THIS_DATABASE = (
    "locktype = 'advisory' AND granted AND objsubid = 2"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
_HOLDS = sa.text(f"SELECT 1 FROM pg_locks WHERE {_IN_THIS_DATABASE} AND pid = :pid AND classid = :c AND objid = :o")
_HOLDERS = sa.text(f"SELECT count(*) FROM pg_locks WHERE {_IN_THIS_DATABASE} AND classid = :c")


class Lock(NamedTuple):
    """One advisory lock: its class and its object."""

    lock_class: int
    key: int

    def params(self) -> dict[str, int]:
        return {"c": self.lock_class, "o": self.key}


def writer_lock(stream_id: int) -> Lock:
    """The lock a stream's writer (ingest, capture) holds."""
    return Lock(WRITER_LOCK_CLASS, stream_id)


def projector_lock(stream_id: int) -> Lock:
    """The lock a stream's projector holds."""
    return Lock(PROJECT_LOCK_CLASS, stream_id)


def member_lock(backend_pid: int) -> Lock:
    """The lock a live follower holds, keyed by the backend of its lock connection."""
    return Lock(MEMBER_LOCK_CLASS, backend_pid)


class Locks:
    """Advisory locks taken, given back and looked up on one connection (its session)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def backend_pid(self) -> int:
        """The server process of this connection: what ``pg_locks.pid`` calls it."""
        return int(self._conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())

    def take(self, lock: Lock) -> None:
        """Take ``lock`` for the session, waiting for it as long as it takes."""
        self._conn.execute(sa.text("SELECT pg_advisory_lock(:c, :o)"), lock.params())

    def try_take(self, lock: Lock) -> bool:
        """Take ``lock`` for the session if no other session holds it; whether it did."""
        return bool(self._conn.execute(sa.text("SELECT pg_try_advisory_lock(:c, :o)"), lock.params()).scalar())

    def try_take_for_transaction(self, lock: Lock) -> bool:
        """Take ``lock`` until the current transaction ends, if free; whether it did."""
        return bool(self._conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:c, :o)"), lock.params()).scalar())

    def release(self, lock: Lock) -> None:
        self._conn.execute(sa.text("SELECT pg_advisory_unlock(:c, :o)"), lock.params())

    def release_all(self) -> None:
        """Let go of every session lock of this connection (before it goes back to a pool)."""
        self._conn.execute(sa.text("SELECT pg_advisory_unlock_all()"))

    def give_back(self, lock: Lock | None = None) -> None:
        """End the transaction, let go of ``lock`` (of every lock when None) and commit. On
        a connection already lost the server has let go of them with the session: the
        connection is dropped instead."""
        try:
            self._conn.rollback()
            if lock is None:
                self.release_all()
            else:
                self.release(lock)
            self._conn.commit()
        except DatabaseError:
            drop_connection(self._conn)

    def holds(self, lock: Lock, *, pid: int) -> bool:
        """Whether the session of backend ``pid`` holds ``lock`` (in this database)."""
        return self._conn.execute(_HOLDS, {"pid": pid, **lock.params()}).first() is not None

    def holders(self, *, lock_class: int) -> int:
        """How many locks of ``lock_class`` are held (in this database)."""
        return int(self._conn.execute(_HOLDERS, {"c": lock_class}).scalar_one())


def fence_projector(conn: Connection, stream_id: int, *, owner: int | None, expected: int | None) -> None:
    """Raise :class:`~ledger.errors.LockLost` unless a projector may write ``stream_id`` in
    the current transaction: the backend ``owner`` (None: not checked) still holds its
    projector lock, and the stored position is still ``expected`` (None: no position row),
    the one this projector wrote last. The position row stays locked until the commit,
    which closes the race the lock check leaves."""
    if owner is not None and not Locks(conn).holds(projector_lock(stream_id), pid=owner):
        raise LockLost(f"stream {stream_id}: this projector lost its lock on the stream; it writes nothing more for it")
    current = conn.execute(
        sa.select(projector_positions.c.last_seq).where(projector_positions.c.stream_id == stream_id).with_for_update()
    ).scalar()
    if current != expected:
        raise LockLost(
            f"stream {stream_id}: its projector position is {current}, not {expected} as this projector wrote it; "
            "another projector has written it, so this one writes nothing more for it"
        )
