"""Reading the log back: chunks read ahead on a thread of their own, the venue's source
snapshots, the projector's own book snapshots, and replays that rebuild a book without
writing anything. Shared by the projector and ``ledger book``."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy.engine import Engine

from ledger._threads import ahead
from ledger.domain.book import Book
from ledger.domain.snapshot import ProjectorState, decode
from ledger.errors import SnapshotError
from ledger.services.project.rows import StreamProjector
from ledger.storage.log import EventLog, GapStore, SourceSnapshots, Streams
from ledger.storage.projection import Snapshots
from ledger.venues import Venue, venue

__all__ = [
    "PROJECTOR_UNREAD",
    "Replayed",
    "SourceBook",
    "SourceBooks",
    "contiguous",
    "read_ahead",
    "replay",
    "restore_latest",
    "stream_projector",
]

log = logging.getLogger(__name__)

#: The venue fields a projection reads as None: the projector never looks at an event's
#: ``ts_event`` (L1 rows carry ``ts``), and reading it costs 1.5% of a Databento projection.
PROJECTOR_UNREAD = ("ts_event",)


class SourceBook(NamedTuple):
    """A venue's book a projection was reset to: its seq, and when it was received (the
    time of the L1 row written there)."""

    seq: int
    received_at: datetime | None


class SourceBooks:
    """The venue's own books (source snapshots) of one stream, as the projector uses them:
    a stream starts from the one just before its first event, and a gap is made up for by
    the earliest one at or after its last missing seq (the events up to it are then
    skipped). A gap at the end of the log (a loss that only a heartbeat showed, so no later
    event exists yet) is made up for by the book that ingest recorded as resolving it. The
    same rules, applied again on a replay, rebuild the same book."""

    def __init__(self, engine: Engine, stream_id: int, name: str, source: Venue) -> None:
        self._engine = engine
        self._stream_id = stream_id
        self._name = name
        self._parse = source.source_book
        self.venue = source

    def start(self, proj: StreamProjector, first_seq: int) -> SourceBook | None:
        """Load the source snapshot at ``first_seq - 1`` if there is one."""
        return self._reset(proj, self._load(first_seq - 1, upto=first_seq - 1))

    def reset_at_gap(self, proj: StreamProjector, gap: tuple[int, int]) -> SourceBook | None:
        """Reset to the earliest source snapshot covering ``gap``; None when there is none."""
        return self._reset(proj, self._load(gap[1]))

    def tail(self, expected: int) -> int | None:
        """The seq of the venue book that ingest recorded as resolving a gap that begins at
        ``expected`` (the seq after the last one applied), whether or not events follow."""
        with self._engine.connect() as conn:
            return GapStore(conn).tail_resolved(self._stream_id, expected)

    def reset_at_tail(self, proj: StreamProjector, expected: int, *, upto: int | None = None) -> SourceBook | None:
        """Reset to the book of :meth:`tail` when there is one (at or before ``upto``)."""
        at = self.tail(expected)
        if at is None or (upto is not None and at > upto):
            return None
        return self.reset_to(proj, at)

    def reset_to(self, proj: StreamProjector, seq: int) -> SourceBook | None:
        """Reset to the source snapshot at exactly ``seq``; None when there is no usable one."""
        return self._reset(proj, self._load(seq, upto=seq))

    @staticmethod
    def _reset(proj: StreamProjector, found: tuple[SourceBook, Book] | None) -> SourceBook | None:
        if found is None:
            return None
        proj.reset(found[1])
        return found[0]

    def _load(self, seq: int, *, upto: int | None = None) -> tuple[SourceBook, Book] | None:
        if self._parse is None:  # a venue that publishes no books of its own
            return None
        with self._engine.connect() as conn:
            found = SourceSnapshots(conn).first_from(self._stream_id, seq, upto=upto)
        if found is None:
            return None
        where = f"stream {self._name!r}, source snapshot at seq {found.seq}"
        try:
            return SourceBook(found.seq, found.received_at), self._parse(found.raw, where=where)
        except SnapshotError as e:
            log.warning("%s; not used", e)
            return None


def stream_projector(
    engine: Engine, stream_id: int, name: str, error_threshold: int | None = None
) -> tuple[StreamProjector, SourceBooks]:
    """A projector for one stream, with its venue's rules, and the venue's books for it."""
    with engine.connect() as conn:
        found = venue(Streams(conn).source(stream_id))
    proj = StreamProjector(error_threshold, found.rules())
    return proj, SourceBooks(engine, stream_id, name, found)


def replay(
    proj: StreamProjector,
    engine: Engine,
    stream_id: int,
    sources: SourceBooks,
    *,
    after: int,
    upto: int,
    l1: bool,
) -> Replayed:
    """Apply the log's events in (after, upto] without writing anything, resetting to source
    snapshots at gaps as a projection run does; return the gaps crossed without one, the
    resets to source snapshots, and the seq the book then stands at (beyond ``upto`` when it
    was reset to a later source snapshot)."""
    crossed: list[tuple[int, int]] = []
    resets: list[tuple[tuple[int, int], SourceBook]] = []
    expected = after + 1
    skip_until = None
    dense = sources.venue.dense_seqs
    extra = sources.venue.fields
    chunks = read_ahead(
        engine, stream_id, after=after, upto=upto, chunk=20_000, with_time=False, extra=extra, unread=PROJECTOR_UNREAD
    )
    for rows in chunks:
        rest = rows if skip_until is None else [r for r in rows if r[0] > skip_until]
        while rest:
            segment, gap = contiguous(rest, expected, dense=dense)
            proj.apply_rows(segment, None, l1=l1)
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
                    proj.emit_l1(covered.seq, None, None)
                resets.append((gap, covered))
                skip_until = covered.seq
                expected = covered.seq + 1
                rest = [r for r in rest[len(segment) :] if r[0] > covered.seq]
    while expected <= upto and (tail := sources.reset_at_tail(proj, expected, upto=upto)) is not None:
        if l1:
            proj.emit_l1(tail.seq, None, None)
        resets.append(((expected, tail.seq), tail))
        expected = tail.seq + 1
    return Replayed(crossed, expected - 1, resets)


class Replayed(NamedTuple):
    crossed: list[tuple[int, int]]  # gaps gone across without a source snapshot
    last: int  # the seq the book stands at
    resets: list[tuple[tuple[int, int], SourceBook]]  # (gap, the source snapshot that made up for it)


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


def read_ahead(
    engine: Engine,
    stream_id: int,
    *,
    after: int | None,
    upto: int | None = None,
    chunk: int,
    with_time: bool = True,
    extra: Sequence[str] = (),
    unread: Collection[str] = (),
) -> Iterator[list[Any]]:
    """Chunks of the log read ahead by a thread on its own connection (two at most);
    ``extra``: the venue fields to read too, those in ``unread`` as None
    (:meth:`EventLog.read_chunks`; a projection passes :data:`PROJECTOR_UNREAD`)."""

    def chunks() -> Iterator[list[Any]]:
        with engine.connect() as conn:
            log = EventLog(conn)
            yield from log.read_chunks(
                stream_id, after=after, upto=upto, chunk=chunk, with_time=with_time, extra=extra, unread=unread
            )

    return ahead(chunks, name=f"ledger-read-{stream_id}", maxsize=2)


def contiguous(rows: list[Any], expected: int, *, dense: bool = True) -> tuple[list[Any], tuple[int, int] | None]:
    """The leading rows that follow on from ``expected`` without a hole, and the first hole.
    A venue whose seqs are not dense (``dense`` False: a key that skips numbers, such as
    Databento's time-based seq) has no holes to find: all the rows follow on."""
    if not dense:
        return rows, None
    if rows[-1][0] == expected + len(rows) - 1:  # the usual case: no hole in the chunk
        return rows, None
    for i, row in enumerate(rows):
        if row[0] != expected + i:
            return rows[:i], (expected + i, row[0] - 1)
    return rows, None
