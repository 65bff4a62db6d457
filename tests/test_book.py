"""The L3 book against an independent, naive reference model, and its edge cases."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domain.book import Book, LevelView, Top
from ledger.domain.events import BUY, SELL, Add, Delete, Event, Trade, Update
from ledger.domain.l1 import L1Tracker


class NaiveBook:
    """A reference that keeps a plain list of orders and scans it for every answer."""

    def __init__(self) -> None:
        self.orders: dict[tuple[str, str], list[object]] = {}  # key -> [price, size, arrival]
        self.clock = 0

    def apply(self, e: Event) -> None:
        self.clock += 1
        key = (e.side, e.order_id)
        if isinstance(e, Add):
            self.orders[key] = [e.price, e.size, self.clock]
        elif isinstance(e, Update):
            if key in self.orders:
                old_price, old_size, arrival = self.orders[key]
                keeps_place = e.price == old_price and e.size <= old_size
                self.orders[key] = [e.price, e.size, arrival if keeps_place else self.clock]
                if e.size <= 0:
                    del self.orders[key]
        elif isinstance(e, Delete):
            self.orders.pop(key, None)
        elif isinstance(e, Trade) and key in self.orders:
            self.orders[key][1] -= min(e.size, self.orders[key][1])
            if self.orders[key][1] <= 0:
                del self.orders[key]

    def levels(self, side: str) -> list[LevelView]:
        totals: dict[object, list[int]] = defaultdict(lambda: [0, 0])
        for (s, _), (price, size, _) in self.orders.items():
            if s == side:
                totals[price][0] += size
                totals[price][1] += 1
        prices = sorted(totals, reverse=side == BUY)
        return [LevelView(p, totals[p][0], totals[p][1]) for p in prices]

    def queue(self) -> list[tuple[str, str]]:
        out = []
        for side in (BUY, SELL):
            for level in self.levels(side):
                same = [(arr, k) for k, (p, _, arr) in self.orders.items() if k[0] == side and p == level.price]
                out += [k for _, k in sorted(same)]
        return out

    def top(self) -> Top | None:
        bids, asks = self.levels(BUY), self.levels(SELL)
        if not bids or not asks:
            return None
        return Top(bids[0].price, bids[0].size, asks[0].price, asks[0].size)


ids = st.sampled_from([str(i) for i in range(8)])
sides = st.sampled_from([BUY, SELL])
prices = st.integers(min_value=95, max_value=105).map(lambda p: Decimal(p) / 2)
sizes = st.integers(min_value=1, max_value=50)
events = st.one_of(
    st.builds(Add, seq=st.just(0), order_id=ids, side=sides, price=prices, size=sizes),
    st.builds(Update, seq=st.just(0), order_id=ids, side=sides, price=prices, size=st.integers(0, 50)),
    st.builds(Delete, seq=st.just(0), order_id=ids, side=sides),
    st.builds(Trade, seq=st.just(0), order_id=ids, side=sides, price=prices, size=sizes),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=120))
def test_book_matches_naive_model_after_every_event(seq: list[Event]) -> None:
    book, naive = Book(), NaiveBook()
    for event in seq:
        book.apply(event)
        naive.apply(event)
        assert book.top() == naive.top()
        assert book.levels(BUY) == naive.levels(BUY)
        assert book.levels(SELL) == naive.levels(SELL)
    assert [(o.side, o.order_id) for o in book.iter_orders()] == naive.queue()
    assert len(book) == len(naive.orders)


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=80))
def test_l1_rows_match_naive_top_changes(seq: list[Event]) -> None:
    book, naive, tracker, fast = Book(), NaiveBook(), L1Tracker(), L1Tracker()
    expected, got = [], []
    last = None
    for event in seq:
        book.apply(event)
        naive.apply(event)
        top = naive.top()
        if top is not None and top != last:
            expected.append(top)
            last = top
        row = tracker.observe(book.top())
        if row is not None:
            got.append(row)
        assert fast.observe_book(book) == row
    assert got == expected


def test_unknown_orders_and_overfills_are_counted_not_raised() -> None:
    book = Book()
    book.apply(Delete(1, "x", BUY))
    book.apply(Update(2, "x", SELL, 10, 5))
    book.apply(Trade(3, "x", BUY, 10, 5))
    book.apply(Add(4, "a", BUY, 10, 5))
    book.apply(Trade(5, "a", BUY, 10, 7))
    book.apply(Add(6, "b", SELL, 11, 5))
    book.apply(Add(7, "b", SELL, 12, 6))
    assert dict(book.anomalies) == {
        "delete_unknown_order": 1,
        "update_unknown_order": 1,
        "trade_unknown_order": 1,
        "trade_exceeds_order": 1,
        "add_existing_order": 1,
    }
    assert book.top() is None  # the overfilled bid is gone
    assert book.levels(SELL) == [LevelView(12, 6, 1)]


def test_same_id_on_both_sides_are_two_orders() -> None:
    book = Book()
    book.apply(Add(1, "7", BUY, 10, 1))
    book.apply(Add(2, "7", SELL, 11, 2))
    book.apply(Delete(3, "7", BUY))
    assert book.levels(BUY) == []
    assert book.levels(SELL) == [LevelView(11, 2, 1)]


def test_size_cut_keeps_queue_place_and_price_change_loses_it() -> None:
    book = Book()
    for seq, oid in enumerate("abc"):
        book.apply(Add(seq, oid, BUY, 10, 5))
    book.apply(Update(4, "a", BUY, 10, 3))  # cut: stays first
    assert [o.order_id for o in book.iter_orders()] == ["a", "b", "c"]
    book.apply(Update(5, "a", BUY, 10, 9))  # increase: goes last
    assert [o.order_id for o in book.iter_orders()] == ["b", "c", "a"]
    book.apply(Update(6, "b", BUY, 11, 5))  # new price: own level, best
    assert book.levels(BUY) == [LevelView(11, 5, 1), LevelView(10, 14, 2)]


def test_crossed_book_counted_once_per_crossing() -> None:
    book = Book()
    book.apply(Add(1, "b", BUY, 10, 1))
    book.apply(Add(2, "s", SELL, 9, 1))
    assert book.check_crossed() and book.check_crossed()
    book.apply(Delete(3, "s", SELL))
    assert not book.check_crossed()
    assert book.anomalies["crossed_book"] == 1


# -- venues whose fills leave an order resting at size 0 (Coinbase: only `done` removes) ---------


class NaiveVenueBook:
    """A separate reference for the venue rule: a fill or a size change to 0 leaves the order
    resting at 0 until it is deleted; a level whose total is 0 is no level (not in the levels,
    not the top), and orders at 0 are not counted in a level's orders, but they are still
    listed, in queue order, among the book's orders."""

    def __init__(self) -> None:
        self.orders: dict[tuple[str, str], list[object]] = {}  # key -> [price, size, arrival]
        self.clock = 0

    def apply(self, e: Event) -> None:
        self.clock += 1
        key = (e.side, e.order_id)
        if isinstance(e, Add):
            self.orders[key] = [e.price, e.size, self.clock]
        elif isinstance(e, Update) and key in self.orders:
            old_price, old_size, arrival = self.orders[key]
            keeps_place = e.price == old_price and e.size <= old_size
            self.orders[key] = [e.price, e.size, arrival if keeps_place else self.clock]
        elif isinstance(e, Delete):
            self.orders.pop(key, None)
        elif isinstance(e, Trade) and key in self.orders:
            self.orders[key][1] -= min(e.size, self.orders[key][1])

    def levels(self, side: str) -> list[LevelView]:
        totals: dict[object, list[int]] = defaultdict(lambda: [0, 0])
        for (s, _), (price, size, _) in self.orders.items():
            if s == side:
                totals[price][0] += size
                totals[price][1] += 1 if size else 0
        prices = sorted((p for p in totals if totals[p][0]), reverse=side == BUY)
        return [LevelView(p, totals[p][0], totals[p][1]) for p in prices]

    def queue(self) -> list[tuple[str, str, object]]:
        out = []
        for side in (BUY, SELL):
            prices = sorted({p for (s, _), (p, _, _) in self.orders.items() if s == side}, reverse=side == BUY)
            for price in prices:
                same = [(arr, k, size) for k, (p, size, arr) in self.orders.items() if k[0] == side and p == price]
                out += [(*k, size) for _, k, size in sorted(same)]
        return out

    def top(self) -> Top | None:
        bids, asks = self.levels(BUY), self.levels(SELL)
        if not bids or not asks:
            return None
        return Top(bids[0].price, bids[0].size, asks[0].price, asks[0].size)


def _apply_venue(book: Book, e: Event) -> None:
    """The venue rule through the book's own operations, as the projector calls them."""
    if isinstance(e, Trade):
        book.trade(e.side, e.order_id, e.size, remove_at_zero=False)
    elif isinstance(e, Update):
        book.update(e.side, e.order_id, e.price, e.size, remove_at_zero=False)
    else:
        book.apply(e)


venue_events = st.one_of(
    st.builds(Add, seq=st.just(0), order_id=ids, side=sides, price=prices, size=sizes),
    st.builds(Update, seq=st.just(0), order_id=ids, side=sides, price=prices, size=st.integers(0, 50)),
    st.builds(Delete, seq=st.just(0), order_id=ids, side=sides),
    st.builds(Trade, seq=st.just(0), order_id=ids, side=sides, price=prices, size=st.integers(1, 60)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(venue_events, max_size=120))
def test_orders_at_size_zero_rest_outside_the_levels(seq: list[Event]) -> None:
    book, naive = Book(), NaiveVenueBook()
    tracker, expected, got, last = L1Tracker(), [], [], None
    for event in seq:
        _apply_venue(book, event)
        naive.apply(event)
        assert book.top() == naive.top()
        assert book.levels(BUY) == naive.levels(BUY)
        assert book.levels(SELL) == naive.levels(SELL)
        assert [(o.side, o.order_id, o.size) for o in book.iter_orders()] == naive.queue()
        top = naive.top()
        if top is not None and top != last:
            expected.append(top)
            last = top
        row = tracker.observe_book(book)
        if row is not None:
            got.append(row)
    assert got == expected
    assert len(book) == len(naive.orders)


def test_a_fill_to_zero_then_a_refresh_brings_the_order_back_at_the_back_of_its_level() -> None:
    book = Book()
    book.apply(Add(1, "ice", SELL, 101, 5))
    book.apply(Add(2, "b", SELL, 101, 3))
    book.apply(Add(3, "bid", BUY, 99, 1))
    book.trade(SELL, "ice", 5, remove_at_zero=False)
    assert [(o.order_id, o.size) for o in book.iter_orders()] == [("bid", 1), ("ice", 0), ("b", 3)]
    assert book.levels(SELL) == [LevelView(101, 3, 1)]
    book.trade(SELL, "b", 3, remove_at_zero=False)  # the whole level at 0: no ask at all
    assert book.levels(SELL) == [] and book.top() is None and book.best_ask is None
    book.update(SELL, "ice", 101, 4, remove_at_zero=False)  # the iceberg refreshes
    assert book.top() == Top(99, 1, 101, 4)
    assert [(o.order_id, o.size) for o in book.iter_orders()] == [("bid", 1), ("b", 0), ("ice", 4)]
    book.delete(SELL, "b")
    book.delete(SELL, "ice")
    assert not book.idle_asks and not book.asks and len(book) == 1


def test_a_book_with_orders_at_size_zero_is_built_and_rebuilt() -> None:
    book = Book.from_orders([(BUY, "z", 100, 0), (BUY, "a", 99, 2), (SELL, "y", 101, 0), (SELL, "s", 101, 3)])
    assert book.top() == Top(99, 2, 101, 3)
    assert [(o.order_id, o.size) for o in book.iter_orders()] == [("z", 0), ("a", 2), ("y", 0), ("s", 3)]
    assert book.levels(SELL) == [LevelView(101, 3, 1)]
