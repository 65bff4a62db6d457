"""Seeded random order flow for a :class:`~ledger.testing.matching.MatchingEngine`, the traffic
the local exchange and the tests feed it."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Final

from ledger.testing.market import _QUANTUM, Message
from ledger.testing.matching import MatchingEngine

__all__ = ["RandomOrderFlow"]


class RandomOrderFlow:
    """Seeded random order flow for one engine: limit, market, cancel, modify and STP orders.

    Prices walk around ``mid`` in steps of ``tick``; a few sizes repeat on purpose so that
    exact fills and equal-size self-trades happen. Each :meth:`step` returns the messages
    the engine published for one request, after those of :meth:`MatchingEngine.settle`
    (the done of orders the previous request matched to 0, with an engine that keeps
    them until then). ``icebergs`` is the share of limit orders placed as icebergs
    (with such an engine only); at 0 the flow draws exactly the numbers it always did, so
    a seed gives the same orders as before icebergs existed.
    """

    _ROUND_SIZES: Final = (Decimal("0.1"), Decimal("0.5"), Decimal("1"), Decimal("2"))

    def __init__(
        self,
        engine: MatchingEngine,
        rng: random.Random,
        *,
        mid: Decimal = Decimal("2600.00"),
        tick: Decimal = Decimal("0.01"),
        profiles: Sequence[str] = ("alice", "bob", "carol", "dave"),
        icebergs: float = 0.0,
    ) -> None:
        if not 0.0 <= icebergs <= 1.0:
            raise ValueError(f"icebergs is a share in [0, 1], not {icebergs!r}")
        if icebergs and not engine.zero_until_done:
            raise ValueError("icebergs need an engine with zero_until_done=True")
        self.engine = engine
        self._icebergs = icebergs
        self._rng = rng
        self._mid = mid
        self._tick = tick
        self._profiles = tuple(profiles)

    def steps(self, n: int) -> Iterator[list[Message]]:
        for _ in range(n):
            yield self.step()

    def step(self) -> list[Message]:
        settled = self.engine.settle()  # orders matched to 0 by the last request: their done
        return settled + self._request() if settled else self._request()

    def _request(self) -> list[Message]:
        rng = self._rng
        self._mid = max(self._tick * 100, self._mid + self._tick * rng.randint(-1, 1))
        resting = self.engine.resting_order_ids()
        roll = rng.random()
        if roll < 0.50 or len(resting) < 4:
            return self._limit()
        if roll < 0.57:
            side = rng.choice(("buy", "sell"))
            return self.engine.place_market(side, self._size(), profile_id=rng.choice(self._profiles))
        if roll < 0.72:
            return self.engine.cancel(rng.choice(resting))
        if roll < 0.88:
            return self._modify(rng.choice(resting))
        return self._self_cross()

    def _size(self) -> Decimal:
        if self._rng.random() < 0.3:
            return self._rng.choice(self._ROUND_SIZES)
        return Decimal(self._rng.randint(1, 300_000_000)) * _QUANTUM

    def _limit(self) -> list[Message]:
        rng = self._rng
        side = rng.choice(("buy", "sell"))
        offset = self._tick * rng.randint(-4, 25)
        price = self._mid - offset if side == "buy" else self._mid + offset
        client_oid = str(uuid.UUID(int=rng.getrandbits(128), version=4)) if rng.random() < 0.5 else None
        profile = rng.choice(self._profiles)
        size = self._size()
        peak = None
        if self._icebergs and rng.random() < self._icebergs:  # no draw at all without icebergs
            size += rng.choice(self._ROUND_SIZES)  # enough to show a few slices
            peak = max(_QUANTUM, (size / rng.randint(2, 5)).quantize(_QUANTUM))
        return self.engine.place_limit(side, price, size, profile_id=profile, client_oid=client_oid, peak=peak)

    def _modify(self, order_id: str) -> list[Message]:
        rng = self._rng
        order = self.engine.order(order_id)
        assert order is not None
        kind = rng.choice(("price", "down", "up", "both"))
        price = order.price
        size = order.size
        if kind in ("price", "both"):
            price = max(self._tick, order.price + self._tick * rng.choice((-5, -3, -2, -1, 1, 2, 3, 5)))
        if kind == "down" or (kind == "both" and rng.random() < 0.5):
            size = max(_QUANTUM, (order.size * Decimal(rng.randint(1, 99)) / 100).quantize(_QUANTUM))
        elif kind in ("up", "both"):
            size = order.size + self._size()
        opposite = self.engine.best_ask() if order.side == "buy" else self.engine.best_bid()
        if opposite is not None and (price >= opposite[0] if order.side == "buy" else price <= opposite[0]):
            price = order.price
        if price == order.price and size == order.size:
            size = order.size + _QUANTUM
        return self.engine.modify(order_id, price=price, size=size)

    def _self_cross(self) -> list[Message]:
        """An order that crosses the best opposite order with that order's own profile."""
        rng = self._rng
        side = rng.choice(("buy", "sell"))
        best = self.engine.best_ask() if side == "buy" else self.engine.best_bid()
        if best is None:
            return self._limit()
        book = self.engine.book()
        maker = (book.asks if side == "buy" else book.bids)[0]
        resting = self.engine.order(maker.order_id)
        assert resting is not None
        size = rng.choice((maker.size, self._size(), maker.size / 2 if maker.size > _QUANTUM else maker.size))
        size = max(_QUANTUM, size.quantize(_QUANTUM))
        if rng.random() < 0.25:
            return self.engine.place_market(side, size, profile_id=resting.profile_id)
        return self.engine.place_limit(side, best[0], size, profile_id=resting.profile_id)
