"""The projector and its book against independent, naive reference models, and their edge
cases. Every test drives :class:`~ledger.domain.projector.Projector` with typed events: the
code production runs; the last ones as a projection run does, in chunks, and from stored
rows through a venue's rules."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domain.book import Book, LevelView, Top
from ledger.domain.events import BUY, SELL, Event, add, delete, fill, modify
from ledger.domain.projector import Projector
from ledger.services.project.rows import StreamProjector
from ledger.venues import venue


def _apply(proj: Projector, event: Event) -> list[tuple[object, ...]]:
    """Apply one event as production does; the L1 rows it emitted."""
    out: list[tuple[object, ...]] = []
    proj.apply([event], out)
    return out


class NaiveBook:
    """A reference that keeps a plain list of orders and scans it for every answer."""

    def __init__(self) -> None:
        self.orders: dict[tuple[str, str], list[object]] = {}  # key -> [price, size, arrival]
        self.clock = 0

    def apply(self, e: Event) -> None:
        self.clock += 1
        key = (e.side, e.order_id)
        if e.kind == "add":
            self.orders[key] = [e.price, e.size, self.clock]
        elif e.kind == "modify":
            if key in self.orders:
                old_price, old_size, arrival = self.orders[key]
                keeps_place = e.price == old_price and e.size <= old_size
                self.orders[key] = [e.price, e.size, arrival if keeps_place else self.clock]
                if e.size <= 0:
                    del self.orders[key]
        elif e.kind == "delete":
            self.orders.pop(key, None)
        elif e.kind == "fill" and key in self.orders:
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
    st.builds(add, seq=st.just(0), order_id=ids, side=sides, price=prices, size=sizes),
    st.builds(modify, seq=st.just(0), order_id=ids, side=sides, price=prices, size=st.integers(0, 50)),
    st.builds(delete, seq=st.just(0), order_id=ids, side=sides),
    st.builds(fill, seq=st.just(0), order_id=ids, side=sides, price=prices, size=sizes),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=120))
def test_book_matches_naive_model_after_every_event(seq: list[Event]) -> None:
    proj, naive = Projector(), NaiveBook()
    book = proj.book
    for event in seq:
        _apply(proj, event)
        naive.apply(event)
        assert book.top() == naive.top()
        assert book.levels(BUY) == naive.levels(BUY)
        assert book.levels(SELL) == naive.levels(SELL)
    assert [(o.side, o.order_id) for o in book.iter_orders()] == naive.queue()
    assert len(book) == len(naive.orders)


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=80))
def test_l1_rows_match_naive_top_changes(seq: list[Event]) -> None:
    proj, naive = Projector(), NaiveBook()
    expected, got = [], []
    last = None
    for event in seq:
        rows = _apply(proj, event)
        naive.apply(event)
        top = naive.top()
        if top is not None and top != last:
            expected.append(top)
            last = top
        got += [Top(*row[2:]) for row in rows]
    assert got == expected


def test_unknown_orders_and_overfills_are_counted_not_raised() -> None:
    proj = Projector()
    book = proj.book
    proj.apply(
        [delete(1, "x", BUY), modify(2, "x", SELL, 10, 5), fill(3, "x", BUY, 10, 5), add(4, "a", BUY, 10, 5)], None
    )
    proj.apply([fill(5, "a", BUY, 10, 7), add(6, "b", SELL, 11, 5), add(7, "b", SELL, 12, 6)], None)
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
    proj = Projector()
    book = proj.book
    proj.apply([add(1, "7", BUY, 10, 1), add(2, "7", SELL, 11, 2), delete(3, "7", BUY)], None)
    assert book.levels(BUY) == []
    assert book.levels(SELL) == [LevelView(11, 2, 1)]


def test_size_cut_keeps_queue_place_and_price_change_loses_it() -> None:
    proj = Projector()
    book = proj.book
    proj.apply([add(seq, oid, BUY, 10, 5) for seq, oid in enumerate("abc")], None)
    _apply(proj, modify(4, "a", BUY, 10, 3))  # cut: stays first
    assert [o.order_id for o in book.iter_orders()] == ["a", "b", "c"]
    _apply(proj, modify(5, "a", BUY, 10, 9))  # increase: goes last
    assert [o.order_id for o in book.iter_orders()] == ["b", "c", "a"]
    _apply(proj, modify(6, "b", BUY, 11, 5))  # new price: own level, best
    assert book.levels(BUY) == [LevelView(11, 5, 1), LevelView(10, 14, 2)]


def test_crossed_book_counted_once_per_crossing() -> None:
    proj = Projector()
    book = proj.book
    _apply(proj, add(1, "b", BUY, 10, 1))
    _apply(proj, add(2, "s", SELL, 9, 1))
    _apply(proj, add(3, "b2", BUY, 8, 1))  # still crossed: not counted again
    assert proj.crossed
    _apply(proj, delete(4, "s", SELL))
    _apply(proj, add(5, "s2", SELL, 11, 1))  # a top again, not crossed
    assert not proj.crossed
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
        if e.kind == "add":
            self.orders[key] = [e.price, e.size, self.clock]
        elif e.kind == "modify" and key in self.orders:
            old_price, old_size, arrival = self.orders[key]
            keeps_place = e.price == old_price and e.size <= old_size
            self.orders[key] = [e.price, e.size, arrival if keeps_place else self.clock]
        elif e.kind == "delete":
            self.orders.pop(key, None)
        elif e.kind == "fill" and key in self.orders:
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


# The venue rule as Coinbase's stored messages become events: modifies and fills keep an
# order at 0, and only a delete removes it.
venue_events = st.one_of(
    st.builds(add, seq=st.just(0), order_id=ids, side=sides, price=prices, size=sizes),
    st.builds(
        modify,
        seq=st.just(0),
        order_id=ids,
        side=sides,
        price=prices,
        size=st.integers(0, 50),
        keep_at_zero=st.just(True),
    ),
    st.builds(delete, seq=st.just(0), order_id=ids, side=sides),
    st.builds(
        fill,
        seq=st.just(0),
        order_id=ids,
        side=sides,
        price=prices,
        size=st.integers(1, 60),
        keep_at_zero=st.just(True),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(venue_events, max_size=120))
def test_orders_at_size_zero_rest_outside_the_levels(seq: list[Event]) -> None:
    proj, naive = Projector(), NaiveVenueBook()
    book = proj.book
    expected, got, last = [], [], None
    for event in seq:
        rows = _apply(proj, event)
        naive.apply(event)
        assert book.top() == naive.top()
        assert book.levels(BUY) == naive.levels(BUY)
        assert book.levels(SELL) == naive.levels(SELL)
        assert [(o.side, o.order_id, o.size) for o in book.iter_orders()] == naive.queue()
        top = naive.top()
        if top is not None and top != last:
            expected.append(top)
            last = top
        got += [Top(*row[2:]) for row in rows]
    assert got == expected
    assert len(book) == len(naive.orders)


def test_a_fill_to_zero_then_a_refresh_brings_the_order_back_at_the_back_of_its_level() -> None:
    proj = Projector()
    book = proj.book
    proj.apply([add(1, "ice", SELL, 101, 5), add(2, "b", SELL, 101, 3), add(3, "bid", BUY, 99, 1)], None)
    _apply(proj, fill(4, "ice", SELL, 101, 5, keep_at_zero=True))
    assert [(o.order_id, o.size) for o in book.iter_orders()] == [("bid", 1), ("ice", 0), ("b", 3)]
    assert book.levels(SELL) == [LevelView(101, 3, 1)]
    _apply(proj, fill(5, "b", SELL, 101, 3, keep_at_zero=True))  # the whole level at 0: no ask at all
    assert book.levels(SELL) == [] and book.top() is None and book.best_ask is None
    _apply(proj, modify(6, "ice", SELL, None, 4, keep_at_zero=True, if_resting=True))  # the iceberg refreshes
    assert book.top() == Top(99, 1, 101, 4)
    assert [(o.order_id, o.size) for o in book.iter_orders()] == [("bid", 1), ("b", 0), ("ice", 4)]
    proj.apply([delete(7, "b", SELL, if_resting=True), delete(8, "ice", SELL, if_resting=True)], None)
    assert not book.idle_asks and not book.asks and len(book) == 1


def test_a_book_with_orders_at_size_zero_is_built_and_rebuilt() -> None:
    book = Book.from_orders([(BUY, "z", 100, 0), (BUY, "a", 99, 2), (SELL, "y", 101, 0), (SELL, "s", 101, 3)])
    assert book.top() == Top(99, 2, 101, 3)
    assert [(o.order_id, o.size) for o in book.iter_orders()] == [("z", 0), ("a", 2), ("y", 0), ("s", 3)]
    assert book.levels(SELL) == [LevelView(101, 3, 1)]


# -- as production applies them: in chunks, from stored rows through a venue's rules ----------


def _numbered(seq: list[Event]) -> list[Event]:
    return [event._replace(seq=i) for i, event in enumerate(seq, 1)]


def _naive_rows(naive: NaiveBook | NaiveVenueBook, seq: list[Event]) -> tuple[list[tuple[object, ...]], int]:
    """The L1 rows (seq and top) the naive model's tops make, and how many times a written
    top became crossed (bid above ask) after one that was not."""
    rows: list[tuple[object, ...]] = []
    last, crossings, crossed = None, 0, False
    for event in seq:
        naive.apply(event)
        top = naive.top()
        if top is not None and top != last:
            rows.append((event.seq, *top))
            last = top
            crossings += top.bid_price > top.ask_price and not crossed
            crossed = top.bid_price > top.ask_price
    return rows, crossings


def _chunks(seq: list[object], cuts: list[int]) -> list[list[object]]:
    out, i, k = [], 0, 0
    while i < len(seq):
        out.append(seq[i : i + cuts[k % len(cuts)]])
        i += cuts[k % len(cuts)]
        k += 1
    return out


cuts = st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=200), cuts)
def test_chunks_of_events_make_the_naive_models_l1_rows_and_crossings(seq: list[Event], sizes: list[int]) -> None:
    seq = _numbered(seq)
    proj = Projector()
    got: list[tuple[object, ...]] = []
    for chunk in _chunks(seq, sizes):
        proj.apply(iter(chunk), got)  # one at a time, as a venue's rules hand them over
    expected, crossings = _naive_rows(NaiveBook(), seq)
    assert [(row[0], *row[2:]) for row in got] == expected
    assert proj.book.anomalies["crossed_book"] == crossings
    assert proj.last == (None if not expected else Top(*expected[-1][1:]))


@settings(max_examples=300, deadline=None)
@given(st.lists(venue_events, max_size=200), cuts)
def test_chunks_of_venue_events_make_the_naive_models_l1_rows(seq: list[Event], sizes: list[int]) -> None:
    seq = _numbered(seq)
    proj = Projector()
    got: list[tuple[object, ...]] = []
    for chunk in _chunks(seq, sizes):
        proj.apply(iter(chunk), got)
    expected, crossings = _naive_rows(NaiveVenueBook(), seq)
    assert [(row[0], *row[2:]) for row in got] == expected
    assert proj.book.anomalies["crossed_book"] == crossings


def _csv_row(e: Event) -> tuple[object, ...]:
    """The stored L3 CSV row of an event of the strategy above (kinds add, update, delete, trade)."""
    if e.kind == "delete":
        return (e.seq, "delete", e.order_id, e.side, None, None, f"ts{e.seq}")
    kind = {"add": "add", "modify": "update", "fill": "trade"}[e.kind]
    return (e.seq, kind, e.order_id, e.side, str(e.price), str(e.size), f"ts{e.seq}")  # type: ignore[union-attr]


def _coinbase_row(e: Event) -> tuple[object, ...]:
    """The stored Coinbase row of a venue event above (open, change, done, match)."""
    if e.kind == "delete":
        return (e.seq, "done", e.order_id, e.side, None, None, f"ts{e.seq}")
    kind = {"add": "open", "modify": "change", "fill": "match"}[e.kind]
    return (e.seq, kind, e.order_id, e.side, str(e.price), str(e.size), f"ts{e.seq}")  # type: ignore[union-attr]


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=200), cuts)
def test_stored_csv_rows_in_chunks_make_the_naive_models_l1_rows(seq: list[Event], sizes: list[int]) -> None:
    """What a projection run does: chunks of stored rows, decoded by the venue's rules."""
    seq = _numbered(seq)
    proj = StreamProjector(None, venue("csv").rules())
    got: list[tuple[object, ...]] = []
    for chunk in _chunks([_csv_row(e) for e in seq], sizes):
        assert proj.apply_rows(chunk, got) == len(chunk)
    expected, crossings = _naive_rows(NaiveBook(), seq)
    assert [(row[0], *row[2:]) for row in got] == expected
    assert [row[1] for row in got] == [f"ts{row[0]}" for row in got]
    assert proj.book.anomalies["crossed_book"] == crossings


@settings(max_examples=200, deadline=None)
@given(st.lists(venue_events, max_size=200), cuts)
def test_stored_coinbase_rows_in_chunks_make_the_naive_models_l1_rows(seq: list[Event], sizes: list[int]) -> None:
    seq = _numbered(seq)
    proj = StreamProjector(None, venue("coinbase").rules())
    got: list[tuple[object, ...]] = []
    for chunk in _chunks([_coinbase_row(e) for e in seq], sizes):
        assert proj.apply_rows(chunk, got) == len(chunk)
    naive = NaiveVenueBook()
    expected, _ = _naive_rows(naive, seq)
    assert [(row[0], *row[2:]) for row in got] == expected
    assert [(o.side, o.order_id, o.size) for o in proj.book.iter_orders()] == naive.queue()
