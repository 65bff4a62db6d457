"""The projector: replays each stream's events in seq order into a book and writes every
best bid/offer change as an L1 row, with its position, in one transaction per chunk.

:func:`project` takes each stream in turn (holding its projector lock, so two processes
never project one stream) and brings it to the head of its log with a
:class:`~ledger.services.project.run.StreamRun`: a reader thread fetches the next chunk of
the log while the book applies the current one, and a committer writes the L1 rows and
position of the previous one (each on its own connection; PostgreSQL works on the other
core). Run again, the projector rebuilds the book up to its position (writing nothing)
and goes on from there, so a crash at any moment neither loses nor repeats an L1 row.
:func:`rebuild` drops a projection. Following the log as it grows, and sharing the
streams between processes, is :mod:`ledger.services.project.follow`.

The book itself is applied by :class:`~ledger.services.project.rows.StreamProjector`; reading
the log back, source snapshots and replays live in :mod:`ledger.services.project.replay`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from sqlalchemy.engine import Engine

from ledger.errors import DatabaseError, StreamError, first_line
from ledger.services.project.run import (
    PROJECT_LOCK_CLASS,
    Committer,
    ProjectOptions,
    ProjectSummary,
    SnapshotTimer,
    StreamRun,
)
from ledger.storage.locks import Locks, projector_lock
from ledger.storage.log import GapStore, Streams
from ledger.storage.projection import L1Rows, Positions, Snapshots

__all__ = ["PROJECT_LOCK_CLASS", "ProjectOptions", "ProjectSummary", "project", "rebuild"]

log = logging.getLogger(__name__)


def project(
    engine: Engine,
    *,
    streams: Sequence[str] | None = None,
    options: ProjectOptions | None = None,
    progress: Callable[[str, int], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> list[ProjectSummary]:
    """Bring the projection of each stream (all when None) up to the head of its log.

    Rule: once ``stop()`` says so (a signal asked the command to stop), the stream in hand
    stops after the chunk it is applying, whose L1 rows and position are committed as
    usual, and no further stream is started; the summaries of the streams begun are
    returned, so a later run goes on from the committed positions."""
    options = options or ProjectOptions()
    with engine.connect() as conn:
        known = {name: sid for sid, name, _ in Streams(conn).all()}
        for name in streams or ():
            Streams(conn).get(name)  # raises with the list of known streams
    wanted = list(streams) if streams else sorted(known)
    timer = SnapshotTimer(options.snapshot_interval)
    committer = Committer(engine)
    committer.start()
    stop = stop or _never
    summaries = []
    try:
        for name in wanted:
            if stop():
                break
            summaries.append(_project_stream(engine, known[name], name, options, committer, timer, progress, stop))
    except BaseException:
        committer.abandon()
        raise
    finally:
        timer.shutdown()
    committer.close()
    return summaries


def _never() -> bool:
    return False


def rebuild(engine: Engine, streams: Sequence[str] | None = None) -> list[str]:
    """Drop the projection of each stream (all when None): its L1 rows, snapshots and
    position, in one transaction per stream, so the next run replays from the first event."""
    with engine.connect() as conn:
        known = {name: sid for sid, name, _ in Streams(conn).all()}
        for name in streams or ():
            Streams(conn).get(name)
    names = list(streams) if streams else sorted(known)
    for name in names:
        with engine.begin() as conn:
            if not Locks(conn).try_take_for_transaction(projector_lock(known[name])):
                raise StreamError(f"stream {name!r} is being projected by another process; stop it first")
            L1Rows(conn).delete(known[name])
            Snapshots(conn).delete_all(known[name])
            Positions(conn).delete(known[name])
            GapStore(conn).clear_skipped(known[name])
    return names


def _project_stream(
    engine: Engine,
    stream_id: int,
    name: str,
    options: ProjectOptions,
    committer: Committer,
    timer: SnapshotTimer,
    progress: Callable[[str, int], None] | None,
    stop: Callable[[], bool],
) -> ProjectSummary:
    lock = projector_lock(stream_id)
    with engine.connect() as conn:  # holds the stream's projector lock for the whole run
        locks = Locks(conn)
        if not locks.try_take(lock):
            return ProjectSummary(
                stream=name, status="busy", message=f"stream {name!r} is being projected by another process"
            )
        owner = locks.backend_pid()
        conn.commit()
        run = None
        try:
            run = StreamRun(engine, stream_id, name, options, committer, timer, progress, owner=owner)
            run.catch_up(stop)
            committer.flush()  # written before the lock goes
        except DatabaseError as e:
            after = None if run is None else run.summary.last_seq
            raise DatabaseError(
                f"lost the database while projecting stream {name!r} after seq {after}: "
                f"{first_line(e)}. Run the same command again: it goes on from the last committed position"
            ) from e
        finally:
            locks.give_back(lock)  # on a lost connection, the server let go of it already
    return run.finish()
