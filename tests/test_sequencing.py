from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.sequencing import Arrival, GapTracker, classify


def test_classify_each_case() -> None:
    gaps = [(13, 14), (20, 20)]
    assert classify(5, None, None, []) is Arrival.FIRST
    assert classify(31, 10, 30, gaps) is Arrival.NEXT
    assert classify(35, 10, 30, gaps) is Arrival.JUMP
    assert classify(14, 10, 30, gaps) is Arrival.LATE
    assert classify(20, 10, 30, gaps) is Arrival.LATE
    assert classify(15, 10, 30, gaps) is Arrival.DUPLICATE
    assert classify(30, 10, 30, gaps) is Arrival.DUPLICATE
    assert classify(9, 10, 30, gaps) is Arrival.EARLY


def test_late_arrivals_split_and_close_gaps() -> None:
    t = GapTracker()
    for s in (1, 2, 10):
        t.observe(s)
    assert t.gaps == [(3, 9)]
    assert t.observe(5) is Arrival.LATE
    assert t.gaps == [(3, 4), (6, 9)]
    for s in (3, 4, 6, 7, 8, 9):
        t.observe(s)
    assert t.gaps == [] and t.missing() == 0


def test_an_earlier_start_opens_a_gap_below() -> None:
    t = GapTracker(low=10, high=12)
    assert t.observe(7) is Arrival.EARLY
    assert t.gaps == [(8, 9)] and t.low == 7
    assert t.observe(6) is Arrival.EARLY
    assert t.gaps == [(8, 9)]


@given(st.lists(st.integers(min_value=0, max_value=60), max_size=200))
def test_tracker_state_matches_the_set_of_seen_seqs(seqs: list[int]) -> None:
    t = GapTracker()
    seen: set[int] = set()
    for s in seqs:
        arrival = t.observe(s)
        assert (arrival is Arrival.DUPLICATE) == (s in seen)
        seen.add(s)
    if seen:
        missing = sorted(set(range(min(seen), max(seen) + 1)) - seen)
        assert [x for a, b in t.gaps for x in range(a, b + 1)] == missing
        assert (t.low, t.high) == (min(seen), max(seen))
