"""The projector: replays each stream's events in seq order into a book and writes every
best bid/offer change as an L1 row, with its position, in one transaction per chunk.

Three threads share the work of one stream: a reader fetches the next chunk of the log
while the book applies the current one, and a committer writes the L1 rows and position
of the previous one (each on its own connection; PostgreSQL works on the other core).
Run again, the projector rebuilds the book up to its position (writing nothing) and goes
on from there, so a crash at any moment neither loses nor repeats an L1 row. At a gap in
the log it first looks for a source snapshot (the venue's own book) that makes up for
it; failing that it stops the stream and names the missing seqs, unless told to skip
gaps, in which case it goes on and marks the gap rows as skipped.

The book itself is applied by :class:`~ledger.services.projector.StreamProjector`; reading
the log back, source snapshots and replays live in :mod:`ledger.services.replay`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ledger.domain.snapshot import FORMAT_VERSION as SNAPSHOT_FORMAT
from ledger.domain.snapshot import encode
from ledger.errors import DatabaseError, StreamError, first_line
from ledger.services.projector import StreamProjector
from ledger.services.replay import SourceBooks, contiguous, read_ahead, replay, restore_latest
from ledger.storage.log import EventLog, GapStore, Streams
from ledger.storage.projection import L1Row, L1Rows, Position, Positions, Snapshots

__all__ = ["ProjectOptions", "ProjectSummary", "project", "rebuild"]

log = logging.getLogger(__name__)
_PROJECT_LOCK_CLASS = 0x1ED7


@dataclass
class ProjectSummary:
    """What one projector run did to one stream."""

    stream: str
    status: str = "ok"  # ok | stopped_at_gap | error_threshold | needs_rebuild | empty | busy
    message: str | None = None
    events_applied: int = 0
    l1_rows: int = 0
    last_seq: int | None = None
    gaps_skipped: list[tuple[int, int]] = field(default_factory=list)
    anomalies: dict[str, int] = field(default_factory=dict)
    from_snapshot: int | None = None  # the seq of the snapshot the run started from
    snapshots: int = 0  # snapshots taken
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        return self.events_applied / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["events_per_second"] = round(self.events_per_second, 1)
        out["seconds"] = round(self.seconds, 3)
        return out


@dataclass(frozen=True)
class ProjectOptions:
    """How the projector runs; the CLI flags of ``ledger project``."""

    skip_gaps: bool = False
    error_threshold: int | None = None
    from_snapshot: bool = True
    snapshot_every: int | None = 250_000  # events between two snapshots (None: never by count)
    snapshot_interval: float | None = None  # seconds between two snapshots (None: never by time)
    chunk: int = 20_000


def project(
    engine: Engine,
    *,
    streams: Sequence[str] | None = None,
    options: ProjectOptions = ProjectOptions(),
    progress: Callable[[str, int], None] | None = None,
) -> list[ProjectSummary]:
    """Bring the projection of each stream (all when None) up to the head of its log."""
    with engine.connect() as conn:
        known = {name: sid for sid, name, _ in Streams(conn).all()}
        for name in streams or ():
            Streams(conn).get(name)  # raises with the list of known streams
    wanted = list(streams) if streams else sorted(known)
    timer = _SnapshotTimer(options.snapshot_interval)
    try:
        return [_project_stream(engine, known[name], name, options, timer, progress) for name in wanted]
    finally:
        timer.shutdown()


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
            lock = {"c": _PROJECT_LOCK_CLASS, "o": known[name]}
            if not conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:c, :o)"), lock).scalar():
                raise StreamError(f"stream {name!r} is being projected by another process; stop it first")
            L1Rows(conn).delete(known[name])
            Snapshots(conn).delete_all(known[name])
            Positions(conn).delete(known[name])
            GapStore(conn).clear_skipped(known[name])
    return names


class _SnapshotTimer:
    """Asks for a snapshot every ``interval`` seconds (APScheduler). It only raises a flag:
    the projector takes the snapshot itself, between two chunks of events, so no thread
    ever reads a book while it changes."""

    def __init__(self, interval: float | None) -> None:
        self.due = threading.Event()
        self._scheduler: Any = None
        if interval is not None:
            from apscheduler.schedulers.background import BackgroundScheduler

            self._scheduler = BackgroundScheduler(daemon=True)
            self._scheduler.add_job(self.due.set, "interval", seconds=interval, id="snapshot")
            self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None


def _project_stream(
    engine: Engine,
    stream_id: int,
    name: str,
    options: ProjectOptions,
    timer: _SnapshotTimer,
    progress: Callable[[str, int], None] | None,
) -> ProjectSummary:
    started = time.perf_counter()
    summary = ProjectSummary(stream=name)
    lock = {"c": _PROJECT_LOCK_CLASS, "o": stream_id}
    with engine.connect() as conn:  # holds the stream's projector lock for the whole run
        if not conn.execute(sa.text("SELECT pg_try_advisory_lock(:c, :o)"), lock).scalar():
            summary.status = "busy"
            summary.message = f"stream {name!r} is being projected by another process"
            return summary
        conn.commit()
        try:
            _run(engine, stream_id, name, summary, options, timer, progress)
        except (sa.exc.DBAPIError, psycopg.Error) as e:
            raise DatabaseError(
                f"lost the database while projecting stream {name!r} after seq {summary.last_seq}: "
                f"{first_line(e)}. Run the same command again: it goes on from the last committed position"
            ) from e
        finally:
            try:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:c, :o)"), lock)
                conn.commit()
            except (sa.exc.DBAPIError, psycopg.Error):
                conn.invalidate()  # the server is gone, and the lock with it
    summary.seconds = time.perf_counter() - started
    return summary


def _run(
    engine: Engine,
    stream_id: int,
    name: str,
    summary: ProjectSummary,
    options: ProjectOptions,
    timer: _SnapshotTimer,
    progress: Callable[[str, int], None] | None,
) -> None:
    proj = StreamProjector(options.error_threshold)
    sources = SourceBooks(engine, stream_id, name)
    chunk = min(options.chunk, options.snapshot_every or options.chunk)
    with engine.connect() as conn:
        pos = Positions(conn).get(stream_id)
        low, head = EventLog(conn).seq_range(stream_id)
    if pos is not None and low is not None and low < pos.first_seq:
        # Events older than the projection's start arrived later: its book never saw them.
        pos.status = "needs_rebuild"
        pos.message = (
            f"stream {name!r}: events from seq {low} arrived after the projection began at seq "
            f"{pos.first_seq}, so its book and L1 rows lack them; run `ledger project --rebuild --stream {name}`"
        )
        with engine.begin() as conn:
            Positions(conn).put(stream_id, pos)
        summary.last_seq = pos.last_seq
        summary.status, summary.message, summary.anomalies = pos.status, pos.message, dict(pos.anomalies)
        return
    if pos is not None and pos.status == "error_threshold" and not proj.over_threshold_with(pos.anomalies):
        pos.status, pos.message = "ok", None  # run again with a higher (or no) threshold
    if pos is not None and (head is None or head <= pos.last_seq):
        # Nothing new: no need to rebuild the book at all.
        if head is None or head < pos.last_seq:
            log.warning(
                "stream %r: the projector position %s is beyond the end of the log (%s): events were "
                "removed from the log; run `ledger project --rebuild --stream %s`",
                name, pos.last_seq, head, name,
            )  # fmt: skip
        summary.last_seq = pos.last_seq
        summary.status, summary.message, summary.anomalies = pos.status, pos.message, dict(pos.anomalies)
        return
    if pos is not None:
        # Rebuild the book up to the position, from the newest good snapshot when allowed;
        # gaps before the position were dealt with by earlier runs.
        replay_after = pos.first_seq - 1
        restored = restore_latest(engine, stream_id, name, at_or_before=pos.last_seq) if options.from_snapshot else None
        if restored is not None:
            state, replay_after = restored
            proj.restore(state)
            summary.from_snapshot = replay_after
        else:
            sources.start(proj, pos.first_seq)
        replay(proj, engine, stream_id, sources, after=replay_after, upto=pos.last_seq, l1=True)
        summary.last_seq = pos.last_seq
    since_snapshot = 0
    committer = _Committer(engine, stream_id)
    committer.start()
    try:
        skip_until = None
        for rows in read_ahead(engine, stream_id, after=None if pos is None else pos.last_seq, chunk=chunk):
            out: list[L1Row] = []
            if pos is None:
                pos = Position(first_seq=rows[0][0], last_seq=rows[0][0] - 1)
                if sources.start(proj, pos.first_seq):
                    proj.emit_l1(pos.last_seq, None, out)
            if skip_until is not None and rows[-1][0] <= skip_until:
                continue
            if skip_until is not None:
                rows = [r for r in rows if r[0] > skip_until]
            skipped: list[tuple[int, int]] = []
            applied_in_chunk = 0
            status, message = "ok", None
            rest = rows
            while rest:
                segment, gap = contiguous(rest, pos.last_seq + 1)
                applied = proj.apply(segment, out)
                applied_in_chunk += applied
                if applied:
                    pos.last_seq = segment[applied - 1][0]
                    pos.events_applied += applied
                if proj.over_threshold():
                    status = "error_threshold"
                    message = (
                        f"stream {name!r} stopped after seq {pos.last_seq}: {proj.book.anomalies.total()} book "
                        f"anomalies exceed --error-threshold {options.error_threshold} "
                        f"({_describe(proj.book.anomalies)})"
                    )
                    break
                if gap is None:
                    break
                covered = sources.reset_at_gap(proj, gap)
                if covered is not None:  # the venue's own book at `covered` makes up for the gap
                    proj.emit_l1(covered, None, out)
                    pos.last_seq = skip_until = covered
                    rest = [r for r in rest[len(segment) :] if r[0] > covered]
                    continue
                if not options.skip_gaps:
                    status = "stopped_at_gap"
                    message = (
                        f"stream {name!r} stopped after seq {pos.last_seq}: seqs {gap[0]}..{gap[1]} "
                        f"({gap[1] - gap[0] + 1}) are missing from the log; ingest them, or run with --skip-gaps"
                    )
                    break
                skipped.append(gap)
                pos.gaps_skipped += 1
                pos.last_seq = gap[1]
                rest = rest[len(segment) :]
            pos.status, pos.message = status, message
            pos.l1_rows += len(out)
            pos.anomalies = dict(proj.book.anomalies)
            since_snapshot += applied_in_chunk
            snapshot = None
            every = options.snapshot_every
            if applied_in_chunk and ((every is not None and since_snapshot >= every) or timer.due.is_set()):
                timer.due.clear()
                since_snapshot = 0
                snapshot = (pos.last_seq, encode(proj.state()), len(proj.book))
                summary.snapshots += 1
            committer.submit(_Job(out, replace(pos, anomalies=dict(pos.anomalies)), skipped, snapshot))
            summary.events_applied += applied_in_chunk
            summary.l1_rows += len(out)
            summary.gaps_skipped += skipped
            summary.last_seq = pos.last_seq
            if progress is not None:
                progress(name, applied_in_chunk)
            if status != "ok":
                break
    except BaseException:
        committer.abandon()
        raise
    committer.close()
    if pos is None:
        summary.status = "empty"
        return
    summary.status, summary.message = pos.status, pos.message
    summary.anomalies = dict(pos.anomalies)


@dataclass
class _Job:
    """One chunk's writes: its L1 rows, the gaps it skipped, its position, maybe a snapshot."""

    out: list[L1Row]
    pos: Position
    skipped: list[tuple[int, int]]
    snapshot: tuple[int, bytes, int] | None  # seq, payload, order count


class _Committer(threading.Thread):
    """Writes each chunk's job in one transaction, in order, on its own connection, while
    the next chunk is applied."""

    def __init__(self, engine: Engine, stream_id: int) -> None:
        super().__init__(name=f"ledger-commit-{stream_id}", daemon=True)
        self._engine = engine
        self._stream_id = stream_id
        self._jobs: queue.Queue[_Job | None] = queue.Queue(2)
        self._error: BaseException | None = None

    def run(self) -> None:
        sid = self._stream_id
        try:
            with self._engine.connect() as conn:
                while (job := self._jobs.get()) is not None:
                    if self._error is not None:
                        continue
                    try:
                        with conn.begin():
                            L1Rows(conn).copy(sid, job.out)
                            for first, last in job.skipped:
                                GapStore(conn).mark_skipped(sid, first, last)
                            if job.snapshot is not None:
                                seq, payload, count = job.snapshot
                                Snapshots(conn).save(
                                    sid, seq, payload, format_version=SNAPSHOT_FORMAT, order_count=count
                                )
                            Positions(conn).put(sid, job.pos)
                    except BaseException as e:  # handed to the applying thread, which raises it
                        self._error = e
        except BaseException as e:
            self._error = e
            while self._jobs.get() is not None:
                pass

    def submit(self, job: _Job) -> None:
        if self._error is not None:
            self.close()
        self._jobs.put(job)

    def close(self) -> None:
        if self.is_alive():
            self._jobs.put(None)
            self.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def abandon(self) -> None:
        """Finish the jobs in hand and stop, keeping quiet: the caller is failing already."""
        if self.is_alive():
            self._jobs.put(None)
            self.join()
        self._error = None


def _describe(anomalies: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(anomalies.items()) if v) or "none"
