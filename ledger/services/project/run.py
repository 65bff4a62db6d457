"""One stream's projection inside a projector process, and the committer all streams share.

A :class:`StreamRun` holds a stream's book in memory and its position. :meth:`StreamRun.catch_up`
applies whatever the log holds after the position: a reader thread fetches the next chunk
while the book applies the current one, and the :class:`Committer` (one thread and one
connection for all the streams of a process) writes each chunk's L1 rows, skipped gaps,
snapshot and position in one transaction while the next chunk is applied. A batch run calls
it once per stream; a following run (:mod:`ledger.services.project.follow`) calls it again each time
the stream grows, with the book still in memory.

At a gap the run first looks for a source snapshot (the venue's own book) that makes up
for it; failing that it stops there and names the missing seqs, unless told to skip gaps.

Events stored behind the projection (a venue whose seqs skip numbers, such as Databento's
time keys, shows no gap for them) stop the stream with status ``needs_rebuild``: an ingest
marks the position when it stores events at or below the seq the projection has applied
(:meth:`~ledger.storage.projection.Positions.outrun`); and, for such venues, the committer
counts the stored events of each chunk's seq range before it writes the chunk's position:
more than the chunk applied means an ingest landed behind the reader, and the position is
marked instead of written. Both run under the position's lock, so one always sees the
other. A marked position stops a run at its start and the committer at its next write
(:class:`~ledger.errors.StaleProjection`), until ``ledger project --rebuild STREAM``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sqlalchemy.engine import Connection, Engine

from ledger._threads import Worker
from ledger.domain.snapshot import FORMAT_VERSION as SNAPSHOT_FORMAT
from ledger.domain.snapshot import encode
from ledger.errors import LockLost, StaleProjection
from ledger.services.project.replay import (
    PROJECTOR_UNREAD,
    contiguous,
    read_ahead,
    replay,
    restore_latest,
    stream_projector,
)
from ledger.storage.locks import PROJECT_LOCK_CLASS, fence_projector
from ledger.storage.log import EventLog, GapStore, SourceSnapshots
from ledger.storage.projection import L1Row, L1Rows, Position, Positions, Snapshots

__all__ = [
    "PROJECT_LOCK_CLASS",
    "Committer",
    "LockLost",
    "ProjectOptions",
    "ProjectSummary",
    "SnapshotTimer",
    "StreamRun",
]

log = logging.getLogger(__name__)


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


class SnapshotTimer:
    """Asks for snapshots every ``interval`` seconds (APScheduler). It only counts ticks:
    each stream takes its snapshot itself, between two chunks of events, when the count
    moved since its last one, so no thread ever reads a book while it changes."""

    def __init__(self, interval: float | None) -> None:
        self.ticks = 0
        self._scheduler: Any = None
        if interval is not None:
            from apscheduler.schedulers.background import BackgroundScheduler

            self._scheduler = BackgroundScheduler(daemon=True)
            self._scheduler.add_job(self._tick, "interval", seconds=interval, id="snapshot")
            self._scheduler.start()

    def _tick(self) -> None:
        self.ticks += 1

    def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None


def _never() -> bool:
    return False


#: The most chunks one committer job holds (see StreamRun._submit): their L1 rows wait in memory.
_HOLD_CHUNKS = 8


class StreamRun:
    """A stream's book and position in this process (see the module's text)."""

    def __init__(
        self,
        engine: Engine,
        stream_id: int,
        name: str,
        options: ProjectOptions,
        committer: Committer,
        timer: SnapshotTimer,
        progress: Callable[[str, int], None] | None = None,
        *,
        owner: int | None = None,
        skip_gaps_older_than: float = 0.0,
    ) -> None:
        self.engine = engine
        self._owner = owner  # the backend pid holding the stream's projector lock: writes check it
        # Following a live log, a gap may fill a moment later (a late event, a resync book):
        # --skip-gaps then skips only gaps detected at least this many seconds ago.
        self._skip_age = skip_gaps_older_than
        self.stream_id = stream_id
        self.name = name
        self.options = options
        self.summary = ProjectSummary(stream=name)
        self.done = False  # it cannot go on (needs a rebuild, or past its error threshold)
        self._committer = committer
        self._timer = timer
        self._snapshot_tick = timer.ticks
        self._progress = progress
        self._proj, self._sources = stream_projector(engine, stream_id, name, options.error_threshold)
        self._pos: Position | None = None
        self._written: int | None = None  # the position last committed (None: no row yet)
        self._written_applied = 0  # the events_applied of that position
        # Sparse seqs hide events stored behind the reader: the committer counts each chunk's range.
        self._count_chunks = not self._sources.venue.dense_seqs
        self._ready = False  # the book in memory stands at the position
        self._since_snapshot = 0
        self._skip_until: int | None = None
        # A chunk's job kept back while the committer is behind (see _submit).
        self._held: _Job | None = None
        self._held_chunks = 0
        self._started = time.perf_counter()
        self._prepare()

    def _prepare(self) -> None:
        """Read the position; a projection that events older than its start have reached is
        marked as needing a rebuild."""
        engine, name, summary = self.engine, self.name, self.summary
        with engine.connect() as conn:
            pos = Positions(conn).get(self.stream_id)
            low, _ = EventLog(conn).seq_range(self.stream_id)
        self._pos = pos
        if pos is None:
            return
        self._written = pos.last_seq
        self._written_applied = pos.events_applied
        summary.last_seq = pos.last_seq
        summary.status, summary.message, summary.anomalies = pos.status, pos.message, dict(pos.anomalies)
        if pos.status == "needs_rebuild":  # marked by an ingest, the committer or an earlier run
            self.done = True
            return
        if low is not None and low < pos.first_seq:
            # Events older than the projection's start arrived later: its book never saw them.
            pos.status = "needs_rebuild"
            pos.message = (
                f"stream {name!r}: events from seq {low} arrived after the projection began at seq "
                f"{pos.first_seq}, so its book and L1 rows lack them; run `ledger project --rebuild {name}`"
            )
            with engine.begin() as conn:
                Positions(conn).put(self.stream_id, pos)
            summary.status, summary.message = pos.status, pos.message
            self.done = True
            return
        if pos.status == "error_threshold" and not self._proj.over_threshold_with(pos.anomalies):
            pos.status, pos.message = "ok", None  # run again with a higher (or no) threshold
        elif pos.status == "error_threshold":
            self.done = True

    def _restore(self) -> None:
        """Rebuild the book up to the position (from the newest good snapshot when allowed),
        writing nothing; gaps before the position were dealt with by earlier runs."""
        pos = self._pos
        if pos is not None:
            replay_after = pos.first_seq - 1
            restored = None
            if self.options.from_snapshot:
                restored = restore_latest(self.engine, self.stream_id, self.name, at_or_before=pos.last_seq)
            if restored is not None:
                state, replay_after = restored
                self._proj.restore(state)
                self.summary.from_snapshot = replay_after
            else:
                self._sources.start(self._proj, pos.first_seq)
            proj, sources = self._proj, self._sources
            replay(proj, self.engine, self.stream_id, sources, after=replay_after, upto=pos.last_seq, l1=True)
        self._ready = True

    def catch_up(self, stop: Callable[[], bool] = _never) -> int:
        """Apply what the log holds after the position (until ``stop`` says so, checked
        between chunks); the number of events applied."""
        if self.done or self._stale():
            return 0
        with self.engine.connect() as conn:
            _, head = EventLog(conn).seq_range(self.stream_id)
            pos = self._pos
            # A position past the log is normal at a venue book (a resync) ahead of the events.
            beyond = pos is not None and head is not None and head < pos.last_seq and not self._ready
            if beyond and pos is not None:
                beyond = SourceSnapshots(conn).first_from(self.stream_id, pos.last_seq, upto=pos.last_seq) is None
        if pos is not None and not beyond and (head is None or head <= pos.last_seq) and self._tail():
            return 0
        if head is None or (pos is not None and head <= pos.last_seq):
            if beyond and pos is not None:
                log.warning(
                    "stream %r: the projector position %s is beyond the end of the log (%s): events were "
                    "removed from the log; run `ledger project --rebuild %s`",
                    self.name, pos.last_seq, head, self.name,
                )  # fmt: skip
            return 0
        if not self._ready:
            self._restore()
        applied = 0
        chunk = min(self.options.chunk, self.options.snapshot_every or self.options.chunk)
        status = "ok"
        after = None if pos is None else pos.last_seq
        extra = self._sources.venue.fields
        for rows in read_ahead(
            self.engine, self.stream_id, after=after, chunk=chunk, extra=extra, unread=PROJECTOR_UNREAD
        ):
            n, status = self._chunk(rows)
            applied += n
            if status != "ok" or stop() or self._stale():
                break
        else:
            if status == "ok" and self._pos is not None:
                self._tail()  # the log may end in a gap that a venue book resolved
        self._release()
        return applied

    def _tail(self) -> bool:
        """At the end of the log: reset to the venue book that ingest recorded as resolving a
        gap right after the position (a loss only a heartbeat showed: no event follows it
        yet), and commit the position there with its L1 row. True when it did."""
        pos = self._pos
        assert pos is not None
        at = self._sources.tail(pos.last_seq + 1)
        if at is None:
            return False
        if not self._ready:
            self._restore()
        out: list[L1Row] = []
        book = self._sources.reset_to(self._proj, at)
        if book is None:
            return False
        self._proj.emit_l1(book.seq, book.received_at, out)
        pos.last_seq = self._skip_until = book.seq
        pos.l1_rows += len(out)
        pos.anomalies = dict(self._proj.book.anomalies)
        pos.maybe_bad = self._proj.maybe_bad
        self._submit(out, [], None)
        self.summary.l1_rows += len(out)
        self.summary.last_seq = pos.last_seq
        return True

    def _chunk(self, rows: list[Any]) -> tuple[int, str]:
        """Apply one chunk of rows and hand its writes to the committer."""
        proj, name, summary, options = self._proj, self.name, self.summary, self.options
        out: list[L1Row] = []
        pos = self._pos
        if pos is None:
            pos = self._pos = Position(first_seq=rows[0][0], last_seq=rows[0][0] - 1)
            if (start := self._sources.start(proj, pos.first_seq)) is not None:
                proj.emit_l1(pos.last_seq, start.received_at, out)
        skip_until = self._skip_until
        if skip_until is not None:
            if rows[-1][0] <= skip_until:
                return 0, "ok"
            rows = [r for r in rows if r[0] > skip_until]
        skipped: list[tuple[int, int]] = []
        applied_in_chunk = 0
        status, message = "ok", None
        rest = rows
        while rest:
            segment, gap = contiguous(rest, pos.last_seq + 1, dense=self._sources.venue.dense_seqs)
            applied = proj.apply_rows(segment, out)
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
                self.done = True
                break
            if gap is None:
                break
            covered = self._sources.reset_at_gap(proj, gap)
            if covered is not None:  # the venue's own book at `covered` makes up for the gap
                proj.emit_l1(covered.seq, covered.received_at, out)
                pos.last_seq = self._skip_until = covered.seq
                rest = [r for r in rest[len(segment) :] if r[0] > covered.seq]
                continue
            young = options.skip_gaps and self._skip_age > 0 and self._gap_age(gap) < self._skip_age
            if young:
                status = "stopped_at_gap"
                message = (
                    f"stream {name!r} waits after seq {pos.last_seq}: seqs {gap[0]}..{gap[1]} are missing; "
                    f"they are skipped if still missing {self._skip_age:g}s after they were detected"
                )
                break
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
        unchanged = not (applied_in_chunk or out or skipped) and (pos.status, pos.message) == (status, message)
        pos.status, pos.message = status, message
        pos.l1_rows += len(out)
        pos.anomalies = dict(proj.book.anomalies)
        pos.maybe_bad = proj.maybe_bad
        self._since_snapshot += applied_in_chunk
        snapshot = None
        every = options.snapshot_every
        timed = self._timer.ticks != self._snapshot_tick
        if applied_in_chunk and ((every is not None and self._since_snapshot >= every) or timed):
            self._snapshot_tick = self._timer.ticks
            self._since_snapshot = 0
            snapshot = (pos.last_seq, encode(proj.state()), len(proj.book))
            summary.snapshots += 1
        if not unchanged:  # a stream waiting at the same gap writes nothing more
            self._submit(out, skipped, snapshot, hold=status == "ok")
        summary.events_applied += applied_in_chunk
        summary.l1_rows += len(out)
        summary.gaps_skipped += skipped
        summary.last_seq = pos.last_seq
        summary.status, summary.message, summary.anomalies = status, message, dict(pos.anomalies)
        if self._progress is not None:
            self._progress(name, applied_in_chunk)
        return applied_in_chunk, status

    def _submit(
        self,
        out: list[L1Row],
        skipped: list[tuple[int, int]],
        snapshot: tuple[int, bytes, int] | None,
        *,
        hold: bool = False,
    ) -> None:
        """Hand the committer the writes that bring the stored position to the one in hand.

        With ``hold``, while the committer is behind (its queue full: it waits on the
        database, and on the GIL after each round trip), the job is kept back and the next
        chunk's writes join it: one transaction for both, the same rows, gaps, snapshot and
        final position, and the applying thread goes on rather than waiting for room in the
        committer's queue. At most :data:`_HOLD_CHUNKS` chunks are held, one snapshot each
        job; :meth:`_release` hands over what is held (the end of :meth:`catch_up`)."""
        assert self._pos is not None
        written = replace(self._pos, anomalies=dict(self._pos.anomalies))
        applied = written.events_applied - self._written_applied if self._count_chunks else None
        held = self._held
        if held is not None and (snapshot is None or held.snapshot is None):
            held.out.extend(out)
            held.skipped.extend(skipped)
            held.pos = written
            if held.applied is not None and applied is not None:
                held.applied += applied
            if snapshot is not None:
                held.snapshot = snapshot
            self._held_chunks += 1
        else:
            self._release()
            held = _Job(self.stream_id, out, written, skipped, snapshot, self._owner, self._written, applied, self.name)
            self._held_chunks = 1
        self._written, self._written_applied = written.last_seq, written.events_applied
        self._held = held
        if not (hold and self._held_chunks < _HOLD_CHUNKS and self._committer.busy()):
            self._release()

    def _release(self) -> None:
        """Hand the committer the job held back, if any (see :meth:`_submit`)."""
        held, self._held = self._held, None
        if held is not None:
            self._committer.submit(held)

    def _stale(self) -> bool:
        """Whether the committer found the stream's projection stale (events stored behind
        it); the run is then done, with status ``needs_rebuild`` and the reason."""
        reason = self._committer.stale(self.stream_id)
        if reason is None:
            return False
        self.done = True
        self.summary.status, self.summary.message = "needs_rebuild", reason
        return True

    def _gap_age(self, gap: tuple[int, int]) -> float:
        """Seconds since ingest recorded the open gap rows that ``gap`` overlaps (inf: none)."""
        with self.engine.connect() as conn:
            return GapStore(conn).age(self.stream_id, first=gap[0], last=gap[1])

    def finish(self) -> ProjectSummary:
        """The run's summary (after the committer has written its jobs)."""
        if self._pos is None and not self.done:
            self.summary.status = "empty"
        self._stale()  # the committer may have found it stale after the last chunk
        self.summary.seconds = time.perf_counter() - self._started
        return self.summary


@dataclass
class _Job:
    """One chunk's writes: its L1 rows, the gaps it skipped, its position, maybe a snapshot."""

    stream_id: int
    out: list[L1Row]
    pos: Position
    skipped: list[tuple[int, int]]
    snapshot: tuple[int, bytes, int] | None  # seq, payload, order count
    owner: int | None = None  # the backend that must hold the stream's projector lock
    expected: int | None = None  # the position this job follows on from (None: the stream's first)
    #: Events applied in (expected, pos.last_seq], checked against the log's count (None: not checked).
    applied: int | None = None
    stream: str = ""  # the stream's name, for messages


class Committer(Worker[_Job]):
    """Writes each chunk's job in one transaction, in order, on its own connection, while
    the next chunk is applied: a :class:`~ledger._threads.Worker` (at most two jobs wait;
    ``flush`` waits until every job submitted is written; a failed write is raised in the
    applying thread, and ``abandon`` drops the jobs still queued).

    A stream found stale (its position marked ``needs_rebuild``, by an ingest or by
    :func:`_write`'s count) is not an error of the committer, which serves other streams
    too: the reason is kept (:meth:`stale`), the stream's later jobs are dropped, and its
    :class:`StreamRun` stops."""

    def __init__(self, engine: Engine) -> None:
        self._maxsize = 2
        super().__init__(self._write_all, name="ledger-commit", maxsize=self._maxsize)
        self._engine = engine
        self._stale: dict[int, str] = {}
        self._stale_lock = threading.Lock()
        self._submitted = 0  # jobs handed over (the applying thread counts them)
        self._done = 0  # jobs written or dropped (the committer's thread counts them)

    def submit(self, item: _Job) -> None:
        self._submitted += 1
        super().submit(item)

    def busy(self) -> bool:
        """Whether a job handed over now would wait: its queue is full, one in hand."""
        return self._submitted - self._done > self._maxsize

    def stale(self, stream_id: int) -> str | None:
        """Why the stream's projection was found stale, or None."""
        with self._stale_lock:
            return self._stale.get(stream_id)

    def _write_all(self, jobs: Iterator[_Job]) -> None:
        with self._engine.connect() as conn:
            for job in jobs:
                try:
                    self._write_one(conn, job)
                finally:
                    self._done += 1

    def _write_one(self, conn: Connection, job: _Job) -> None:
        if self.stale(job.stream_id) is not None:
            return  # its run is stopping: nothing more is written for it
        reason = None
        try:
            with conn.begin():
                reason = _write(conn, job)
        except StaleProjection as e:  # marked before this job: nothing of it is written
            reason = str(e)
        if reason is not None:
            with self._stale_lock:
                self._stale[job.stream_id] = reason


def _write(conn: Connection, job: _Job) -> str | None:
    """Write one job in the current transaction; or, when the log holds more events in the
    job's seq range than the job applied (events stored behind the reader), mark the
    position ``needs_rebuild`` instead and return the reason."""
    sid = job.stream_id
    # Only while this process holds the stream, on from the position it wrote last, and
    # the position not marked stale (StaleProjection). The position stays locked till commit.
    fence_projector(conn, sid, owner=job.owner, expected=job.expected)
    if job.applied is not None:
        positions = Positions(conn)
        stored = positions.stored_events(sid, after=job.expected, upto=job.pos.last_seq)
        if stored > job.applied:
            since = "the stream's start" if job.expected is None else f"seq {job.expected}"
            reason = (
                f"stream {job.stream!r}: {stored - job.applied} events after {since} through seq "
                f"{job.pos.last_seq} were stored behind the projector while it ran, so its book and L1 rows "
                f"lack them; run `ledger project --rebuild {job.stream}`"
            )
            positions.mark_needs_rebuild(sid, reason, first_seq=job.pos.first_seq)
            return reason
    L1Rows(conn).copy(sid, job.out)
    for first, last in job.skipped:
        GapStore(conn).mark_skipped(sid, first, last)
    if job.snapshot is not None:
        seq, payload, count = job.snapshot
        Snapshots(conn).save(sid, seq, payload, format_version=SNAPSHOT_FORMAT, order_count=count)
    Positions(conn).put(sid, job.pos)
    return None


def _describe(anomalies: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(anomalies.items()) if v) or "none"
