"""Advisory locks: which process writes a stream, which one projects it, and who follows.

PostgreSQL session-level advisory locks on two int4 keys (class, object), which
``pg_locks`` lists with ``objsubid = 2``:

    ==========  ========  ===========================================  =================
    lock        class     held by                                      object
    ==========  ========  ===========================================  =================
    writer      0x1ED6    a stream's writer: a CSV ingest or a capture  the stream id
    projector   0x1ED7    a stream's projector (a batch run, a follower) the stream id
    member      0x1ED8    a live follower, for as long as it follows     its backend pid
    position    0x1ED9    a transaction that reads the projector's       the stream id
                          position to check it against the log (a
                          transaction lock: the committer, an ingest)
    compact     0x1EDA    a transaction folding a stream's rows into     the stream id
                          blocks (:mod:`ledger.storage.blocks`)
    ==========  ========  ===========================================  =================

A lock belongs to the session (the connection) that took it: closing or losing the
connection lets go of it, so a process that dies never keeps a stream. Migrations take a
transaction lock of their own (:mod:`ledger.storage.database`).

:func:`fence_projector` is what the projector's committer checks before each write: that
its process still holds the stream's projector lock, and that the stored position is the
one it wrote last (the row stays locked until the commit), and that no ingest has marked
it ``needs_rebuild``.

:func:`lock_position` is how both sides of that check lock a stream's position: the
committer (before it counts the events of a chunk's seq range) and an ingest that stores
events below the stream's head (before it compares them with the position). Rule: each
takes the stream's position lock (a transaction lock, so it also serialises the two when
no position row exists yet) and then the row itself, ``FOR UPDATE``, in that order; so one
of the two transactions always commits before the other reads, and the later one sees
what the earlier one did.
"""

from __future__ import annotations

from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.errors import DatabaseError, LockLost, StaleProjection
from ledger.storage.database import drop_connection
from ledger.storage.schema import projector_positions

__all__ = [
    "MEMBER_LOCK_CLASS",
    "POSITION_LOCK_CLASS",
    "PROJECT_LOCK_CLASS",
    "WRITER_LOCK_CLASS",
    "Lock",
    "Locks",
    "fence_projector",
    "lock_position",
    "member_lock",
    "position_lock",
    "projector_lock",
    "writer_lock",
]

#: The lock class of a stream's writer (object: the stream id).
WRITER_LOCK_CLASS = 0x1ED6
#: The lock class of a stream's projector (object: the stream id).
PROJECT_LOCK_CLASS = 0x1ED7
#: The lock class of a live follower (object: its backend pid).
MEMBER_LOCK_CLASS = 0x1ED8
#: The lock class of a stream's projector position, checked against the log (object: the stream id).
POSITION_LOCK_CLASS = 0x1ED9

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


def position_lock(stream_id: int) -> Lock:
    """The transaction lock taken before a stream's position is checked against the log."""
    return Lock(POSITION_LOCK_CLASS, stream_id)


class LockedPosition(NamedTuple):
    """A stream's position row as :func:`lock_position` read it."""

    last_seq: int
    status: str
    message: str | None


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

    def take_for_transaction(self, lock: Lock) -> None:
        """Take ``lock`` until the current transaction ends, waiting for it as long as it takes."""
        self._conn.execute(sa.text("SELECT pg_advisory_xact_lock(:c, :o)"), lock.params())

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


def lock_position(conn: Connection, stream_id: int) -> LockedPosition | None:
    """Lock the stream's projector position until the current transaction ends (its
    position lock, then its row ``FOR UPDATE``: see the module) and read it; None when the
    stream has no position yet (the position lock alone then holds off the other side)."""
    Locks(conn).take_for_transaction(position_lock(stream_id))
    row = conn.execute(
        sa.select(projector_positions.c.last_seq, projector_positions.c.status, projector_positions.c.message)
        .where(projector_positions.c.stream_id == stream_id)
        .with_for_update()
    ).one_or_none()
    return None if row is None else LockedPosition(int(row.last_seq), row.status, row.message)


def fence_projector(conn: Connection, stream_id: int, *, owner: int | None, expected: int | None) -> None:
    """Raise :class:`~ledger.errors.LockLost` unless a projector may write ``stream_id`` in
    the current transaction: the backend ``owner`` (None: not checked) still holds its
    projector lock, and the stored position is still ``expected`` (None: no position row),
    the one this projector wrote last. Raise :class:`~ledger.errors.StaleProjection` (a
    LockLost) when the position is marked ``needs_rebuild`` (an ingest stored events behind
    it), with the mark's reason. The position stays locked until the commit
    (:func:`lock_position`), which closes the race the lock check leaves."""
    if owner is not None and not Locks(conn).holds(projector_lock(stream_id), pid=owner):
        raise LockLost(f"stream {stream_id}: this projector lost its lock on the stream; it writes nothing more for it")
    position = lock_position(conn, stream_id)
    if position is not None and position.status == "needs_rebuild":
        raise StaleProjection(
            position.message or f"stream {stream_id}: its projection needs `ledger project --rebuild`"
        )
    current = None if position is None else position.last_seq
    if current != expected:
        raise LockLost(
            f"stream {stream_id}: its projector position is {current}, not {expected} as this projector wrote it; "
            "another projector has written it, so this one writes nothing more for it"
        )
