"""ProductSync, the per-product bookkeeping of a live capture, without any I/O."""

from __future__ import annotations

import itertools
import random

from ledger.domain.sequencing import GapTracker
from ledger.venues.coinbase.sync import ProductSync, RestBook, SyncTiming, Take

TIMING = SyncTiming(grace=1.0, backoff_base=1.0, backoff_cap=8.0, backoff_window=60.0)


def _sync(tracker: GapTracker | None = None) -> ProductSync:
    return ProductSync("BTC-USD", tracker or GapTracker(), timing=TIMING, rng=random.Random(1), now=0.0)


def _book(seq: int) -> RestBook:
    return RestBook(seq, f'{{"sequence": {seq}}}', 0)


def test_new_stream_buffers_until_the_book_and_the_event_after_it() -> None:
    sync = _sync()
    assert not sync.live and sync.wants_book(0.0)
    sync.fetching(0.0)
    for seq in (100, 101, 102):
        assert sync.row(seq, seq, 0.1) is Take.BUFFERED
    assert sync.book(_book(101), 0.2)
    assert sync.live
    rows, books, resolved = sync.take_ready()
    assert rows == [102] and [b.seq for b in books] == [101] and resolved == []
    assert sync.counts.dropped_before_start == 2
    assert sync.row(103, 103, 0.3) is Take.STORE
    assert sync.row(101, 101, 0.3) is Take.BEFORE_START  # older than the stream's start


def test_new_stream_book_waits_for_its_next_event_then_refetches_if_it_never_comes() -> None:
    sync = _sync()
    sync.fetching(0.0)
    assert sync.book(_book(50), 0.1)  # kept: nothing buffered yet
    assert not sync.live and not sync.wants_book(0.2)
    assert sync.row(53, 53, 0.3) is Take.BUFFERED  # 51 and 52 lost (or late)
    assert not sync.wants_book(0.5)  # still within the grace period
    assert sync.row(51, 51, 0.6) is Take.BUFFERED  # late: the book is usable after all
    assert sync.live
    rows, books, _ = sync.take_ready()
    assert [b.seq for b in books] == [50] and rows == [51, 53]
    assert sync.tracker.gaps == [(52, 52)]


def test_stale_first_book_is_replaced_by_a_newer_one() -> None:
    sync = _sync()
    sync.fetching(0.0)
    sync.book(_book(10), 0.1)
    sync.row(20, 20, 0.2)
    assert sync.wants_book(1.3)  # 11 never came
    sync.fetching(1.3)
    assert sync.book(_book(19), 1.4)
    assert sync.live and sync.counts.stale_books == 1
    rows, books, _ = sync.take_ready()
    assert [b.seq for b in books] == [19] and rows == [20]


def test_live_jump_waits_for_late_messages_before_resyncing() -> None:
    sync = _sync(GapTracker(1, 10))
    assert sync.live and not sync.wants_book(0.0)
    assert sync.row(12, 12, 0.0) is Take.STORE
    assert sync.tracker.gaps == [(11, 11)] and not sync.wants_book(0.5)
    assert sync.row(11, 11, 0.6) is Take.STORE  # reordered, not lost
    assert not sync.tracker.gaps and not sync.wants_book(5.0)
    assert sync.row(12, 12, 5.0) is Take.DUPLICATE


def test_live_gap_resolved_by_a_book_at_or_after_its_end() -> None:
    sync = _sync(GapTracker(1, 10))
    sync.row(15, 15, 0.0)
    assert sync.wants_book(1.0)
    sync.fetching(1.0)
    assert not sync.book(_book(13), 1.1)  # ends before the gap does: useless to the projector
    assert sync.counts.stale_books == 1 and sync.tracker.gaps == [(11, 14)]
    assert not sync.wants_book(1.2)  # backoff: the second fetch within a minute waits
    assert sync.wants_book(3.0)
    sync.fetching(3.0)
    assert sync.book(_book(16), 3.1)
    rows, books, resolved = sync.take_ready()
    assert rows == [15] and [b.seq for b in books] == [16] and resolved == [(11, 14)]
    assert sync.tracker.gaps == [] and sync.latest_book == 16


def test_lost_tail_on_a_quiet_feed_is_seen_by_the_heartbeat() -> None:
    sync = _sync(GapTracker(1, 10))
    sync.heartbeat(10, 0.0)
    assert not sync.wants_book(5.0)
    sync.heartbeat(12, 5.0)  # 11 and 12 were sent and lost
    assert not sync.wants_book(5.5) and sync.wants_book(6.1)
    sync.fetching(6.1)
    assert sync.book(_book(12), 6.2)
    assert sync.row(13, 13, 7.0) is Take.STORE  # the jump over 11..12 is covered by the book
    rows, _, resolved = sync.take_ready()
    assert rows == [13] and resolved == [(11, 12)] and not sync.tracker.gaps


def test_reconnect_resyncs_a_jump_at_once() -> None:
    sync = _sync(GapTracker(1, 10))
    sync.reconnected()
    sync.row(40, 40, 0.0)
    assert sync.wants_book(0.0)


def test_open_gaps_of_an_earlier_run_ask_for_a_book_at_once() -> None:
    sync = _sync(GapTracker(1, 30, [(11, 20)]))
    assert sync.wants_book(0.0)


def test_backoff_grows_with_each_fetch_in_the_window() -> None:
    sync = _sync(GapTracker(1, 10))
    sync.row(20, 20, 0.0)
    starts = []
    now = 1.0
    while len(starts) < 6:
        if sync.wants_book(now):
            sync.fetching(now)
            starts.append(now)
            sync.fetch_failed()
        now = round(now + 0.1, 1)
    spacing = [b - a for a, b in itertools.pairwise(starts)]
    # 1, 2, 4, 8, then capped at 8 seconds, each times a jitter in [0.5, 1)
    assert spacing[0] <= 1.0 and spacing[2] >= 2.0 and spacing[-1] >= 4.0 and max(spacing) <= 8.0


def test_first_book_is_kept_when_a_resync_book_follows_before_the_writer_takes_them() -> None:
    sync = _sync()
    sync.fetching(0.0)
    for seq in range(95, 106):
        sync.row(seq, seq, 0.1)
    assert sync.book(_book(100), 0.2) and sync.live
    sync.row(110, 110, 0.3)  # 106..109 lost
    assert sync.wants_book(1.5)
    sync.fetching(1.5)
    assert sync.book(_book(120), 1.6)
    rows, books, resolved = sync.take_ready()
    assert [b.seq for b in books] == [100, 120]  # the stream's start, and the resync
    assert rows == [101, 102, 103, 104, 105, 110] and resolved == [(106, 109)]


def test_a_loss_seen_only_by_a_heartbeat_is_a_gap_even_with_no_message_after_it() -> None:
    sync = _sync(GapTracker(1, 10))
    sync.heartbeat(12, 0.0)  # 11 and 12, the last messages of a quiet feed, were lost
    assert sync.wants_book(1.1)
    sync.fetching(1.1)
    assert sync.book(_book(14), 1.2)  # the exchange went on to 14 meanwhile
    rows, books, resolved = sync.take_ready()
    assert rows == [] and [b.seq for b in books] == [14]
    assert resolved == [(11, 14)]  # recorded and resolved by the book, though nothing follows it
    assert sync.tracker.high == 14 and not sync.tracker.gaps and not sync.wants_book(10.0)
    assert sync.row(13, 13, 2.0) is Take.DUPLICATE  # covered by the book: not stored
    assert sync.row(15, 15, 2.0) is Take.STORE
    assert sync.take_ready() == ([15], [], [])  # no second gap for the same loss


def test_a_swapped_pair_is_late_not_a_gap() -> None:
    sync = _sync(GapTracker(1, 10))
    assert sync.row(12, 12, 0.0) is Take.STORE
    assert sync.row(11, 11, 0.01) is Take.STORE  # the feed swapped 11 and 12
    assert sync.row(14, 14, 0.02) is Take.STORE
    assert sync.row(13, 13, 0.03) is Take.STORE
    assert sync.counts.late == 2 and sync.counts.stored == 4
    rows, books, resolved = sync.take_ready()
    assert rows == [12, 11, 14, 13] and books == [] and resolved == []
    assert not sync.tracker.gaps and not sync.wants_book(5.0)
