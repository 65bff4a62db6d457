"""Exponential backoff with jitter: the delays between attempts, for whoever waits them.

:class:`Backoff` says how the delays grow; :meth:`Backoff.delays` gives them one at a time
and ends when the next one would leave its window, so a caller's retry loop reads::

    delays = Backoff(first=0.1, cap=5.0, jitter=(0.75, 1.25), window=300.0).delays()
    while True:
        try:
            return attempt()
        except Retryable:
            delay = next(delays, None)
            if delay is None:
                raise                     # the window is spent: give up
            stop.wait(delay)

Nothing here sleeps: the caller waits each delay its own way (an event's ``wait``,
``asyncio.sleep``), so a stop request cuts it short. The random draws and the clock are
parameters, so tests give a seeded ``random.Random`` and a clock of their own.

Delay ``n`` (from 0) is ``min(cap, first * factor**n)``, times a jitter drawn uniformly
from ``[low, high)`` (none drawn when ``low == high``). With ``compound``, the jitter of a
delay carries into the next: delay 0 is ``first`` as it is, and delay ``n`` is
``min(cap, factor * delay n-1) * jitter``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """How delays between attempts grow (see the module's text).

    ``window`` bounds the time the delays may take, counted from the call to
    :meth:`delays`: no delay is given that would end after it, or, with ``overrun``, none
    once it has passed (the last one may then end after it). None: no bound."""

    first: float
    cap: float
    factor: float = 2.0
    jitter: tuple[float, float] = (1.0, 1.0)
    compound: bool = False
    window: float | None = None
    overrun: bool = False

    def delay(self, n: int, rng: random.Random | None = None) -> float:
        """Delay ``n`` (from 0) without compounding: ``min(cap, first * factor**n)``, jittered."""
        try:
            grown = self.first * self.factor**n
        except OverflowError:  # far past the cap (after a thousand attempts or so)
            grown = self.cap
        return min(self.cap, grown) * self._jitter(rng)

    def delays(
        self, rng: random.Random | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> Iterator[float]:
        """The delays, one per failed attempt, until the window is spent (never, without
        one). The window starts now, not at the first ``next``."""
        started = clock()
        return self._delays(rng, clock, started)

    def _delays(self, rng: random.Random | None, clock: Callable[[], float], started: float) -> Iterator[float]:
        n = 0
        last = self.first
        while True:
            if self.compound:
                delay = self.first if n == 0 else min(self.cap, self.factor * last) * self._jitter(rng)
            else:
                delay = self.delay(n, rng)
            if self.window is not None:
                spent = clock() - started
                if spent > self.window if self.overrun else spent + delay > self.window:
                    return
            yield delay
            last = delay
            n += 1

    def _jitter(self, rng: random.Random | None) -> float:
        low, high = self.jitter
        if low == high:
            return low
        draw = (rng or random).random()
        return low + (high - low) * draw
