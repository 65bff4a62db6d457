"""Where a live capture commits: its streams, their locks, and batches that survive a lost server.

:class:`CaptureStore` owns one connection. It creates the streams, takes each one's writer
lock (the advisory lock a CSV ingest takes too, so two writers never share a stream) and
loads their sequencing state. :meth:`CaptureStore.commit` writes one :class:`CaptureBatch`
in one transaction: the events by COPY, then per stream its rejects, its gap rows
reconciled with the tracker, and a REST book with the gaps it resolves. A book is stored
with the moment its response was received (``received_at``, the capture's clock in UTC),
not the moment it was written. :attr:`CaptureStore.gap_rows` counts the gap rows each
stream's commits created, so the capture's summary says exactly what ``ledger gaps``
lists for the run.

When the connection is lost (the server restarts, the network drops), the commit is
retried with exponential backoff and jitter until ``retry_for`` seconds have passed: a new
connection, the locks taken again, the stored gaps read again. A commit whose outcome is
unknown (the server may have committed just before the connection dropped) is
recognised by its first event being in the log, so nothing is stored twice.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from sqlalchemy.engine import Connection, Engine

from ledger._backoff import Backoff
from ledger.domain.sequencing import GapTracker
from ledger.errors import ConnectionLost, DatabaseError, StreamError, first_line
from ledger.storage.database import drop_connection
from ledger.storage.locks import Locks, writer_lock
from ledger.storage.log import (
    Checkpoint,
    Checkpoints,
    EventLog,
    GapStore,
    Reject,
    Rejects,
    SourceSnapshots,
    Streams,
)
from ledger.storage.notify import notify_appended
from ledger.venues.coinbase.sync import RestBook

__all__ = ["CaptureBatch", "CaptureStore", "StreamBatch"]

log = logging.getLogger(__name__)

# Between a commit's attempts: 0.1 s, then twice the last delay up to 5 s, each time jittered
# by a quarter either way (the jitter carries on), within the store's retry_for seconds.
_RETRIES = Backoff(first=0.1, cap=5.0, jitter=(0.75, 1.25), compound=True)

#: The ``source`` of the capture's rejects and checkpoint rows.
SOURCE = "websocket"


@dataclass
class StreamBatch:
    """One stream's part of a batch."""

    stream_id: int
    name: str
    rows: list[tuple[int, bytes]] = field(default_factory=list)  # (seq, row: ledger.storage.copy.event_row)
    rejects: list[Reject] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)  # the open gaps the rows leave, and those resolved
    books: list[RestBook] = field(default_factory=list)
    resolved_by: int | None = None  # gaps ending at or before this book's seq are resolved by it
    counts: tuple[int, int, int, int] | None = None  # this run's messages, stored, duplicates, rejects

    @property
    def empty(self) -> bool:
        return not (self.rows or self.rejects or self.books or self.resolved_by is not None or self.counts)


@dataclass
class CaptureBatch:
    streams: list[StreamBatch] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return all(s.empty for s in self.streams)


class CaptureStore:
    """The capture's connection and streams (see the module's text)."""

    def __init__(self, engine: Engine, stream_names: list[str], *, retry_for: float = 300.0) -> None:
        self._engine = engine
        self.names = list(stream_names)
        self.retry_for = retry_for
        self.ids: dict[str, int] = {}
        self._stored: dict[int, dict[tuple[int, int], int]] = {}  # open gap rows per stream
        self._conn: Connection | None = None
        self.abort = threading.Event()  # set to give up retrying (a second interrupt)
        self.retries = 0
        self._base: dict[int, Checkpoint] = {}  # the counts of earlier runs, per stream
        self.latest_books: dict[int, int] = {}  # the newest REST book each stream has, from earlier runs
        self.gap_rows: dict[int, int] = {}  # gap rows this run's commits created, per stream
        self.reject_source = f"{SOURCE} {datetime.now(UTC):%Y-%m-%dT%H:%M:%S.%fZ}"  # frame numbers count per run

    # -- opening and closing ---------------------------------------------------------------------

    def open(self) -> dict[str, GapTracker]:
        """Create the streams, lock them and return each one's sequencing state by name."""
        try:
            conn = self._connect()
            trackers = {}
            log_ = EventLog(conn)
            checkpoints = Checkpoints(conn)
            gap_store = GapStore(conn)
            books = SourceSnapshots(conn)
            for name in self.names:
                sid = self.ids[name]
                low, high = log_.seq_range(sid)
                # A gap may end after the last event: the lost tail of a quiet feed, resolved
                # by a book with nothing after it. The log accounts for every seq up to it.
                accounted = gap_store.highest_seq(sid)
                if high is not None and accounted is not None and accounted > high:
                    high = accounted
                trackers[name] = GapTracker(low, high, self._stored[sid])
                self._base[sid] = checkpoints.get(sid, SOURCE) or Checkpoint(0, 0, "", False)
                latest = books.latest_seq(sid)
                if latest is not None:
                    self.latest_books[sid] = latest
            conn.commit()
            return trackers
        except DatabaseError as e:
            self.close()
            raise DatabaseError(f"opening the capture's streams failed: {first_line(e)}") from e

    def _connect(self) -> Connection:
        conn = self._engine.connect()
        try:
            with conn.begin():
                streams = Streams(conn)
                for name in self.names:
                    self.ids[name] = streams.ensure(name, "coinbase")
            locks = Locks(conn)
            for name in self.names:
                if not locks.try_take(writer_lock(self.ids[name])):
                    raise StreamError(f"stream {name!r} is being written by another ingest; stop it first")
            gap_store = GapStore(conn)
            self._stored = {sid: gap_store.open_gaps(sid) for sid in self.ids.values()}
            conn.commit()
        except BaseException:
            drop_connection(conn)  # ends the session, and any lock taken with it
            raise
        self._conn = conn
        return conn

    def close(self) -> None:
        """Close the connection: the server drops its locks with the session."""
        conn, self._conn = self._conn, None
        if conn is not None:
            Locks(conn).give_back()
            conn.close()

    # -- committing ------------------------------------------------------------------------------

    def commit(self, batch: CaptureBatch) -> None:
        """Write ``batch`` in one transaction, retrying on a lost connection (see the module)."""
        delays = replace(_RETRIES, window=self.retry_for).delays()
        uncertain = False
        while True:
            try:
                conn = self._conn if self._conn is not None else self._connect()
                self._write(conn, batch, check_landed=uncertain)
                return
            except StreamError as e:
                if not uncertain or self.abort.is_set() or (delay := next(delays, None)) is None:
                    raise
                # After a lost connection the server may not have noticed yet that the old
                # session is gone, and still holds its locks: wait for it like for the server.
                log.warning("%s; retrying in %.1fs", e, delay)
                self.abort.wait(delay)
                continue
            except DatabaseError as e:
                if not isinstance(e, ConnectionLost):
                    raise DatabaseError(f"storing the capture failed: {first_line(e)}") from e
                self._drop_connection()
                uncertain = True
                self.retries += 1
                if (delay := next(delays, None)) is None or self.abort.is_set():
                    raise DatabaseError(
                        f"the database has been unreachable for {self.retry_for:.0f}s ({first_line(e)}); "
                        "what was received since the last commit is not stored. Run the same command again: "
                        "it goes on with the same streams, and the time it was down becomes a gap"
                    ) from e
                log.warning("database unreachable (%s); retrying in %.1fs", first_line(e), delay)
                self.abort.wait(delay)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            drop_connection(conn)

    def _write(self, conn: Connection, batch: CaptureBatch, *, check_landed: bool) -> None:
        with conn.begin():
            if check_landed and self._landed(conn, batch):
                log.info("the batch committed before the connection was lost; not written again")
                return
            EventLog(conn).append_many((part.stream_id, [row for _, row in part.rows]) for part in batch.streams)
            notify_appended(conn, [p.stream_id for p in batch.streams if p.rows or p.books])
            gap_store = GapStore(conn)
            books = SourceSnapshots(conn)
            stored = dict(self._stored)
            created: dict[int, int] = {}
            for part in batch.streams:
                Rejects(conn).add(part.stream_id, self.reject_source, part.rejects)
                before = set(stored[part.stream_id].values())
                kept = gap_store.reconcile(part.stream_id, stored[part.stream_id], part.gaps)
                created[part.stream_id] = len(set(kept.values()) - before)  # the rows reconcile inserted
                for book in part.books:
                    # Rule: a book is dated by the moment its response was received, on the
                    # capture's clock, not by the insert: the projector dates its L1 row so.
                    books.save(
                        part.stream_id, book.seq, book.raw, order_count=book.order_count, received_at=book.received_at
                    )
                if part.resolved_by is not None:
                    gap_store.resolve_by_snapshot(part.stream_id, part.resolved_by)
                    kept = {g: i for g, i in kept.items() if g[1] > part.resolved_by}
                stored[part.stream_id] = kept
                if part.counts is not None:
                    Checkpoints(conn).put(part.stream_id, SOURCE, self._checkpoint(part.stream_id, part.counts))
        self._stored = stored
        for sid, n in created.items():  # counted once the transaction is committed
            self.gap_rows[sid] = self.gap_rows.get(sid, 0) + n

    def _checkpoint(self, stream_id: int, counts: tuple[int, int, int, int]) -> Checkpoint:
        """What ``ledger status`` shows of the capture: counts over all runs, and (in
        ``updated_at``) when it last stored something."""
        base = self._base[stream_id]
        messages, stored, duplicates, rejects = counts
        return Checkpoint(
            base.lines_done + messages,
            0,
            "",
            False,
            events_stored=base.events_stored + stored,
            duplicates=base.duplicates + duplicates,
            rejects=base.rejects + rejects,
        )

    @staticmethod
    def _landed(conn: Connection, batch: CaptureBatch) -> bool:
        """Whether the batch's first event is in the log (it has events)."""
        part = next((p for p in batch.streams if p.rows), None)
        if part is None:
            return False
        seq = part.rows[0][0]
        return EventLog(conn).any_between(part.stream_id, first=seq, last=seq)
