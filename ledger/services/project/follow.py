"""``ledger project --follow``: keep projecting as ingest appends, sharing streams between processes.

A follower holds the books of its streams in memory and, once caught up, sleeps until ingest
announces new events (LISTEN/NOTIFY, :mod:`ledger.storage.notify`, or an in-process
:class:`queue.Queue` of stream ids when ingest runs in the same process), then applies just
those: an L1 row is committed a few milliseconds after its event. A slow poll (``poll``
seconds) catches anything a lost notification would leave behind.

Sharing: every follower holds a membership lock (class ``0x1ED8``) on its own connection,
so the number of live followers on a database is the number of those locks. Every
``rebalance`` seconds a follower counts them, computes its fair share of the streams
(rounded up) and takes unowned streams with the projector lock (see
:mod:`ledger.storage.locks`; the lock ``ledger project`` takes too) up to that share, or hands back streams beyond it
(after their last writes are committed). A follower that dies loses its connection and
with it its locks, so the others pick up its streams at their next rebalance. No stream
is ever projected by two processes at once.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection, Engine

from ledger._backoff import Backoff
from ledger.errors import ConnectionLost, DatabaseError, LockLost, SchemaMismatch, first_line
from ledger.services.project.run import (
    Committer,
    ProjectOptions,
    ProjectSummary,
    SnapshotTimer,
    StreamRun,
)
from ledger.storage.database import drop_connection
from ledger.storage.locks import MEMBER_LOCK_CLASS, Locks, member_lock, projector_lock
from ledger.storage.log import Streams
from ledger.storage.notify import Listener

__all__ = ["FollowOptions", "follow"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FollowOptions:
    streams: tuple[str, ...] = ()  # empty: every stream, including those created later
    poll: float = 1.0  # seconds between looks at the log when no notification comes
    rebalance: float = 2.0  # seconds between counts of the followers and their shares
    retry_for: float = 300.0  # seconds to keep trying while the database is unreachable or refuses
    skip_gaps_older_than: float = 5.0  # with --skip-gaps: a younger gap may still fill, so wait
    project: ProjectOptions = field(default_factory=ProjectOptions)


def follow(
    engine: Engine,
    options: FollowOptions,
    stop: threading.Event,
    *,
    wakeups: queue.Queue[int] | None = None,
    on_applied: Callable[[str, int], None] | None = None,
) -> list[ProjectSummary]:
    """Follow the log until ``stop`` is set; the summaries of the streams followed.
    ``wakeups`` replaces LISTEN/NOTIFY with stream ids put by an ingest in this process.

    When the database goes away, or refuses what the follower does (the rule below), the
    follower says why, drops its books and locks, waits with exponential backoff and
    starts again (books from their snapshots, streams shared anew), for up to
    ``options.retry_for`` seconds of failed attempts in a row. Errors of the program itself
    (a TypeError, SQL that does not fit the schema) are raised at once."""
    backoff = Backoff(first=0.5, cap=10.0, window=options.retry_for, overrun=True)
    delays: Iterator[float] | None = None  # of the outage under way
    earlier: list[ProjectSummary] = []  # of the followers before a restart
    while True:
        follower = None
        started = time.monotonic()
        try:
            follower = _Follower(engine, options, on_applied)
            follower.run(stop, wakeups)
            return _merged(earlier + follower.close())
        except (DatabaseError, LockLost) as e:
            if follower is not None:
                follower.abandon()
                earlier += follower.partial()
            # The rule: any database error is worth waiting out, as a lost connection is: an
            # administrator may grant a privilege back, free disk space, raise a limit, or
            # promote a standby. Not so SQL that does not fit this database (a bug, or a schema
            # of another version: ledger.storage.database.database_error says which errors
            # those are), which no wait mends, so it is raised at once, as TypeErrors are.
            if isinstance(e, SchemaMismatch):
                raise DatabaseError(f"following the log failed: {_without_credentials(first_line(e))}") from e
            if stop.is_set():  # stopping anyway: what was committed stands
                return _merged(earlier)
            lost = isinstance(e, LockLost | ConnectionLost)
            why = _without_credentials(first_line(e))
            if delays is None or time.monotonic() - started > 60:  # it had been working: a new outage
                delays = backoff.delays()
            if (delay := next(delays, None)) is None or stop.is_set():  # out of its window
                if lost:
                    raise DatabaseError(
                        f"lost the database while following ({why}) and it did not come back within "
                        f"{options.retry_for:.0f}s. Run the same command again: every stream goes on from its "
                        "last committed position"
                    ) from e
                raise DatabaseError(
                    f"the database kept refusing the follower's work for {options.retry_for:.0f}s: {why}. "
                    "Fix that (a privilege, a full disk, a setting) and run the same command again: every "
                    "stream goes on from its last committed position"
                ) from e
            if lost:
                log.warning("lost the database (%s); following again in %.1fs", why, delay)
            else:
                log.warning("the database refused the follower's work (%s); following again in %.1fs", why, delay)
            stop.wait(delay)
        except BaseException:
            if follower is not None:
                follower.abandon()
            raise


# A URL's user info (``scheme://user:secret@``) and a ``password=`` keyword, in an error
# message quoted in a log line.
_URL_SECRET = re.compile(r"(\b[a-z][\w+.-]*://[^\s:/@]*:)[^\s@]*@", re.IGNORECASE)
_KEYWORD_SECRET = re.compile(r"(\bpassword\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def _without_credentials(text: str) -> str:
    """``text`` with any password in it hidden, for logs and messages."""
    return _KEYWORD_SECRET.sub(r"\1***", _URL_SECRET.sub(r"\1***@", text))


def _merged(summaries: list[ProjectSummary]) -> list[ProjectSummary]:
    """One summary per stream, adding up those of successive followers (after restarts)."""
    by_stream: dict[str, ProjectSummary] = {}
    for s in summaries:
        before = by_stream.get(s.stream)
        if before is not None:
            s.events_applied += before.events_applied
            s.l1_rows += before.l1_rows
            s.snapshots += before.snapshots
            s.gaps_skipped = before.gaps_skipped + s.gaps_skipped
            s.seconds += before.seconds
            s.from_snapshot = before.from_snapshot
        by_stream[s.stream] = s
    return sorted(by_stream.values(), key=lambda s: s.stream)


class _Follower:
    def __init__(self, engine: Engine, options: FollowOptions, on_applied: Callable[[str, int], None] | None) -> None:
        self.engine = engine
        self.options = options
        self._on_applied = on_applied
        self._runs: dict[int, StreamRun] = {}
        self._finished: list[ProjectSummary] = []
        self._given_up: set[int] = set()  # streams that cannot go on (they need a rebuild, say)
        # The connection first: if the database is not there, nothing else is started.
        self._lock_conn: Connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._locks = Locks(self._lock_conn)
        try:
            #: This process's backend on the lock connection: its pid keys the membership
            #: lock, and the committer checks before each write that it still holds the stream.
            self.owner = self._locks.backend_pid()
            self._locks.take(member_lock(self.owner))
        except BaseException:
            drop_connection(self._lock_conn)
            raise
        self._timer = SnapshotTimer(options.project.snapshot_interval)
        self._committer = Committer(engine)
        self._committer.start()

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event, wakeups: queue.Queue[int] | None) -> None:
        listener = Listener(self.engine) if wakeups is None else None
        next_balance = 0.0
        pending: set[int] | None = None  # None: look at every stream
        try:
            while not stop.is_set():
                if time.monotonic() >= next_balance:
                    self._balance()
                    next_balance = time.monotonic() + self.options.rebalance
                    pending = None
                for sid, run in list(self._runs.items()):
                    if pending is not None and sid not in pending:
                        continue
                    applied = run.catch_up(stop.is_set)
                    if applied and self._on_applied is not None:
                        self._on_applied(run.name, applied)
                    if run.done:
                        self._given_up.add(sid)
                        self._release(sid, f"stream {run.name!r} cannot go on: {run.summary.message}")
                timeout = min(self.options.poll, max(0.0, next_balance - time.monotonic()))
                pending = _wait(listener, wakeups, timeout, stop) or None
        finally:
            if listener is not None:
                listener.close()

    # -- sharing ---------------------------------------------------------------------------------

    def _balance(self) -> None:
        """Take or hand back streams so that each live follower has its fair share."""
        members = self._locks.holders(lock_class=MEMBER_LOCK_CLASS)
        known = {sid: name for sid, name, _ in Streams(self._lock_conn).all()}
        wanted = {sid: name for sid, name in known.items() if not self.options.streams or name in self.options.streams}
        share = math.ceil(len(wanted) / max(1, members))
        for sid in sorted(self._runs, reverse=True)[: max(0, len(self._runs) - share)]:
            self._release(sid, f"handing stream {self._runs[sid].name!r} to another follower")
        if len(self._runs) >= share:
            return
        # Start at a different stream in each process, so followers do not race for the same ones.
        free = sorted(sid for sid in wanted if sid not in self._runs and sid not in self._given_up)
        offset = self.owner % len(free) if free else 0
        for sid in free[offset:] + free[:offset]:
            if len(self._runs) >= share:
                break
            if self._locks.try_take(projector_lock(sid)):
                log.info("following stream %r", wanted[sid])
                self._runs[sid] = StreamRun(
                    self.engine,
                    sid,
                    wanted[sid],
                    self.options.project,
                    self._committer,
                    self._timer,
                    owner=self.owner,
                    skip_gaps_older_than=self.options.skip_gaps_older_than,
                )

    def _release(self, sid: int, why: str) -> None:
        run = self._runs.pop(sid)
        self._committer.flush()  # its writes are committed before another process may take it
        self._locks.release(projector_lock(sid))
        self._finished.append(run.finish())
        log.info("%s", why)

    # -- ending ----------------------------------------------------------------------------------

    def close(self) -> list[ProjectSummary]:
        self._committer.close()
        summaries = self._finished + [run.finish() for run in self._runs.values()]
        self._runs.clear()
        self._timer.shutdown()
        self._locks.release_all()  # the connection goes back to a pool
        self._lock_conn.close()
        return sorted(summaries, key=lambda s: s.stream)

    def partial(self) -> list[ProjectSummary]:
        """The summaries so far, of a follower that failed."""
        return sorted(self._finished + [run.finish() for run in self._runs.values()], key=lambda s: s.stream)

    def abandon(self) -> None:
        self._committer.abandon()
        self._timer.shutdown()
        drop_connection(self._lock_conn)  # ends the session, and its locks with it


def _wait(
    listener: Listener | None, wakeups: queue.Queue[int] | None, timeout: float, stop: threading.Event
) -> set[int]:
    """Stream ids announced within ``timeout`` (empty after a quiet timeout, or on stop)."""
    if listener is not None:
        deadline = time.monotonic() + timeout
        while not stop.is_set():  # in short slices, so that a stop is seen quickly
            left = deadline - time.monotonic()
            if left <= 0:
                return set()
            woken = listener.wait(min(left, 0.25))
            if woken:
                return woken
        return set()
    assert wakeups is not None
    try:
        woken = {wakeups.get(timeout=timeout)}
    except queue.Empty:
        return set()
    while True:
        try:
            woken.add(wakeups.get_nowait())
        except queue.Empty:
            return woken
