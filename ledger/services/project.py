"""The projector: replays each stream's events in seq order into a book and writes every
best bid/offer change as an L1 row, with its position, in one transaction per chunk.

Three threads share the work of one stream: a reader fetches the next chunk of the log
while the book applies the current one, and a committer writes the L1 rows and position
of the previous one (each on its own connection; PostgreSQL works on the other core).
Run again, the projector rebuilds the book up to its position (writing nothing) and goes
on from there, so a crash at any moment neither loses nor repeats an L1 row. At a gap in
the log it stops that stream and names the missing seqs, unless told to skip gaps, in
which case it goes on and marks the gap rows as skipped.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from decimal import localcontext
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ledger.domain.book import Book
from ledger.domain.events import EXACT, Add, Delete, Event, Number, Side, Trade, Update
from ledger.domain.l1 import L1Tracker
from ledger.domain.snapshot import FORMAT_VERSION as SNAPSHOT_FORMAT
from ledger.domain.snapshot import ProjectorState, decode, encode
from ledger.errors import DatabaseError, SnapshotError, StreamError, first_line
from ledger.sources.csv_l3 import to_number
from ledger.storage.log import EventLog, GapStore, SourceSnapshots, Streams
from ledger.storage.projection import L1Row, L1Rows, Position, Positions, Snapshots

__all__ = [
    "ProjectOptions",
    "ProjectSummary",
    "SourceBooks",
    "StreamProjector",
    "event_from_row",
    "project",
    "read_ahead",
    "rebuild",
    "replay",
    "restore_latest",
    "source_book",
]

log = logging.getLogger(__name__)
_PROJECT_LOCK_CLASS = 0x1ED7
# Event kinds of venue feeds (Coinbase), applied by StreamProjector._venue_event.
_VENUE_KINDS = frozenset({"open", "done", "match", "change", "received", "activate", "noop"})


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


def event_from_row(row: Sequence[Any]) -> Event:
    """A book event from an event-log row (seq, kind, order_id, side, price, size, ...)."""
    seq, kind, order_id, side, price, size = row[:6]
    if kind == "delete":
        return Delete(seq, order_id, side)
    if price is None or size is None:
        raise StreamError(f"seq {seq}: a {kind} event without price or size")
    if kind == "add":
        return Add(seq, order_id, side, price, size)
    if kind == "trade":
        return Trade(seq, order_id, side, price, size)
    if kind == "update":
        return Update(seq, order_id, side, price, size)
    raise StreamError(f"seq {seq}: the projector does not know the event kind {kind!r}")


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


class StreamProjector:
    """The book of one stream and the L1 bookkeeping around it."""

    def __init__(self, error_threshold: int | None) -> None:
        self.book = Book()
        self.tracker = L1Tracker()
        self.error_threshold = error_threshold
        self.crossed = False
        self.numbers: dict[str | None, Number] = {}  # price/size text -> exact number

    def apply(self, rows: Sequence[Sequence[Any]], out: list[L1Row] | None, *, l1: bool = True) -> int:
        """Apply rows in order; append L1 changes to ``out`` (None: replay, write nothing).
        Return how many rows were applied (fewer when the error threshold stops it).
        Without ``l1`` only the book changes: for a book wanted at one point, not a
        projection that goes on.

        The hot loop of the projector: it calls the book's operations directly rather
        than building an :data:`Event` per row (:func:`event_from_row` is the same mapping
        as events), and turns price and size text into exact numbers through a cache,
        since a book sees the same few hundred prices and sizes over and over."""
        threshold = self.error_threshold if out is not None else None
        with localcontext(EXACT):
            return self._apply(rows, out, l1, threshold)

    def _apply(self, rows: Sequence[Sequence[Any]], out: list[L1Row] | None, l1: bool, threshold: int | None) -> int:
        book = self.book
        observe = self.tracker.observe_book
        add, update, delete, trade = book.add, book.update, book.delete, book.trade
        numbers = self.numbers
        applied = 0
        for seq, kind, order_id, side, price_text, size_text, ts in rows:
            if threshold is not None and book.anomalies.total() > threshold:
                return applied
            if kind == "delete":
                delete(side, order_id)
            elif kind in _VENUE_KINDS:
                self._venue_event(seq, kind, order_id, side, price_text, size_text)
            else:
                price = numbers.get(price_text)
                if price is None:
                    price = self._number(seq, kind, price_text)
                size = numbers.get(size_text)
                if size is None:
                    size = self._number(seq, kind, size_text)
                if kind == "add":
                    add(side, order_id, price, size)
                elif kind == "update":
                    update(side, order_id, price, size)
                elif kind == "trade":
                    trade(side, order_id, size)
                else:
                    raise StreamError(f"seq {seq}: the projector does not know the event kind {kind!r}")
            applied += 1
            if not l1:
                continue
            changed = observe(book)
            if changed is not None:
                crossed = changed.bid_price > changed.ask_price
                if crossed and not self.crossed:
                    book.anomalies["crossed_book"] += 1
                self.crossed = crossed
                if out is not None:
                    out.append((seq, ts, changed.bid_price, changed.bid_size, changed.ask_price, changed.ask_size))
        return applied

    def _venue_event(
        self, seq: int, kind: str, order_id: str, side: Side | None, price_text: str | None, size_text: str | None
    ) -> None:
        """Coinbase full-channel (and level3) events, as the exchange documents them:
        ``open`` rests an order; ``match`` takes size off the maker; ``done`` removes the
        order if it rests (it often never did); ``change`` sets a resting order's new size
        and, for ``modify_order``, its new price, and is ignored for orders not on the book;
        ``received``, ``activate`` and ``noop`` leave the book alone. The compact level3
        channel leaves out the side of done, match and change: it is looked up by id."""
        book = self.book
        if kind in ("received", "activate", "noop"):
            return
        if kind == "open":
            if side is None:
                raise StreamError(f"seq {seq}: an open without a side")
            book.add(side, order_id, self._number(seq, kind, price_text), self._number(seq, kind, size_text))
            return
        resting = side if side is not None and (side, order_id) in book.orders else book.side_of(order_id)
        if kind == "done":
            if resting is not None:
                book.discard(resting, order_id)
        elif kind == "match":
            if resting is None:
                book.anomalies["trade_unknown_order"] += 1
            else:
                book.trade(resting, order_id, self._number(seq, kind, size_text))
        elif kind == "change" and resting is not None:
            order = book.orders[(resting, order_id)]
            price = order.price if price_text is None else self._number(seq, kind, price_text)
            book.update(resting, order_id, price, self._number(seq, kind, size_text))

    def _number(self, seq: int, kind: str, text: str | None) -> Number:
        if text is None:
            raise StreamError(f"seq {seq}: a {kind} event without the price or size it needs")
        cached = self.numbers.get(text)
        if cached is not None:
            return cached
        if len(self.numbers) > 100_000:
            self.numbers.clear()
        value = self.numbers[text] = to_number(text)
        return value

    def over_threshold(self) -> bool:
        return self.over_threshold_with(self.book.anomalies)

    def over_threshold_with(self, anomalies: Mapping[str, int]) -> bool:
        return self.error_threshold is not None and sum(anomalies.values()) > self.error_threshold

    def state(self) -> ProjectorState:
        return ProjectorState(book=self.book, l1_last=self.tracker.last, crossed=self.crossed)

    def reset(self, book: Book) -> None:
        """Take ``book`` (a venue's snapshot) as the book; anomaly counts carry on."""
        book.anomalies = self.book.anomalies
        self.book = book

    def emit_l1(self, seq: int, ts: Any, out: list[L1Row] | None) -> None:
        """After a reset: an L1 row at ``seq`` if the top of the new book differs."""
        changed = self.tracker.observe_book(self.book)
        if changed is not None:
            self.crossed = changed.bid_price > changed.ask_price
            if out is not None:
                out.append((seq, ts, changed.bid_price, changed.bid_size, changed.ask_price, changed.ask_size))

    def restore(self, state: ProjectorState) -> None:
        self.book = state.book
        self.tracker = L1Tracker(state.l1_last)
        self.crossed = state.crossed


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


class SourceBooks:
    """The venue's own books (source snapshots) of one stream, as the projector uses them:
    a stream starts from the one just before its first event, and a gap is made up for by
    the earliest one at or after its last missing seq (the events up to it are then
    skipped). The same rule, applied again on a replay, rebuilds the same book."""

    def __init__(self, engine: Engine, stream_id: int, name: str) -> None:
        self._engine = engine
        self._stream_id = stream_id
        self._name = name

    def start(self, proj: StreamProjector, first_seq: int) -> bool:
        """Load the source snapshot at ``first_seq - 1`` if there is one."""
        found = self._load(first_seq - 1, upto=first_seq - 1)
        if found is None:
            return False
        proj.reset(found[1])
        return True

    def reset_at_gap(self, proj: StreamProjector, gap: tuple[int, int]) -> int | None:
        """Reset to the earliest source snapshot covering ``gap``; its seq, or None."""
        found = self._load(gap[1])
        if found is None:
            return None
        proj.reset(found[1])
        return found[0]

    def _load(self, seq: int, *, upto: int | None = None) -> tuple[int, Book] | None:
        with self._engine.connect() as conn:
            found = SourceSnapshots(conn).first_from(self._stream_id, seq, upto=upto)
        if found is None:
            return None
        at, raw = found
        where = f"stream {self._name!r}, source snapshot at seq {at}"
        try:
            return at, source_book(raw, where=where)
        except SnapshotError as e:
            log.warning("%s; not used", e)
            return None


def source_book(raw: str, *, where: str) -> Book:
    """The book of a stored source snapshot (a Coinbase REST level-3 payload)."""
    from ledger.sources.coinbase import MessageError, decode, rest_snapshot_rows

    try:
        _, orders = rest_snapshot_rows(decode(raw))
        with localcontext(EXACT):
            return Book.from_orders((side, oid, to_number(p), to_number(q)) for side, p, q, oid in orders)
    except (MessageError, ValueError, ArithmeticError) as e:
        raise SnapshotError(f"{where}: {e}") from None


def replay(
    proj: StreamProjector,
    engine: Engine,
    stream_id: int,
    sources: SourceBooks,
    *,
    after: int,
    upto: int,
    l1: bool,
) -> list[tuple[int, int]]:
    """Apply the log's events in (after, upto] without writing anything, resetting to source
    snapshots at gaps as a projection run does; return the gaps crossed without one."""
    crossed: list[tuple[int, int]] = []
    expected = after + 1
    skip_until = None
    for rows in read_ahead(engine, stream_id, after=after, upto=upto, chunk=20_000, with_time=False):
        rest = rows if skip_until is None else [r for r in rows if r[0] > skip_until]
        while rest:
            segment, gap = _contiguous(rest, expected)
            proj.apply(segment, None, l1=l1)
            if gap is None:
                expected = rest[-1][0] + 1
                break
            covered = sources.reset_at_gap(proj, gap)
            if covered is None:
                crossed.append(gap)
                expected = gap[1] + 1
                rest = rest[len(segment) :]
            else:
                if l1:
                    proj.emit_l1(covered, None, None)
                skip_until = covered
                expected = covered + 1
                rest = [r for r in rest[len(segment) :] if r[0] > covered]
    return crossed


def restore_latest(
    engine: Engine, stream_id: int, name: str, *, at_or_before: int
) -> tuple[ProjectorState, int] | None:
    """The newest readable snapshot of a stream at or before a seq, and its seq. A snapshot
    that cannot be read, or lies beyond the log, is refused with a warning naming stream and
    seq, and the next older one is tried; None when none is usable."""
    with engine.connect() as conn:
        snapshots = Snapshots(conn)
        _, head = EventLog(conn).seq_range(stream_id)
        for info in snapshots.infos(stream_id, at_or_before=at_or_before):
            where = f"stream {name!r}, book snapshot at seq {info.seq}"
            if head is None or info.seq > head:
                log.warning("%s: refused, the log ends at seq %s; trying an earlier one", where, head)
                continue
            try:
                version, payload = snapshots.load(stream_id, info.seq)
                return decode(payload, version, where=where), info.seq
            except SnapshotError as e:
                log.warning("%s; trying an earlier one", str(e) if where in str(e) else f"{where}: {e}")
    return None


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
                segment, gap = _contiguous(rest, pos.last_seq + 1)
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


def read_ahead(
    engine: Engine,
    stream_id: int,
    *,
    after: int | None,
    upto: int | None = None,
    chunk: int,
    with_time: bool = True,
) -> Iterator[list[Any]]:
    """Chunks of the log read ahead by a thread on its own connection (two at most)."""
    chunks: queue.Queue[list[Any] | BaseException | None] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def reader() -> None:
        try:
            with engine.connect() as conn:
                log = EventLog(conn)
                for rows in log.read_chunks(stream_id, after=after, upto=upto, chunk=chunk, with_time=with_time):
                    while not stop.is_set():
                        try:
                            chunks.put(rows, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            chunks.put(None)
        except BaseException as e:  # handed over to the consuming thread, which raises it
            chunks.put(e)

    thread = threading.Thread(target=reader, name=f"ledger-read-{stream_id}", daemon=True)
    thread.start()
    try:
        while (item := chunks.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                chunks.get(timeout=0.1)
        thread.join()


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


def _contiguous(rows: list[Any], expected: int) -> tuple[list[Any], tuple[int, int] | None]:
    """The leading rows that follow on from ``expected`` without a hole, and the first hole."""
    if rows[-1][0] == expected + len(rows) - 1:  # the usual case: no hole in the chunk
        return rows, None
    for i, row in enumerate(rows):
        if row[0] != expected + i:
            return rows[:i], (expected + i, row[0] - 1)
    return rows, None


def _describe(anomalies: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(anomalies.items()) if v) or "none"
