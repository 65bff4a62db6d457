"""The book of a stream at any point of its history: the newest good snapshot at or before
that point, then the events after it, replayed without writing anything."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from sqlalchemy.engine import Connection, Engine

from ledger.domain.book import Book
from ledger.errors import StreamError, UnknowableBook
from ledger.services.project.replay import SourceBook, replay, restore_latest, stream_projector
from ledger.services.project.rows import StreamProjector
from ledger.services.read.times import iso_time
from ledger.storage.log import EventLog, GapStore, SourceSnapshots, Streams

__all__ = ["BookView", "Rebuilt", "book_at", "rebuild", "seq_at_time"]


@dataclass
class BookView:
    """A rebuilt book and where in the stream it stands."""

    stream: str
    seq: int
    time: datetime | None
    book: Book
    from_snapshot: int | None
    missing: list[tuple[int, int]] = field(default_factory=list)  # gaps crossed on the way


def seq_at_time(conn: Connection, stream_id: int, at: datetime) -> int:
    """The seq of the last event at or before ``at``. A binary search over the primary key,
    so it needs no index on time; it assumes time does not go back as seq goes up."""
    log = EventLog(conn)
    low, high = log.seq_range(stream_id)
    if low is None or high is None:
        raise StreamError("the stream has no events")
    first_ts = log.nearest(stream_id, at_or_after=low)[1]
    if first_ts is not None and first_ts > at:
        raise StreamError(f"{iso_time(at)} is before the stream's first event ({iso_time(first_ts)})")
    # Largest x in [low, high] whose first event at or after x is not later than `at`;
    # that x is itself the seq of an event (or the next event would qualify too).
    lo, hi = low, high
    while lo < hi:
        mid = (lo + hi + 1) // 2
        ts = log.nearest(stream_id, at_or_after=mid)[1]
        if ts is None or ts <= at:
            lo = mid
        else:
            hi = mid - 1
    return log.nearest(stream_id, at_or_before=lo)[0]


def book_at(engine: Engine, stream: str, *, at_seq: int | None = None, at_time: datetime | None = None) -> BookView:
    """The book of ``stream`` after the event at ``at_seq`` (or the last one at or before
    ``at_time``; or the newest event when neither is given).

    The book is shown only where an exchange event ends: a seq inside one (a venue whose
    records of one event end with ``F_LAST``, as Databento's do) shows the book at the end
    of the event before it, never the state half way through.

    No book is shown for a seq the log cannot know: between a gap and the venue's book
    (source snapshot) that resolved it, the events are missing, so a seq there raises
    :class:`~ledger.errors.UnknowableBook` naming the gap and that book's seq. A gap at the
    end of the log that ingest recorded as resolved by a later venue book (a loss only a
    heartbeat showed) makes that book the newest point of the stream."""
    with engine.connect() as conn:
        stream_id = Streams(conn).get(stream)
        log = EventLog(conn)
        low, high = log.seq_range(stream_id)
        if low is None or high is None:
            raise StreamError(f"stream {stream!r} has no events yet")
        tail = GapStore(conn).tail_resolved(stream_id, high + 1)
        head = high if tail is None else tail
        if at_time is not None:
            target = seq_at_time(conn, stream_id, at_time)
        elif at_seq is not None:
            if at_seq < low:
                raise StreamError(f"stream {stream!r} starts at seq {low}; seq {at_seq} is before it")
            target = min(at_seq, head)
        else:
            target = head
        if tail is not None and high < target < tail:
            raise _unknowable(stream, target, high + 1, tail)
        if target <= high:
            ended = log.event_end(stream_id, at_or_before=target)
            if ended is None:
                raise StreamError(
                    f"stream {stream!r}: no exchange event has ended by seq {target} (its records so far are "
                    "part of one event, such as a venue's snapshot); ask for a later seq"
                )
            target = ended
        if target < high:  # a seq in a hole of the log that a venue book ends is unknowable too
            before, _ = log.nearest(stream_id, at_or_before=target)
            if before < target:
                after, _ = log.nearest(stream_id, at_or_after=target)
                found = SourceSnapshots(conn).first_from(stream_id, after - 1)
                if found is not None and found.seq > target:
                    raise _unknowable(stream, target, before + 1, found.seq)
    proj, from_snapshot, missing, last, resets = rebuild(engine, stream_id, stream, first=low, upto=target)
    for (first, _), venue_book in resets:
        if venue_book.seq > target:
            raise _unknowable(stream, target, first, venue_book.seq)
    with engine.connect() as conn:
        seq, ts = EventLog(conn).nearest(stream_id, at_or_before=target)
    for _, venue_book in resets:
        if venue_book.seq == last and seq < last:  # the book is the venue's, at a seq no event has
            seq, ts = last, venue_book.received_at
    return BookView(stream=stream, seq=seq, time=ts, book=proj.book, from_snapshot=from_snapshot, missing=missing)


def _unknowable(stream: str, target: int, first: int, book_seq: int) -> UnknowableBook:
    return UnknowableBook(
        f"stream {stream!r}: no book can be shown at seq {target}: seqs from {first} are missing from the log, "
        f"and the venue's book at seq {book_seq} ends that gap; ask for seq {first - 1} or earlier, "
        f"or {book_seq} or later"
    )


class Rebuilt(NamedTuple):
    proj: StreamProjector  # holds the book
    from_snapshot: int | None  # the seq of the book snapshot it started from, if any
    missing: list[tuple[int, int]]  # gaps crossed without a source snapshot
    last: int  # the seq the book stands at: ``upto``, or a later source snapshot it was reset to
    resets: list[tuple[tuple[int, int], SourceBook]]  # gaps made up for by the venue's books


def rebuild(engine: Engine, stream_id: int, stream: str, *, first: int, upto: int) -> Rebuilt:
    """The book after ``upto`` (see :class:`Rebuilt`); ``first`` is the stream's first seq."""
    proj, sources = stream_projector(engine, stream_id, stream)
    replay_after = first - 1
    from_snapshot = None
    restored = restore_latest(engine, stream_id, stream, at_or_before=upto)
    if restored is not None:
        state, replay_after = restored
        proj.restore(state)
        from_snapshot = replay_after
    else:
        sources.start(proj, first)
    replayed = replay(proj, engine, stream_id, sources, after=replay_after, upto=upto, l1=False)
    return Rebuilt(proj, from_snapshot, replayed.crossed, max(upto, replayed.last), replayed.resets)
