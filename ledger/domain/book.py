"""One L3 order book: resting orders by (side, id) and a sorted map of price levels per side.

The book is pure: no I/O, no clocks. The projector (:mod:`ledger.domain.projector`) maps
each event of :mod:`ledger.domain.events` to one of its operations. It keeps, per
side, a :class:`sortedcontainers.SortedDict` of price -> :class:`Level` (total size, and the
level's orders in queue order), so the best bid/ask and the top N levels are cheap after
every event.

An order may rest at size 0: Coinbase takes an order off the book only with its ``done``,
so a ``match`` that fills it leaves it resting at 0 (a ``change`` may give it size again,
as an iceberg's refresh does, and a REST book may list it). Such an order is in
:attr:`Book.bid_orders` or :attr:`Book.ask_orders` and in :meth:`Book.iter_orders` (so
``ledger book --orders`` and the book snapshots keep it), but a level whose total is 0 is
not a level anyone trades against: it is kept out of the sorted maps (in
:attr:`Book.idle_bids` / :attr:`Book.idle_asks`), so it is never a best level, never in
:meth:`Book.levels` and never makes an L1 row. Whether a fill or a size change to 0
removes the order is the venue's rule, given by the caller (``keep_at_zero``): the L3 CSV
format removes it.

Operations the book cannot carry out (an unknown order, a trade larger than the order, an
add of an id already resting) do not raise: they are counted in :attr:`Book.anomalies` and
applied as sensibly as possible, so that a projector can report them and decide, with an
error threshold, when a stream has gone too wrong to go on.

    >>> book = Book()
    >>> book.add(BUY, "a", 228, 50)
    >>> book.add(SELL, "b", Decimal("230.2"), 300)
    >>> book.top()
    Top(bid_price=228, bid_size=50, ask_price=Decimal('230.2'), ask_size=300)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from sortedcontainers import SortedDict

from ledger.domain.events import BUY, SELL, Number, Side

__all__ = [
    "ANOMALY_KINDS",
    "Book",
    "Level",
    "LevelView",
    "Order",
    "Top",
]

#: Every anomaly kind a book can count, in a stable order for reports.
ANOMALY_KINDS = (
    "add_existing_order",
    "update_unknown_order",
    "delete_unknown_order",
    "trade_unknown_order",
    "trade_exceeds_order",
    "crossed_book",
    "reduce_unknown_order",
    "reduce_exceeds_order",
    "replace_unknown_order",
)


_new_order = object.__new__


class Order:
    """A resting order. Mutable on purpose: the book owns it and updates it in place."""

    __slots__ = ("level", "order_id", "price", "side", "size")

    #: The level the order rests in: set by the book that holds it, before anything reads it.
    level: Level

    def __init__(self, order_id: str, side: Side, price: Number, size: Number) -> None:
        self.order_id = order_id
        self.side = side
        self.price = price
        self.size = size

    def __repr__(self) -> str:
        return f"Order({self.order_id!r}, {self.side!r}, {self.price!r}, {self.size!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Order):
            return NotImplemented
        return (self.order_id, self.side, self.price, self.size) == (
            other.order_id,
            other.side,
            other.price,
            other.size,
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(slots=True)
class Level:
    """One price level: its total size and its orders in queue (time priority) order.

    ``idle`` is True while the level's total is 0 (every order in it rests at size 0): it is
    then kept out of the side's sorted map, see the module docstring."""

    total: Number = 0
    orders: dict[str, Order] = field(default_factory=dict)
    idle: bool = False


class Top(NamedTuple):
    """Best bid and ask with the total size resting at each."""

    bid_price: Number
    bid_size: Number
    ask_price: Number
    ask_size: Number


class LevelView(NamedTuple):
    """A price level as shown to users: price, total size and number of orders."""

    price: Number
    size: Number
    orders: int


class Book:
    """An L3 book. See the module docstring."""

    __slots__ = (
        "anomalies",
        "ask_orders",
        "asks",
        "best_ask",
        "best_ask_level",
        "best_bid",
        "best_bid_level",
        "bid_orders",
        "bids",
        "idle_asks",
        "idle_bids",
    )

    def __init__(self) -> None:
        #: The resting orders of each side by id (an id may rest on both sides). One dict per
        #: side rather than one keyed by (side, id): no key tuple to build and hash per event.
        self.bid_orders: dict[str, Order] = {}
        self.ask_orders: dict[str, Order] = {}
        self.bids: SortedDict = SortedDict()
        self.asks: SortedDict = SortedDict()
        #: The best prices, kept up to date as levels come and go (None: that side is empty).
        self.best_bid: Number | None = None
        self.best_ask: Number | None = None
        #: The levels at those prices, for readers that check the top after every event.
        self.best_bid_level: Level | None = None
        self.best_ask_level: Level | None = None
        #: Levels whose total is 0 (only orders resting at size 0), by price: not in the maps.
        self.idle_bids: dict[Number, Level] = {}
        self.idle_asks: dict[Number, Level] = {}
        self.anomalies: Counter[str] = Counter()

    @classmethod
    def from_orders(cls, orders: Iterable[tuple[Side, str, Number, Number]]) -> Book:
        """A book holding ``orders`` (side, id, price, size), each level's queue in the
        order given. Faster than adding them one by one; raises ValueError on a repeated
        (side, id), a bad side or a negative size. An order of size 0 is kept (see the
        module docstring): a Coinbase REST book lists orders matched to 0 before their done."""
        book = cls()
        by_side: dict[str, dict[Number, Level]] = {BUY: {}, SELL: {}}
        resting_by_side = {BUY: book.bid_orders, SELL: book.ask_orders}
        for side, order_id, price, size in orders:
            levels = by_side.get(side)
            if levels is None:
                raise ValueError(f"bad side {side!r}")
            resting = resting_by_side[side]
            if order_id in resting:
                raise ValueError(f"order {order_id!r} ({side}) appears twice")
            if size < 0:
                raise ValueError(f"order {order_id!r} has size {size}")
            order = resting[order_id] = Order(order_id, side, price, size)
            level = levels.get(price)
            if level is None:
                level = levels[price] = Level()
            level.total += size
            level.orders[order_id] = order
            order.level = level
        for side, idle in ((BUY, book.idle_bids), (SELL, book.idle_asks)):
            levels = by_side[side]
            for price in [p for p, level in levels.items() if not level.total]:
                level = idle[price] = levels.pop(price)
                level.idle = True
        book.bids = SortedDict(by_side[BUY])
        book.asks = SortedDict(by_side[SELL])
        book.best_bid, book.best_bid_level = book.bids.peekitem(-1) if book.bids else (None, None)
        book.best_ask, book.best_ask_level = book.asks.peekitem(0) if book.asks else (None, None)
        return book

    # -- operations (the projector maps each typed event to one of them) ----------------

    def add(self, side: Side, order_id: str, price: Number, size: Number) -> None:
        if side == BUY:
            orders = self.bid_orders
            level = self.bids.get(price)
        else:
            orders = self.ask_orders
            level = self.asks.get(price)
        # Order(...) inlined: no __init__ frame on the hottest path.
        order = _new_order(Order)
        resting = orders.setdefault(order_id, order)  # one lookup for the usual case
        if resting is not order:
            # The venue reused an id that is still resting: the new order replaces it.
            self.anomalies["add_existing_order"] += 1
            self._unlink(resting)
            orders[order_id] = order
            level = (self.bids if side == BUY else self.asks).get(price)  # it may have gone
        order.order_id = order_id
        order.side = side
        order.price = price
        order.size = size
        if level is None:
            self._link(order)
        else:  # the usual case, inlined: a level that has size already
            level.total += size
            level.orders[order_id] = order
            order.level = level

    def update(
        self,
        side: Side,
        order_id: str,
        price: Number | None,
        size: Number | None,
        keep_place: bool | None = None,
        keep_at_zero: bool = False,
        if_resting: bool = False,
    ) -> None:
        """Set a resting order's price and size (None: that one is unchanged). Its place in
        the queue: with ``keep_place`` None (the common rule), kept when the price is the
        same and the size does not grow; True keeps it at the same price whatever the size;
        False always sends the order to the back. Any other change sends it to the back of
        its (new) level. At size 0 the order is removed, or with ``keep_at_zero`` rests at 0.
        An unknown order is counted, unless ``if_resting`` (then it is no anomaly)."""
        order = (self.bid_orders if side == BUY else self.ask_orders).get(order_id)
        if order is None:
            if not if_resting:
                self.anomalies["update_unknown_order"] += 1
            return
        if price is None:
            price = order.price
        if size is None:
            size = order.size
        if price == order.price and (size <= order.size if keep_place is None else keep_place):
            if size <= 0 and not keep_at_zero:
                self._drop(order)
                return
            level = order.level
            level.total += size - order.size
            order.size = size
            if not level.total:
                self._idle(level, side, price)
            elif level.idle:
                self._wake(level, side, price)
            return
        # _unlink and _link inlined for the usual move: the order leaves a level that stays
        # for one that has size already.
        level = order.level
        queue = level.orders
        if len(queue) > 1 and not level.idle:
            del queue[order_id]
            level.total -= order.size
            if not level.total:
                self._idle(level, side, order.price)
        else:
            self._unlink(order)
        order.price = price
        order.size = size
        if size <= 0 and not keep_at_zero:
            del (self.bid_orders if side == BUY else self.ask_orders)[order_id]
            return
        level = (self.bids if side == BUY else self.asks).get(price)
        if level is None:
            self._link(order)
        else:
            level.total += size
            level.orders[order_id] = order
            order.level = level

    def delete(self, side: Side, order_id: str, if_resting: bool = False) -> None:
        """Remove an order. One that does not rest is counted, unless ``if_resting``: for
        venues that announce the end of orders that never rested (Coinbase's ``done``)."""
        order = (self.bid_orders if side == BUY else self.ask_orders).pop(order_id, None)
        if order is None:
            if not if_resting:
                self.anomalies["delete_unknown_order"] += 1
            return
        level = order.level
        queue = level.orders
        if len(queue) > 1 and not level.idle:  # the usual case, inlined: the level stays
            del queue[order_id]
            level.total -= order.size
            if not level.total:
                self._idle(level, side, order.price)
        else:
            self._unlink(order)

    def reduce(self, side: Side, order_id: str, size: Number) -> None:
        """Take ``size`` off a resting order in place (a partial cancel); at 0 it goes. A
        reduction larger than the order removes it and counts ``reduce_exceeds_order``."""
        order = (self.bid_orders if side == BUY else self.ask_orders).get(order_id)
        if order is None:
            self.anomalies["reduce_unknown_order"] += 1
            return
        if size >= order.size:
            if size > order.size:
                self.anomalies["reduce_exceeds_order"] += 1
            level = order.level
            queue = level.orders
            if len(queue) > 1 and not level.idle:  # the usual full cancel, inlined: the level stays
                del queue[order_id]
                del (self.bid_orders if side == BUY else self.ask_orders)[order_id]
                level.total -= order.size
                if not level.total:
                    self._idle(level, side, order.price)
            else:
                self._drop(order)
            return
        level = order.level
        level.total -= size
        order.size -= size
        if not level.total:
            self._idle(level, side, order.price)

    def replace(self, side: Side, order_id: str, new_order_id: str, price: Number, size: Number) -> None:
        """The order goes, and ``new_order_id`` rests at ``price`` and ``size`` at the back
        of its level (an unknown order is counted and the new one still added)."""
        order = (self.bid_orders if side == BUY else self.ask_orders).pop(order_id, None)
        if order is None:
            self.anomalies["replace_unknown_order"] += 1
        else:
            self._unlink(order)
        self.add(side, new_order_id, price, size)

    def clear(self) -> None:
        """Every order leaves the book; anomaly counts stay."""
        self.bid_orders.clear()
        self.ask_orders.clear()
        self.bids.clear()
        self.asks.clear()
        self.idle_bids.clear()
        self.idle_asks.clear()
        self.best_bid = self.best_ask = None
        self.best_bid_level = self.best_ask_level = None

    def trade(self, side: Side, order_id: str, size: Number, keep_at_zero: bool = False) -> None:
        """Take ``size`` off a resting order (a fill). At 0 the order is removed, or with
        ``keep_at_zero`` it rests at size 0 until the venue removes it."""
        order = (self.bid_orders if side == BUY else self.ask_orders).get(order_id)
        if order is None:
            self.anomalies["trade_unknown_order"] += 1
            return
        if size > order.size:
            self.anomalies["trade_exceeds_order"] += 1
            size = order.size
        level = order.level
        level.total -= size
        order.size -= size
        if order.size <= 0 and not keep_at_zero:
            self._drop(order)
        elif not level.total:
            self._idle(level, side, order.price)

    def side_of(self, order_id: str) -> Side | None:
        """The side an order id rests on, for venues whose messages do not always say."""
        if order_id in self.bid_orders:
            return BUY
        if order_id in self.ask_orders:
            return SELL
        return None

    def order(self, side: Side, order_id: str) -> Order | None:
        """The order resting under ``order_id`` on ``side``, if any."""
        return (self.bid_orders if side == BUY else self.ask_orders).get(order_id)

    # -- reading -------------------------------------------------------------------------

    def top(self) -> Top | None:
        """Best bid and ask with their sizes, or None while either side is empty."""
        bid = self.best_bid
        ask = self.best_ask
        if bid is None or ask is None:
            return None
        return Top(bid, self.bids[bid].total, ask, self.asks[ask].total)

    def levels(self, side: Side, depth: int | None = None) -> list[LevelView]:
        """The best ``depth`` levels of one side (all when None), best first. A level whose
        total is 0 is not one; orders resting at size 0 are not counted in a level's orders."""
        book_side = self._levels(side)
        prices = reversed(book_side.keys()) if side == BUY else iter(book_side.keys())
        out: list[LevelView] = []
        for price in prices:
            if depth is not None and len(out) >= depth:
                break
            level = book_side[price]
            count = len(level.orders)
            if count > 1 or not level.total:
                count = sum(1 for order in level.orders.values() if order.size)
            out.append(LevelView(price, level.total, count))
        return out

    def iter_orders(self) -> Iterator[Order]:
        """Every resting order (those at size 0 too): bids best first, then asks best first,
        each level in queue order."""
        for side in (BUY, SELL):
            for _, level in self.all_levels(side):
                yield from level.orders.values()

    def all_levels(self, side: Side) -> Iterator[tuple[Number, Level]]:
        """Every level of one side, best first, idle ones (total 0) included in price order."""
        book_side = self._levels(side)
        idle = self.idle_bids if side == BUY else self.idle_asks
        if not idle:
            prices: Iterable[Number] = reversed(book_side.keys()) if side == BUY else book_side.keys()
            for price in prices:
                yield price, book_side[price]
            return
        merged = sorted([*book_side.keys(), *idle.keys()], reverse=side == BUY)
        for price in merged:
            level = book_side.get(price)
            yield price, (idle[price] if level is None else level)

    def __len__(self) -> int:
        return len(self.bid_orders) + len(self.ask_orders)

    # -- internals -----------------------------------------------------------------------

    def _levels(self, side: Side) -> SortedDict:
        return self.bids if side == BUY else self.asks

    def _link(self, order: Order) -> None:
        # Written out per side, and the level put in its map here rather than through
        # _wake: a shared helper costs the projector 1.5% (a call for every new level).
        price = order.price
        if order.side == BUY:
            level = self.bids.get(price)
            if level is None:
                level = self.idle_bids.pop(price, None) if self.idle_bids else None
                if level is None:
                    level = Level()
                level.total += order.size
                level.orders[order.order_id] = order
                order.level = level
                if level.total:
                    level.idle = False
                    self.bids[price] = level
                    if self.best_bid is None or price > self.best_bid:
                        self.best_bid = price
                        self.best_bid_level = level
                else:
                    level.idle = True
                    self.idle_bids[price] = level
                return
        else:
            level = self.asks.get(price)
            if level is None:
                level = self.idle_asks.pop(price, None) if self.idle_asks else None
                if level is None:
                    level = Level()
                level.total += order.size
                level.orders[order.order_id] = order
                order.level = level
                if level.total:
                    level.idle = False
                    self.asks[price] = level
                    if self.best_ask is None or price < self.best_ask:
                        self.best_ask = price
                        self.best_ask_level = level
                else:
                    level.idle = True
                    self.idle_asks[price] = level
                return
        level.total += order.size
        level.orders[order.order_id] = order
        order.level = level

    def _unlink(self, order: Order) -> None:
        level = order.level
        del level.orders[order.order_id]
        if level.orders:
            level.total -= order.size
            if not level.total:
                self._idle(level, order.side, order.price)
        elif level.idle:
            del (self.idle_bids if order.side == BUY else self.idle_asks)[order.price]
        else:
            self._remove_level(order.side, order.price, level)

    def _idle(self, level: Level, side: Side, price: Number) -> None:
        """A level whose total fell to 0 while orders (at size 0) still rest in it leaves
        its sorted map for the idle ones (a no-op if it is idle already)."""
        if level.idle:
            return
        self._remove_level(side, price, level)
        level.idle = True
        (self.idle_bids if side == BUY else self.idle_asks)[price] = level

    def _wake(self, level: Level, side: Side, price: Number) -> None:
        """An idle level that has size again goes back into its sorted map."""
        level.idle = False
        if side == BUY:
            del self.idle_bids[price]
            self.bids[price] = level
            if self.best_bid is None or price > self.best_bid:
                self.best_bid, self.best_bid_level = price, level
        else:
            del self.idle_asks[price]
            self.asks[price] = level
            if self.best_ask is None or price < self.best_ask:
                self.best_ask, self.best_ask_level = price, level

    def _remove_level(self, side: Side, price: Number, level: Level) -> None:
        if side == BUY:
            del self.bids[price]
            if level is self.best_bid_level:
                self.best_bid, self.best_bid_level = self.bids.peekitem(-1) if self.bids else (None, None)
        else:
            del self.asks[price]
            if level is self.best_ask_level:
                self.best_ask, self.best_ask_level = self.asks.peekitem(0) if self.asks else (None, None)

    def _drop(self, order: Order) -> None:
        self._unlink(order)
        del (self.bid_orders if order.side == BUY else self.ask_orders)[order.order_id]
