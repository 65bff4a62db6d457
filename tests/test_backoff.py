"""The backoff helper (ledger._backoff): delays, jitter, cap and window, with a seeded random
generator and a clock of the test's own, and the schedules of its callers as they were."""

from __future__ import annotations

import random
from itertools import islice

import pytest

from ledger._backoff import Backoff


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_up_to_the_cap_without_jitter() -> None:
    assert list(islice(Backoff(first=0.5, cap=10.0).delays(), 8)) == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert [Backoff(first=1.0, cap=8.0, factor=3.0).delay(n) for n in range(4)] == [1.0, 3.0, 8.0, 8.0]
    assert Backoff(first=1.0, cap=30.0).delay(5000) == 30.0  # far past the cap, no overflow


def test_jitter_multiplies_each_delay_by_a_draw_in_its_range() -> None:
    backoff = Backoff(first=1.0, cap=8.0, jitter=(0.5, 1.0))
    rng = random.Random(7)
    for n, delay in enumerate(islice(backoff.delays(rng), 200)):
        base = min(8.0, 2.0**n)
        assert 0.5 * base <= delay < base
    same = [Backoff(first=1.0, cap=8.0, jitter=(0.5, 1.0)).delay(n, random.Random(3)) for n in range(5)]
    assert same == [Backoff(first=1.0, cap=8.0, jitter=(0.5, 1.0)).delay(n, random.Random(3)) for n in range(5)]


def test_no_jitter_draws_nothing() -> None:
    rng = random.Random(1)
    state = rng.getstate()
    list(islice(Backoff(first=1.0, cap=4.0).delays(rng), 10))
    assert rng.getstate() == state


def test_compound_jitter_carries_into_the_next_delay() -> None:
    rng, check = random.Random(5), random.Random(5)
    got = list(islice(Backoff(first=0.1, cap=5.0, jitter=(0.75, 1.25), compound=True).delays(rng), 12))
    expected, delay = [], 0.1
    for _ in range(12):
        expected.append(delay)
        delay = min(5.0, delay * 2) * (0.75 + check.random() / 2)
    assert got == expected
    assert got[0] == 0.1 and max(got) <= 5.0 * 1.25


def test_a_window_ends_the_delays_before_one_would_end_after_it() -> None:
    clock = _Clock()
    delays = Backoff(first=1.0, cap=4.0, window=10.0).delays(clock=clock)
    clock.now += 50  # the window starts when delays() is called, not at the first next()
    assert next(delays, None) is None
    delays = Backoff(first=1.0, cap=4.0, window=10.0).delays(clock=clock)
    waited = []
    for delay in delays:
        waited.append(delay)
        clock.now += delay + 0.1  # the wait, and an attempt that takes a little
    assert waited == [1.0, 2.0, 4.0]  # another 4 would end at 11.3 > 10
    assert sum(waited) + 0.3 <= 10.0


def test_with_overrun_the_last_delay_may_end_after_the_window() -> None:
    clock = _Clock()
    delays = Backoff(first=1.0, cap=4.0, window=5.0, overrun=True).delays(clock=clock)
    waited = []
    for delay in delays:
        waited.append(delay)
        clock.now += delay
    assert waited == [1.0, 2.0, 4.0]  # asked for at 0, 1 and 3 seconds; at 7 the window had passed


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_schedules_of_its_callers_are_those_they_had(seed: int) -> None:
    # The capture's reconnects: min(cap, base * 2**attempt) * (0.5 + random / 2).
    rng, check = random.Random(seed), random.Random(seed)
    got = list(islice(Backoff(first=0.5, cap=30.0, jitter=(0.5, 1.0)).delays(rng), 12))
    assert got == [min(30.0, 0.5 * 2**a) * (0.5 + check.random() / 2) for a in range(12)]
    # Its REST retries: before attempt k (from 1), min(5, 0.2 * 2**k) * (0.5 + random / 2).
    rng, check = random.Random(seed), random.Random(seed)
    got = list(islice(Backoff(first=0.4, cap=5.0, jitter=(0.5, 1.0)).delays(rng), 6))
    assert got == [min(5.0, 0.2 * 2**k) * (0.5 + check.random() / 2) for k in range(1, 7)]
    # A product's REST books: n fetches in the window, min(cap, base * 2**(n-1)) * jitter.
    rng, check = random.Random(seed), random.Random(seed)
    got = [Backoff(first=0.25, cap=30.0, jitter=(0.5, 1.0)).delay(n, rng) for n in range(10)]
    assert got == [min(30.0, 0.25 * 2**n) * (0.5 + check.random() / 2) for n in range(10)]
