"""``ledger watch``: a stream's top levels, live, as ingest appends events.

:class:`BookFollower` rebuilds the stream's book at the head of the log once (the newest
book snapshot, then replay), then advances it by the events after it whenever ingest
announces new ones (LISTEN/NOTIFY; a slow poll as a fallback). :func:`follow_top` turns
that into a sequence of :class:`TopView` frames: one per change of the top ``depth``
levels, never more than ``max_fps`` a second, the latest state winning, so a fast feed
cannot swamp a terminal. It writes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from ledger.domain.book import LevelView
from ledger.services.project.replay import replay, stream_projector
from ledger.services.project.rows import StreamProjector
from ledger.services.read.book import rebuild
from ledger.storage.log import EventLog, SourceSnapshots, Streams
from ledger.storage.notify import Listener

__all__ = ["BookFollower", "TopView", "follow_top"]


@dataclass(frozen=True)
class TopView:
    """The top levels of one stream after the event at ``seq``."""

    stream: str
    seq: int
    bids: tuple[LevelView, ...]
    asks: tuple[LevelView, ...]
    missing: tuple[tuple[int, int], ...] = ()  # gaps crossed without a source snapshot


class BookFollower:
    """A stream's book kept at the head of its log (see the module's text)."""

    def __init__(self, engine: Engine, stream: str) -> None:
        self._engine = engine
        self.stream = stream
        with engine.connect() as conn:
            self.stream_id = Streams(conn).get(stream)
            low, high = _shown_range(EventLog(conn), self.stream_id)
        self.seq: int | None = None
        self._first = low
        self.missing: list[tuple[int, int]] = []
        self._proj: StreamProjector | None = None
        _, self._sources = stream_projector(engine, self.stream_id, stream)
        self._tried: set[int] = set()  # source snapshots a rebuild has already looked at
        if low is not None and high is not None:
            self._rebuild(low, high)

    def advance(self) -> bool:
        """Apply the events appended since the last call; whether there were any."""
        with self._engine.connect() as conn:
            low, high = _shown_range(EventLog(conn), self.stream_id)
        if high is None or low is None or (self.seq is not None and high <= self.seq):
            return False
        if self._proj is None or self._first is None or low < self._first or self._must_rebuild():
            # the first events, events older than the book's first, or late events or a new
            # venue book for a gap it went across: start over
            self._rebuild(low, high)
        else:
            assert self.seq is not None
            proj, sources = self._proj, self._sources
            replayed = replay(proj, self._engine, self.stream_id, sources, after=self.seq, upto=high, l1=False)
            self.missing += replayed.crossed
            self.seq = max(high, replayed.last)  # past `high` when reset to a venue book ahead of it
        return True

    def _rebuild(self, low: int, high: int) -> None:
        self._proj, _, self.missing, self.seq, _ = rebuild(
            self._engine, self.stream_id, self.stream, first=low, upto=high
        )
        self._first = low
        with self._engine.connect() as conn:  # a venue book the replay did not use is unreadable
            snapshots = SourceSnapshots(conn)
            for _, last in self.missing:
                if (found := snapshots.first_from(self.stream_id, last)) is not None:
                    self._tried.add(found[0])

    def _must_rebuild(self) -> bool:
        """Whether an increment would be wrong: events have arrived in a gap the book went
        across, or a source snapshot (the venue's book) not tried before makes up for one."""
        assert self.seq is not None
        with self._engine.connect() as conn:
            snapshots = SourceSnapshots(conn)
            for _, last in self.missing:
                found = snapshots.first_from(self.stream_id, last)
                if found is not None and found[0] not in self._tried:
                    return True
            log = EventLog(conn)
            return any(log.any_between(self.stream_id, first=first, last=last) for first, last in self.missing)

    def top(self, depth: int) -> TopView | None:
        if self._proj is None or self.seq is None:
            return None
        book = self._proj.book
        return TopView(
            self.stream,
            self.seq,
            tuple(book.levels("B", depth)),
            tuple(book.levels("S", depth)),
            tuple(self.missing),
        )


def _shown_range(log: EventLog, stream_id: int) -> tuple[int | None, int | None]:
    """The stream's first seq and the last one its book may be shown at: the end of the
    last whole exchange event (a batch of a venue's records may end inside one)."""
    low, high = log.seq_range(stream_id)
    if high is not None:
        high = log.event_end(stream_id, at_or_before=high)
    return (low, high) if high is not None else (low, None)


def follow_top(
    engine: Engine,
    stream: str,
    *,
    depth: int,
    max_fps: float = 10.0,
    poll: float = 1.0,
    stop: Callable[[], bool] = lambda: False,
    say: Callable[[str], None] = lambda _: None,
) -> Iterator[TopView]:
    """Frames of the stream's top ``depth`` levels as they change (see the module's text).
    Waits for notifications from ingest; polls every ``poll`` seconds in case one is missed.

    A stream that does not exist yet is waited for, as ``tail -F`` waits for a file; ``say``
    hears what it is doing meanwhile (waiting, rebuilding a long stream's book)."""
    shown: tuple[object, ...] | None = None
    last_frame = 0.0
    with Listener(engine) as listener:
        follower = _wait_for_stream(engine, stream, listener, poll, stop, say)
        if follower is None:
            return
        while not stop():
            view = follower.top(depth)
            if view is not None and (view.bids, view.asks) != shown:
                wait = last_frame + 1.0 / max_fps - time.monotonic()
                if wait > 0:  # too soon: let more events in, then show the latest state
                    time.sleep(wait)
                    follower.advance()
                    view = follower.top(depth)
                assert view is not None
                shown = (view.bids, view.asks)
                last_frame = time.monotonic()
                yield view
            woken = listener.wait(poll)
            if woken and follower.stream_id not in woken:
                continue
            follower.advance()


def _wait_for_stream(
    engine: Engine, stream: str, listener: Listener, poll: float, stop: Callable[[], bool], say: Callable[[str], None]
) -> BookFollower | None:
    """The stream's follower once the stream exists and its book is rebuilt (None: stopped
    first). Rule: a stream not there yet is waited for, saying so once."""
    waiting = False
    while not stop():
        with engine.connect() as conn:
            known = stream in Streams(conn).names()
            low, high = EventLog(conn).seq_range(Streams(conn).get(stream)) if known else (None, None)
        if known:
            if low is not None and high is not None and high - low > 100_000:
                say(f"rebuilding the book of {stream} at seq {high} (from its newest book snapshot)...")
            return BookFollower(engine, stream)
        if not waiting:
            say(f"waiting for stream {stream} to appear (Ctrl-C to stop)...")
            waiting = True
        listener.wait(poll)
    return None
