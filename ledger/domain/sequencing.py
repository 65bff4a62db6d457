"""Sequencing: is an incoming seq the next one, a duplicate, a late arrival, or a jump?

A pure function (:func:`classify`) over a stream's sequencing state, and a small tracker
(:class:`GapTracker`) that keeps that state as events arrive: the lowest and highest seq
seen and the open gaps (runs of missing seqs) between them. Nothing here touches a
database; the ingest service persists what the tracker says.

    >>> t = GapTracker()
    >>> [t.observe(s).value for s in (10, 11, 14, 12, 11)]
    ['first', 'next', 'jump', 'late', 'duplicate']
    >>> t.gaps
    [(13, 13)]
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from collections.abc import Iterable

__all__ = ["Arrival", "GapTracker", "classify"]


class Arrival(enum.Enum):
    """How a seq relates to what a stream already has."""

    FIRST = "first"  # the stream had nothing
    NEXT = "next"  # exactly one past the highest seq
    JUMP = "jump"  # beyond the next one: the seqs in between are missing (a new gap)
    LATE = "late"  # inside an open gap: it fills (part of) it
    EARLY = "early"  # below the lowest seq seen so far (the stream's start moves back)
    DUPLICATE = "duplicate"  # already stored


def classify(seq: int, low: int | None, high: int | None, gaps: list[tuple[int, int]]) -> Arrival:
    """Classify ``seq`` against a stream's lowest and highest seq and its sorted open gaps."""
    if high is None or low is None:
        return Arrival.FIRST
    if seq == high + 1:
        return Arrival.NEXT
    if seq > high:
        return Arrival.JUMP
    if seq < low:
        return Arrival.EARLY
    i = bisect_right(gaps, (seq, 2**63)) - 1
    if i >= 0 and gaps[i][0] <= seq <= gaps[i][1]:
        return Arrival.LATE
    return Arrival.DUPLICATE


class GapTracker:
    """The sequencing state of one stream, updated one seq at a time."""

    __slots__ = ("gaps", "high", "low")

    def __init__(self, low: int | None = None, high: int | None = None, gaps: Iterable[tuple[int, int]] = ()) -> None:
        self.low = low
        self.high = high
        #: Open gaps as sorted, disjoint, inclusive (first, last) ranges.
        self.gaps: list[tuple[int, int]] = sorted(gaps)

    def observe(self, seq: int) -> Arrival:
        """Record that ``seq`` arrived and say how it arrived."""
        high = self.high
        if high is not None and seq == high + 1:  # the common case, kept cheap
            self.high = seq
            return Arrival.NEXT
        arrival = classify(seq, self.low, high, self.gaps)
        if arrival is Arrival.FIRST:
            self.low = self.high = seq
        elif arrival is Arrival.JUMP:
            assert high is not None
            self.gaps.append((high + 1, seq - 1))
            self.high = seq
        elif arrival is Arrival.EARLY:
            assert self.low is not None
            if seq < self.low - 1:
                self.gaps.insert(0, (seq + 1, self.low - 1))
            self.low = seq
        elif arrival is Arrival.LATE:
            self._fill(seq)
        return arrival

    def _fill(self, seq: int) -> None:
        i = bisect_right(self.gaps, (seq, 2**63)) - 1
        first, last = self.gaps[i]
        pieces = [(a, b) for a, b in ((first, seq - 1), (seq + 1, last)) if a <= b]
        self.gaps[i : i + 1] = pieces

    def missing(self) -> int:
        """How many seqs the open gaps hold."""
        return sum(last - first + 1 for first, last in self.gaps)
