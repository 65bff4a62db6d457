"""A pure Coinbase-Exchange-like matching engine that publishes full-channel messages.

One :class:`MatchingEngine` per product. It does no I/O and keeps no clock of its own (the
clock is injected). Every call (:meth:`~MatchingEngine.place_limit`,
:meth:`~MatchingEngine.place_market`, :meth:`~MatchingEngine.cancel`,
:meth:`~MatchingEngine.modify`) returns the messages it published, in order; each message
takes the product's next ``sequence``. Prices and sizes are :class:`~decimal.Decimal` with
8 decimals and go out as strings such as ``"2602.22000000"``; times are ISO-8601 UTC with
microseconds and ``Z``.

Messages (the ``full`` channel; shapes of Coinbase Exchange, checked against the real
2017 messages in ``tests/data/coinbase`` and the Exchange changelog entries of 2022-JUN-27
and 2022-AUG-16 for ``change``)::

    {"type": "received", "order_id": ID, "order_type": "limit", "size": "1.00000000",
     "price": "2600.00000000", "side": "buy", "client_oid": ID,           # client_oid optional
     "product_id": "BTC-USD", "sequence": 11, "time": "2017-06-25T11:23:14.792000Z"}
    {"type": "received", "order_id": ID, "order_type": "market", "size": "0.50000000",
     "side": "sell", ...}                                                   # no price
    {"type": "open", "side": "buy", "price": "2600.00000000", "order_id": ID,
     "remaining_size": "1.00000000", ...}
    {"type": "match", "trade_id": 7, "maker_order_id": ID, "taker_order_id": ID,
     "side": "buy", "size": "0.40000000", "price": "2600.00000000", ...}     # side = maker's
    {"type": "done", "side": "buy", "order_id": ID, "reason": "filled",      # or "canceled"
     "price": "2600.00000000", "remaining_size": "0.00000000", ...}
    {"type": "done", "side": "sell", "order_id": ID, "reason": "filled", ...}
                                     # a market order's done has no price nor remaining_size
    {"type": "change", "reason": "STP", "order_id": ID, "side": "buy",
     "old_size": "1.00000000", "new_size": "0.60000000", "price": "2600.00000000", ...}
    {"type": "change", "reason": "modify_order", "order_id": ID, "side": "buy",
     "old_size": "1.00000000", "new_size": "2.00000000",
     "old_price": "2600.00000000", "new_price": "2599.00000000", ...}        # no "price"

``activate`` (stop orders) is never published: the engine has no stop orders.

Book rules a client must follow to rebuild the book exactly (what the tests check):

* ``open`` appends the order at the back of its price level.
* ``match`` takes ``size`` off the maker. By default a maker that reaches zero leaves the
  book at the ``match`` (the ``done`` with reason ``filled`` that follows at once changes
  nothing), so a book never holds an order of size zero. With ``zero_until_done=True`` the
  engine plays Coinbase's own rule out in full: an order leaves the book only with its
  ``done``; a maker matched down to zero stays in its place at size 0 (a REST book taken
  meanwhile lists it so) until :meth:`MatchingEngine.settle`, called before the next
  request (:class:`~ledger.testing.flow.RandomOrderFlow` does), publishes its ``done``. An
  iceberg with hidden size left is refreshed right after the match that emptied its shown
  slice: a ``change`` (``old_size`` 0, ``new_size`` the next slice) gives it size again,
  at the back of its level; its last slice, matched to 0, waits for its ``done`` too.
* ``done`` removes the order by ``order_id`` if it is on the book (the taker's ``done`` and
  a market order's ``done`` concern orders that never rested).
* ``change`` is ignored for an order not on the book (an STP ``change`` may concern the
  taker, which has only been ``received``). ``reason: "STP"`` sets the size in place
  (``new_size``), keeping the queue position. ``reason: "modify_order"`` sets price
  ``new_price`` and size ``new_size``; as Coinbase's changelog says, a modify that only
  lowers the size keeps its queue position; any other modify (new price, or a larger size)
  sends the order to the back of its (new) level.

Icebergs (``place_limit(..., peak=P)``, with ``zero_until_done`` only) show at most ``P``
(``open`` carries the shown size; ``received`` the whole size, which also matches as a
taker). When the shown slice is matched to zero, the next slice is shown at once (before
the taker goes on, which may take it too) with this message, which has the shape of
Coinbase's ``change`` before the 2022 ``reason`` field (Coinbase documents no iceberg
orders: the message is this engine's)::

    {"type": "change", "order_id": ID, "side": "sell", "old_size": "0.00000000",
     "new_size": "0.50000000", "price": "2601.00000000", ...}

A cancel (or an STP cancel) of an iceberg gives ``remaining_size`` shown plus hidden.
Matching skips orders at size 0 and levels holding nothing else; they are not a best
price either (:meth:`~MatchingEngine.best_bid`, the BBO history).

Self-trade prevention is Coinbase's default "decrement and cancel" (``dc``): when a taker
meets a maker with the same ``profile_id``, the smaller is canceled and the larger is
decremented by the smaller's size (both canceled when equal). The maker that stays gets a
``change`` (``reason: "STP"``); the taker that stays gets one too (Coinbase sends ``change``
for received-but-not-open orders as well); what is gone gets ``done`` with reason
``canceled`` and its ``remaining_size`` at that moment.

A modify whose new price would cross the opposite best price is rejected
(:class:`OrderRejectedError`); Coinbase would match it, a case the engine leaves out.
``size`` in :meth:`MatchingEngine.modify` is the new remaining size (FIX ``OrderQty``
counts the executed part too; the engine does not).

The compact ``level3`` channel (:data:`~ledger.testing.market.LEVEL3_SCHEMA`) carries the same sequence numbers as
arrays. The schema is the one Coinbase sends as the first message of that channel, as
quoted in public client code (a Rust client's test and a feed-handler reference, found
with the project's search tool; Coinbase's own page was not in the stored corpus)::

    {"type": "level3", "schema": {
        "open":   ["type", "product_id", "sequence", "order_id", "side", "price", "size", "time"],
        "change": ["type", "product_id", "sequence", "order_id", "price", "size", "time"],
        "match":  ["type", "product_id", "sequence", "maker_order_id", "taker_order_id",
                   "price", "size", "time"],
        "done":   ["type", "product_id", "sequence", "order_id", "time"],
        "noop":   ["type", "product_id", "sequence", "time"]}}

``open`` carries the remaining size, ``change`` the new price and new size. A message that
cannot change a book (``received``, and a ``change`` or ``done`` of an order that never
rested) goes out as ``noop`` so that the sequence stays contiguous: that mapping is this
engine's reading of the schema, not a documented rule.

    >>> from ledger.testing.market import fixed_clock
    >>> engine = MatchingEngine("BTC-USD", start_sequence=100, seed=1, clock=fixed_clock())
    >>> [m["type"] for m in engine.place_limit("buy", "2600", "1")]
    ['received', 'open']
    >>> [m["type"] for m in engine.place_limit("sell", "2599.5", "0.4", profile_id="b")]
    ['received', 'match', 'done']
    >>> engine.book_level3()["bids"][0][:2]
    ['2600.00000000', '0.60000000']
"""

from __future__ import annotations

import operator
import random
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import TypeAlias

from sortedcontainers import SortedDict

from ledger.testing.market import (
    _ZERO,
    Bbo,
    BookEntry,
    BookView,
    Level3Message,
    Level3Snapshot,
    Message,
    OrderRejectedError,
    RestingOrder,
    Side,
    SnapshotUnavailableError,
    UnknownOrderError,
    _amount,
    _side,
    _utc_now,
    format_amount,
    format_time,
)

__all__ = ["MatchingEngine"]


class _Level:
    __slots__ = ("orders", "total")

    def __init__(self) -> None:
        self.orders: dict[str, None] = {}  # insertion order = queue order
        self.total = _ZERO


#: How one book mutation is undone: the order id and what the book held for it before.
_Change: TypeAlias = tuple[str, RestingOrder | None]


@dataclass(frozen=True, slots=True)
class _Entry:
    message: Message
    level3: Level3Message
    changes: tuple[_Change, ...]
    bbo: Bbo


@dataclass(slots=True)
class _Taker:
    order_id: str
    side: Side
    limit: Decimal | None  # None for a market order
    remaining: Decimal
    profile_id: str
    done: bool = False


class MatchingEngine:
    """Price-time priority matching for one product, publishing Coinbase full-channel messages.

    ``start_sequence`` is the sequence of the first message; ``history`` is how many
    messages back :meth:`book_level3` can still serve a past book (and how many messages
    :meth:`messages` and :meth:`bbo_history` keep). ``seed`` makes order ids repeatable.
    ``zero_until_done`` keeps orders matched to zero on the book until their ``done`` (see
    the module's text); off, the engine publishes exactly what it always did.
    """

    def __init__(
        self,
        product_id: str,
        *,
        start_sequence: int = 1,
        first_trade_id: int = 1,
        seed: int | str | None = None,
        clock: Callable[[], datetime] = _utc_now,
        history: int = 100_000,
        zero_until_done: bool = False,
    ) -> None:
        if history < 1:
            raise ValueError(f"history must be at least 1, not {history}")
        self.product_id = product_id
        #: Coinbase's removal rule in full: an order matched to 0 rests at 0 until its done.
        self.zero_until_done = zero_until_done
        self._hidden: dict[str, tuple[Decimal, Decimal]] = {}  # iceberg id -> (peak, hidden size left)
        self._zeroed: list[str] = []  # orders matched to 0, waiting for their done or refresh
        self._sequence = start_sequence - 1
        self._trade_id = first_trade_id - 1
        self._rng = random.Random(seed)
        self._clock = clock
        self._last_time: datetime | None = None
        self._priority = 0
        self._orders: dict[str, RestingOrder] = {}
        self._bids: SortedDict = SortedDict(operator.neg)  # price -> _Level, best first
        self._asks: SortedDict = SortedDict()
        self._log: deque[_Entry] = deque(maxlen=history)

    # -- reading ---------------------------------------------------------------------------

    @property
    def sequence(self) -> int:
        """The sequence of the last message published (``start_sequence - 1`` before any)."""
        return self._sequence

    @property
    def last_trade_id(self) -> int:
        return self._trade_id

    @property
    def oldest_sequence(self) -> int:
        """The oldest sequence :meth:`book_level3` can serve."""
        return self._sequence - len(self._log)

    def order(self, order_id: str) -> RestingOrder | None:
        return self._orders.get(order_id)

    def resting_order_ids(self) -> list[str]:
        """Orders a request may cancel or modify: those resting with a size (not at 0,
        waiting for their done or refresh)."""
        return [order_id for order_id, order in self._orders.items() if order.size]

    @property
    def pending(self) -> list[str]:
        """Orders matched to 0 whose done :meth:`settle` will publish."""
        return list(self._zeroed)

    def best_bid(self) -> tuple[Decimal, Decimal] | None:
        """The best bid price and the total size resting at it (a level holding only
        orders at size 0 is not one)."""
        return self._best(self._bids)

    def best_ask(self) -> tuple[Decimal, Decimal] | None:
        return self._best(self._asks)

    def book(self) -> BookView:
        def entries(levels: SortedDict) -> tuple[BookEntry, ...]:
            return tuple(
                BookEntry(price, self._orders[oid].size, oid) for price, level in levels.items() for oid in level.orders
            )

        return BookView(self._sequence, entries(self._bids), entries(self._asks))

    def book_level3(self, at_sequence: int | None = None) -> Level3Snapshot:
        """The REST level-3 book: ``{"sequence", "bids", "asks"}`` of ``[price, size, order_id]``.

        With ``at_sequence``, the book as it was right after that message (kept for
        ``history`` messages).
        """
        if at_sequence is None or at_sequence == self._sequence:
            view = self.book()
            return {
                "sequence": view.sequence,
                "bids": [[format_amount(e.price), format_amount(e.size), e.order_id] for e in view.bids],
                "asks": [[format_amount(e.price), format_amount(e.size), e.order_id] for e in view.asks],
            }
        if not self.oldest_sequence <= at_sequence <= self._sequence:
            raise SnapshotUnavailableError(
                f"{self.product_id}: book at sequence {at_sequence} unavailable; "
                f"kept {self.oldest_sequence}..{self._sequence}"
            )
        state = dict(self._orders)
        for entry in reversed(self._log):
            if entry.message["sequence"] == at_sequence:
                break
            for order_id, before in reversed(entry.changes):
                if before is None:
                    state.pop(order_id, None)
                else:
                    state[order_id] = before
        bids = sorted((o for o in state.values() if o.side == "buy"), key=lambda o: (-o.price, o.priority))
        asks = sorted((o for o in state.values() if o.side == "sell"), key=lambda o: (o.price, o.priority))
        return {
            "sequence": at_sequence,
            "bids": [[format_amount(o.price), format_amount(o.size), o.order_id] for o in bids],
            "asks": [[format_amount(o.price), format_amount(o.size), o.order_id] for o in asks],
        }

    def messages(self) -> list[Message]:
        """Every full-channel message still in the history, in sequence order."""
        return [entry.message for entry in self._log]

    def level3_message(self, sequence: int) -> Level3Message:
        """The compact ``level3`` form of the message ``sequence``."""
        index = sequence - self.oldest_sequence - 1
        if not 0 <= index < len(self._log):
            raise SnapshotUnavailableError(f"{self.product_id}: message {sequence} is not in the history")
        return self._log[index].level3

    def bbo_history(self) -> list[Bbo]:
        """The best bid/ask after every message still in the history."""
        return [entry.bbo for entry in self._log]

    # -- orders ----------------------------------------------------------------------------

    def place_limit(
        self,
        side: str,
        price: Decimal | str | int,
        size: Decimal | str | int,
        *,
        profile_id: str = "default",
        client_oid: str | None = None,
        peak: Decimal | str | int | None = None,
    ) -> list[Message]:
        """A limit order: ``received``, then matches, then ``open`` for what rests or ``done``.
        With ``peak``, an iceberg that shows at most that much (``zero_until_done`` only)."""
        shown = None if peak is None else _amount(peak, "peak")
        if shown is not None and not self.zero_until_done:
            raise OrderRejectedError(f"{self.product_id}: iceberg orders need zero_until_done=True")
        taker = _Taker(self._new_id(), _side(side), _amount(price, "price"), _amount(size, "size"), profile_id)
        assert taker.limit is not None
        out: list[Message] = []
        received: dict[str, str | int] = {
            "order_id": taker.order_id,
            "order_type": "limit",
            "size": format_amount(taker.remaining),
            "price": format_amount(taker.limit),
            "side": taker.side,
        }
        if client_oid is not None:
            received["client_oid"] = client_oid
        self._publish(out, "received", received, visible=False)
        self._match(out, taker)
        if taker.done:
            return out
        if taker.remaining > 0:
            self._priority += 1
            rests = taker.remaining if shown is None else min(shown, taker.remaining)
            if shown is not None and rests < taker.remaining:
                self._hidden[taker.order_id] = (shown, taker.remaining - rests)
            resting = RestingOrder(taker.order_id, taker.side, taker.limit, rests, self._priority, profile_id)
            change = self._insert(resting)
            self._publish(
                out,
                "open",
                {
                    "side": taker.side,
                    "price": format_amount(taker.limit),
                    "order_id": taker.order_id,
                    "remaining_size": format_amount(rests),
                },
                [change],
                visible=True,
            )
        else:
            self._publish(out, "done", self._done_fields(taker.order_id, taker.side, "filled", taker.limit, _ZERO))
        return out

    def place_market(
        self, side: str, size: Decimal | str | int, *, profile_id: str = "default", client_oid: str | None = None
    ) -> list[Message]:
        """A market order by size: ``received``, matches, ``done`` (``canceled`` if the book ran out)."""
        taker = _Taker(self._new_id(), _side(side), None, _amount(size, "size"), profile_id)
        out: list[Message] = []
        received: dict[str, str | int] = {
            "order_id": taker.order_id,
            "order_type": "market",
            "size": format_amount(taker.remaining),
            "side": taker.side,
        }
        if client_oid is not None:
            received["client_oid"] = client_oid
        self._publish(out, "received", received, visible=False)
        self._match(out, taker)
        if not taker.done:
            reason = "filled" if taker.remaining == 0 else "canceled"
            self._publish(out, "done", {"side": taker.side, "order_id": taker.order_id, "reason": reason})
        return out

    def cancel(self, order_id: str) -> list[Message]:
        """Cancel a resting order: one ``done`` with reason ``canceled``."""
        order = self._resting(order_id)
        out: list[Message] = []
        change = self._remove(order_id)
        left = order.size + self._drop_hidden(order_id)  # an iceberg's hidden size is canceled too
        fields = self._done_fields(order_id, order.side, "canceled", order.price, left)
        self._publish(out, "done", fields, [change], visible=True)
        return out

    def settle(self) -> list[Message]:
        """Publish the ``done`` (``filled``) of every order matched to 0 and still waiting
        for it, oldest first; each leaves the book. Nothing to do (an empty list) unless
        ``zero_until_done``."""
        out: list[Message] = []
        waiting, self._zeroed = self._zeroed, []
        for order_id in waiting:
            order = self._orders.get(order_id)
            if order is None or order.size:
                continue  # gone, or given size again meanwhile
            change = self._remove(order_id)
            done = self._done_fields(order_id, order.side, "filled", order.price, _ZERO)
            self._publish(out, "done", done, [change], visible=True)
        return out

    def modify(
        self, order_id: str, *, price: Decimal | str | int | None = None, size: Decimal | str | int | None = None
    ) -> list[Message]:
        """Change a resting order's price and/or remaining size: one ``change`` (``modify_order``)."""
        order = self._resting(order_id)
        new_price = order.price if price is None else _amount(price, "price")
        new_size = order.size if size is None else _amount(size, "size")
        if new_price == order.price and new_size == order.size:
            raise OrderRejectedError(f"{self.product_id}: modify of {order_id} changes nothing")
        opposite = self.best_ask() if order.side == "buy" else self.best_bid()
        if opposite is not None and (new_price >= opposite[0] if order.side == "buy" else new_price <= opposite[0]):
            raise OrderRejectedError(
                f"{self.product_id}: modify of {order_id} to {new_price} would cross the best "
                f"{'ask' if order.side == 'buy' else 'bid'} {opposite[0]}"
            )
        if new_price == order.price and new_size < order.size:
            changes = [self._resize(order_id, new_size)]  # a size cut keeps its place in the queue
        else:
            self._priority += 1
            changes = [
                self._remove(order_id),
                self._insert(replace(order, price=new_price, size=new_size, priority=self._priority)),
            ]
        out: list[Message] = []
        self._publish(
            out,
            "change",
            {
                "reason": "modify_order",
                "order_id": order_id,
                "side": order.side,
                "old_size": format_amount(order.size),
                "new_size": format_amount(new_size),
                "old_price": format_amount(order.price),
                "new_price": format_amount(new_price),
            },
            changes,
            visible=True,
        )
        return out

    # -- matching --------------------------------------------------------------------------

    def _match(self, out: list[Message], taker: _Taker) -> None:
        levels = self._asks if taker.side == "buy" else self._bids
        while taker.remaining > 0 and not taker.done:
            best = self._live_level(levels)
            if best is None:
                return
            price, level = best
            if taker.limit is not None and (price > taker.limit if taker.side == "buy" else price < taker.limit):
                return
            maker = next(o for o in map(self._orders.__getitem__, level.orders) if o.size)  # orders at 0 hold nothing
            if maker.profile_id == taker.profile_id:
                self._prevent_self_trade(out, taker, maker)
                continue
            size = min(taker.remaining, maker.size)
            filled = size == maker.size
            if filled and self.zero_until_done:
                # Rule (Coinbase): a match never removes an order, only its done does; the
                # maker rests at size 0 (refreshed at once if it is an iceberg with hidden
                # size left, else until settle() publishes its done).
                change = self._resize(maker.order_id, _ZERO)
            elif filled:
                change = self._remove(maker.order_id)
            else:
                change = self._resize(maker.order_id, maker.size - size)
            self._trade_id += 1
            self._publish(
                out,
                "match",
                {
                    "trade_id": self._trade_id,
                    "maker_order_id": maker.order_id,
                    "taker_order_id": taker.order_id,
                    "side": maker.side,
                    "size": format_amount(size),
                    "price": format_amount(maker.price),
                },
                [change],
                visible=True,
            )
            taker.remaining -= size
            if filled and self.zero_until_done:
                if maker.order_id in self._hidden:
                    self._refresh(out, maker.order_id)
                else:
                    self._zeroed.append(maker.order_id)
            elif filled:
                fields = self._done_fields(maker.order_id, maker.side, "filled", maker.price, _ZERO)
                self._publish(out, "done", fields, visible=True)

    def _refresh(self, out: list[Message], order_id: str) -> None:
        """An iceberg whose shown slice was matched to 0 shows its next slice: a ``change``
        from size 0, at the back of its level. Rule (Coinbase): a change may give an order
        matched to 0 size again (only a done removes it); a larger size loses the order its
        place in the queue."""
        order = self._orders[order_id]
        peak, hidden = self._hidden[order_id]
        refill = min(peak, hidden)
        if refill < hidden:
            self._hidden[order_id] = (peak, hidden - refill)
        else:
            del self._hidden[order_id]  # the last slice: matched to 0, it waits for its done
        self._priority += 1
        changes = [self._remove(order_id), self._insert(replace(order, size=refill, priority=self._priority))]
        fields: dict[str, str | int] = {
            "order_id": order_id,
            "side": order.side,
            "old_size": format_amount(_ZERO),
            "new_size": format_amount(refill),
            "price": format_amount(order.price),
        }
        self._publish(out, "change", fields, changes, visible=True)

    def _prevent_self_trade(self, out: list[Message], taker: _Taker, maker: RestingOrder) -> None:
        """Decrement and cancel: cancel the smaller, decrement the larger by the smaller's size."""
        if taker.remaining >= maker.size:
            change = self._remove(maker.order_id)
            left = maker.size + self._drop_hidden(maker.order_id)
            fields = self._done_fields(maker.order_id, maker.side, "canceled", maker.price, left)
            self._publish(out, "done", fields, [change], visible=True)
            if taker.remaining == maker.size:
                self._cancel_taker(out, taker)
            else:
                stp: dict[str, str | int] = {
                    "reason": "STP",
                    "order_id": taker.order_id,
                    "side": taker.side,
                    "old_size": format_amount(taker.remaining),
                    "new_size": format_amount(taker.remaining - maker.size),
                }
                if taker.limit is not None:
                    stp["price"] = format_amount(taker.limit)
                taker.remaining -= maker.size
                self._publish(out, "change", stp)
        else:
            change = self._resize(maker.order_id, maker.size - taker.remaining)
            self._publish(
                out,
                "change",
                {
                    "reason": "STP",
                    "order_id": maker.order_id,
                    "side": maker.side,
                    "old_size": format_amount(maker.size),
                    "new_size": format_amount(maker.size - taker.remaining),
                    "price": format_amount(maker.price),
                },
                [change],
                visible=True,
            )
            self._cancel_taker(out, taker)

    def _cancel_taker(self, out: list[Message], taker: _Taker) -> None:
        if taker.limit is None:
            fields: dict[str, str | int] = {"side": taker.side, "order_id": taker.order_id, "reason": "canceled"}
        else:
            fields = self._done_fields(taker.order_id, taker.side, "canceled", taker.limit, taker.remaining)
        taker.done = True
        self._publish(out, "done", fields)

    # -- book mutations (each returns how to undo it) --------------------------------------

    def _insert(self, order: RestingOrder) -> _Change:
        levels = self._bids if order.side == "buy" else self._asks
        level = levels.get(order.price)
        if level is None:
            level = levels[order.price] = _Level()
        level.orders[order.order_id] = None
        level.total += order.size
        self._orders[order.order_id] = order
        return (order.order_id, None)

    def _remove(self, order_id: str) -> _Change:
        order = self._orders.pop(order_id)
        levels = self._bids if order.side == "buy" else self._asks
        level = levels[order.price]
        del level.orders[order_id]
        level.total -= order.size
        if not level.orders:
            del levels[order.price]
        return (order_id, order)

    def _resize(self, order_id: str, size: Decimal) -> _Change:
        order = self._orders[order_id]
        levels = self._bids if order.side == "buy" else self._asks
        levels[order.price].total += size - order.size
        self._orders[order_id] = replace(order, size=size)
        return (order_id, order)

    # -- helpers ---------------------------------------------------------------------------

    def _resting(self, order_id: str) -> RestingOrder:
        order = self._orders.get(order_id)
        if order is None:
            raise UnknownOrderError(f"{self.product_id}: no resting order {order_id!r}")
        if not order.size:
            raise OrderRejectedError(f"{self.product_id}: order {order_id} is filled; its done is pending (settle())")
        return order

    def _drop_hidden(self, order_id: str) -> Decimal:
        """Forget an iceberg's hidden size (it is canceled); how much there was."""
        return self._hidden.pop(order_id, (_ZERO, _ZERO))[1]

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    @staticmethod
    def _live_level(levels: SortedDict) -> tuple[Decimal, _Level] | None:
        """The best level holding some size (one holding only orders at 0 is skipped)."""
        for price, level in levels.items():
            if level.total:
                return price, level
        return None

    @classmethod
    def _best(cls, levels: SortedDict) -> tuple[Decimal, Decimal] | None:
        best = cls._live_level(levels)
        return None if best is None else (best[0], best[1].total)

    @staticmethod
    def _done_fields(
        order_id: str, side: Side, reason: str, price: Decimal, remaining: Decimal
    ) -> dict[str, str | int]:
        return {
            "side": side,
            "order_id": order_id,
            "reason": reason,
            "price": format_amount(price),
            "remaining_size": format_amount(remaining),
        }

    def _now(self) -> datetime:
        now = self._clock()
        if self._last_time is not None and now < self._last_time:
            now = self._last_time  # times never go backwards within a product
        self._last_time = now
        return now

    def _publish(
        self,
        out: list[Message],
        kind: str,
        fields: dict[str, str | int],
        changes: Sequence[_Change] = (),
        *,
        visible: bool = False,
    ) -> None:
        """Give the message its sequence and time, log it with its undo and BBO, add it to ``out``.

        ``visible`` says whether the message concerns an order on (or just taken off) the
        book; the others go out on the ``level3`` channel as ``noop``.
        """
        self._sequence += 1
        message: Message = {"type": kind, **fields, "product_id": self.product_id, "sequence": self._sequence}
        message["time"] = format_time(self._now())
        bid, ask = self.best_bid(), self.best_ask()
        bbo = Bbo(
            self._sequence,
            bid[0] if bid else None,
            bid[1] if bid else None,
            ask[0] if ask else None,
            ask[1] if ask else None,
        )
        self._log.append(_Entry(message, _level3(message, visible), tuple(changes), bbo))
        out.append(message)


def _level3(message: Message, visible: bool) -> Level3Message:
    kind = str(message["type"])
    head: Level3Message = [kind, message["product_id"], message["sequence"]]
    time = message["time"]
    if not visible or kind == "received":
        return ["noop", message["product_id"], message["sequence"], time]
    if kind == "open":
        return [*head, message["order_id"], message["side"], message["price"], message["remaining_size"], time]
    if kind == "change":
        price = message["new_price"] if "new_price" in message else message["price"]
        return [*head, message["order_id"], price, message["new_size"], time]
    if kind == "match":
        return [*head, message["maker_order_id"], message["taker_order_id"], message["price"], message["size"], time]
    if kind == "done":
        return [*head, message["order_id"], time]
    raise ValueError(f"no level3 form for a {kind!r} message")
