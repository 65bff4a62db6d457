"""Keeping one Coinbase product's stream whole: the initial sync from a REST book, gaps, resyncs.

Pure bookkeeping, no I/O: the capture loop feeds :class:`ProductSync` the rows of one
product as they arrive, the heartbeats, the REST level-3 books it fetched, and a clock
tick; the sync says which rows to store and when a REST book is wanted.

* **A new stream** (no event stored yet) starts as the exchange documents: buffer the feed,
  fetch a REST book at sequence S, drop buffered messages with sequence <= S, store the
  rest. The book is stored together with the event S + 1, so the log of a new stream always
  begins right after a book the projector can start from. A book older than the buffer
  (S + 1 missing from it after a grace period) is discarded and another one fetched.
* **A stream that goes on** (a restart, a reconnect, lost messages): every row goes through
  the stream's :class:`~ledger.domain.sequencing.GapTracker`. A jump in sequence is stored
  with its gap; if the missing messages do not arrive within the grace period (they may
  only be reordered), a REST book at or after the gap's end is fetched and stored, and
  the gaps it covers are resolved by it. A heartbeat whose sequence is ahead of the last
  message received means the tail was lost on a quiet feed, and also asks for a book;
  that loss is a gap like any other, from the message after the last one received to
  the book's sequence, recorded and resolved by the book even if no message follows.
* **Late is not lost**: a message that fills a jump (the feed swapped two messages) is
  counted as ``late``; only what the writer records as a gap row is a gap (the store
  counts those).
* **Backoff**: fetches for a product are spaced by an exponential delay with jitter that
  grows with each fetch in the last minute, so a flapping product cannot cause a storm;
  its other products are not affected.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger._backoff import Backoff
from ledger.domain.sequencing import Arrival, GapTracker, classify

__all__ = ["ProductSync", "RestBook", "SyncCounts", "SyncTiming", "Take"]


@dataclass(frozen=True)
class SyncTiming:
    """How patient a sync is (seconds)."""

    grace: float = 0.5  # how long a jump may wait for its missing (perhaps reordered) messages
    backoff_base: float = 0.25  # the delay after a product's first fetch within a window, doubling after each
    backoff_cap: float = 30.0
    backoff_window: float = 60.0  # fetches older than this no longer lengthen the delay
    max_buffer: int = 200_000  # messages buffered while a new stream waits for its first book


@dataclass(frozen=True)
class RestBook:
    """A REST level-3 book as fetched: its sequence, its text as received, how many orders,
    and when its response was received (timezone-aware UTC; None: not known, the database
    then dates it when it is stored)."""

    seq: int
    raw: str
    order_count: int
    received_at: datetime | None = None


class Take(enum.Enum):
    """What became of a row given to :meth:`ProductSync.row`."""

    STORE = "store"
    BUFFERED = "buffered"
    DUPLICATE = "duplicate"
    BEFORE_START = "before_start"  # older than the stream's first event or first book


@dataclass
class SyncCounts:
    messages: int = 0
    stored: int = 0
    duplicates: int = 0
    dropped_before_start: int = 0
    late: int = 0  # messages that arrived after a later one, filling a jump (reordered, not lost)
    resyncs: int = 0  # REST books fetched and used
    stale_books: int = 0  # REST books too old for what they were fetched for


@dataclass
class _Ready:
    """What the sync has for the writer: rows in arrival order, books, gaps they resolved."""

    rows: list[Any] = field(default_factory=list)
    books: list[RestBook] = field(default_factory=list)  # every one is stored: the first starts the stream
    resolved: list[tuple[int, int]] = field(default_factory=list)


class ProductSync:
    """The sync state of one product's stream; see the module's text."""

    def __init__(
        self,
        product: str,
        tracker: GapTracker,
        *,
        timing: SyncTiming | None = None,
        rng: random.Random | None = None,
        now: float = 0.0,
        latest_book: int = -1,
    ) -> None:
        self.product = product
        self.tracker = tracker
        self.timing = timing or SyncTiming()
        self.counts = SyncCounts()
        self._rng = rng or random.Random()
        self.live = tracker.high is not None  # a new stream waits for its first book
        self._buffer: dict[int, tuple[float, Any]] = {}  # seq -> (arrival time, row), new streams only
        self._first_book: RestBook | None = None  # fetched for a new stream, stored with event S + 1
        self._latest_book = latest_book  # the seq of the newest book stored (or about to be)
        self._gaps_since: float | None = now - self.timing.grace if tracker.gaps else None
        self._heartbeat_seq = -1
        self._heartbeat_at = 0.0
        self._fetching = False
        self._next_fetch = now
        self._fetches: list[float] = []
        self._ready = _Ready()
        self._urgent = not self.live  # fetch at once, without waiting for the grace period

    # -- input ---------------------------------------------------------------------------------

    def row(self, seq: int, row: Any, now: float) -> Take:
        """Take one sequenced row (any object; the writer's), received at ``now``."""
        self.counts.messages += 1
        if not self.live:
            return self._buffer_row(seq, row, now)
        return self._live_row(seq, row, now)

    def _live_row(self, seq: int, row: Any, now: float) -> Take:
        tracker = self.tracker
        high = tracker.high
        if high is not None and seq == high + 1:  # the usual case
            tracker.high = seq
        else:
            arrival = classify(seq, tracker.low, high, tracker.gaps)
            if arrival is Arrival.DUPLICATE:
                self.counts.duplicates += 1
                return Take.DUPLICATE
            if arrival is Arrival.EARLY:  # before the stream's first event: its start is a book
                self.counts.dropped_before_start += 1
                return Take.BEFORE_START
            tracker.observe(seq)
            if arrival is Arrival.JUMP:
                self._jumped(now)
            elif arrival is Arrival.LATE:
                # Late, not lost: counted apart from gaps. A jump it closes before the writer
                # takes it never becomes a gap row (a swapped pair is not a gap).
                self.counts.late += 1
                if not tracker.gaps:
                    self._gaps_since = None
        self._ready.rows.append(row)
        self.counts.stored += 1
        return Take.STORE

    def heartbeat(self, seq: int, now: float) -> None:
        """A heartbeat: ``seq`` is the product's latest sequence at the exchange."""
        if seq > self._heartbeat_seq:
            self._heartbeat_seq, self._heartbeat_at = seq, now

    def reconnected(self) -> None:
        """The connection was lost and made again: whatever came in between is lost, so a
        jump on the new connection is resynced at once."""
        self._urgent = True

    def wants_book(self, now: float) -> bool:
        """Whether to fetch a REST book now (the caller then calls :meth:`fetching`)."""
        if self._fetching or now < self._next_fetch:
            return False
        if not self.live:
            book = self._first_book
            if book is None:
                return True
            if not self._buffer or book.seq + 1 in self._buffer:
                return False
            # Everything buffered is after the book (older rows were dropped); the dict keeps
            # arrival order, so its first entry has waited longest.
            first_arrival = next(iter(self._buffer.values()))[0]
            return now - first_arrival >= self.timing.grace
        grace = 0.0 if self._urgent else self.timing.grace
        if self._gaps_since is not None and now - self._gaps_since >= grace:
            return True
        high = self.tracker.high if self.tracker.high is not None else -1
        tail_lost = self._heartbeat_seq > max(high, self._latest_book)
        return tail_lost and now - self._heartbeat_at >= grace

    def fetching(self, now: float) -> None:
        """A fetch started; the next may start only after the backoff delay."""
        self._fetching = True
        timing = self.timing
        self._fetches = [t for t in self._fetches if now - t < timing.backoff_window] + [now]
        backoff = Backoff(first=timing.backoff_base, cap=timing.backoff_cap, jitter=(0.5, 1.0))
        self._next_fetch = now + backoff.delay(len(self._fetches) - 1, self._rng)

    def fetch_failed(self) -> None:
        self._fetching = False

    def book(self, book: RestBook, now: float) -> bool:
        """A fetched REST book; True when it is used (stored), False when it is too old."""
        self._fetching = False
        if not self.live:
            return self._first(book, now)
        tracker = self.tracker
        high = tracker.high if tracker.high is not None else -1
        covered = [g for g in tracker.gaps if g[1] <= book.seq]
        tail = self._heartbeat_seq > max(high, self._latest_book) and book.seq >= self._heartbeat_seq
        if not covered and not tail:
            self.counts.stale_books += 1  # older than the gaps' ends: the projector could not use it
            return False
        tracker.gaps = [g for g in tracker.gaps if g[1] > book.seq]
        if tail:
            # Rule: a loss seen only by a heartbeat is a gap like any other. The messages after
            # the last one received, up to the book, are missing from the log: that run is a
            # gap resolved by this book (even if no message ever follows it), and the stream
            # goes on from the book (a message at or below it arriving later is not stored).
            covered.append((high + 1, book.seq))
            tracker.high = book.seq
        self._ready.resolved += covered
        self._ready.books.append(book)
        self._latest_book = max(self._latest_book, book.seq)
        self.counts.resyncs += 1
        self._gaps_since = now if tracker.gaps else None
        self._urgent = False
        return True

    # -- output --------------------------------------------------------------------------------

    def take_ready(self) -> tuple[list[Any], list[RestBook], list[tuple[int, int]]]:
        """Rows to store (in arrival order), the books to store, and the gaps they resolved."""
        ready, self._ready = self._ready, _Ready()
        return ready.rows, ready.books, ready.resolved

    @property
    def ready(self) -> int:
        """Rows ready for the writer."""
        return len(self._ready.rows)

    @property
    def buffered(self) -> int:
        """Rows of a new stream waiting for its first book."""
        return len(self._buffer)

    @property
    def latest_book(self) -> int:
        """The seq of the newest book used (-1: none yet)."""
        return self._latest_book

    @property
    def state(self) -> str:
        if not self.live:
            return "syncing"
        return "resyncing" if self._fetching or self.tracker.gaps else "live"

    # -- internals -------------------------------------------------------------------------------

    def _jumped(self, now: float) -> None:
        gap = self.tracker.gaps[-1]
        if gap[1] <= self._latest_book:  # a book already stored covers it (fetched for an earlier gap)
            self.tracker.gaps.pop()
            self._ready.resolved.append(gap)
            if not self.tracker.gaps:
                self._gaps_since = None
            return
        if self._gaps_since is None:
            self._gaps_since = now

    def _buffer_row(self, seq: int, row: Any, now: float) -> Take:
        book = self._first_book
        if book is not None and seq <= book.seq:
            self.counts.dropped_before_start += 1
            return Take.BEFORE_START
        if seq in self._buffer:
            self.counts.duplicates += 1
            return Take.DUPLICATE
        self._buffer[seq] = (now, row)
        if len(self._buffer) > self.timing.max_buffer:  # bounded: the first arrived go, a later book is needed
            del self._buffer[next(iter(self._buffer))]
            self.counts.dropped_before_start += 1
        if book is not None and seq == book.seq + 1:
            self._go_live(book, now)
        return Take.BUFFERED

    def _first(self, book: RestBook, now: float) -> bool:
        """A book for a new stream: kept until the event after it arrives (and replaced by a
        newer one if that event does not come within the grace period)."""
        if self._first_book is not None:
            self.counts.stale_books += 1
            if book.seq <= self._first_book.seq:
                return False
        self._first_book = book
        self.counts.dropped_before_start += sum(1 for s in self._buffer if s <= book.seq)
        self._buffer = {s: v for s, v in self._buffer.items() if s > book.seq}
        if book.seq + 1 in self._buffer:
            self._go_live(book, now)
        return True

    def _go_live(self, book: RestBook, now: float) -> None:
        """The first book and the event after it are in hand: store both, go on as a live stream."""
        self.live = True
        self._urgent = False
        self._first_book = None
        self._latest_book = book.seq
        self._ready.books.append(book)
        self.counts.resyncs += 1
        buffered, self._buffer = sorted(self._buffer.items()), {}
        for seq, (_, row) in buffered:
            self._live_row(seq, row, now)
