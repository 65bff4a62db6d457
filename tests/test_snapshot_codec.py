"""Book snapshots: what goes in comes back, and damage is refused, never misread."""

from __future__ import annotations

import zlib
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domain.book import Book, Top
from ledger.domain.events import BUY, SELL, Event, add, delete, fill, modify
from ledger.domain.projector import Projector
from ledger.domain.snapshot import FORMAT_VERSION, ProjectorState, decode, encode
from ledger.errors import SnapshotError

ids = st.sampled_from(["1", "2", "3", "a\tb", "x\\y", "7457972527797789251", "n\nl"])
sides = st.sampled_from([BUY, SELL])
prices = st.one_of(st.integers(90, 110), st.integers(9000, 11000).map(lambda p: Decimal(p) / 100))
sizes = st.one_of(st.integers(1, 500), st.integers(1, 10**8).map(lambda s: Decimal(s) / 10**8))
events = st.one_of(
    st.builds(add, seq=st.just(0), order_id=ids, side=sides, price=prices, size=sizes),
    st.builds(modify, seq=st.just(0), order_id=ids, side=sides, price=prices, size=sizes),
    st.builds(delete, seq=st.just(0), order_id=ids, side=sides),
    st.builds(fill, seq=st.just(0), order_id=ids, side=sides, price=prices, size=sizes),
)


def _apply(book: Book, event: Event) -> None:
    """Apply one event to ``book`` through the projector, as production does."""
    proj = Projector()
    proj.book = book
    proj.apply([event], None)


def _orders(book: Book) -> list[tuple[str, str, object, object]]:
    return [(o.side, o.order_id, o.price, o.size) for o in book.iter_orders()]


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=80), st.booleans())
def test_round_trip_keeps_every_order_in_queue_order(seq: list[Event], crossed: bool) -> None:
    book = Book()
    for event in seq:
        _apply(book, event)
    state = ProjectorState(book=book, l1_last=book.top(), crossed=crossed)
    back = decode(encode(state), FORMAT_VERSION)
    assert _orders(back.book) == _orders(book)
    assert back.book.levels(BUY) == book.levels(BUY) and back.book.levels(SELL) == book.levels(SELL)
    assert back.book.top() == book.top() and back.l1_last == state.l1_last and back.crossed == crossed
    assert back.book.anomalies == book.anomalies
    # The restored book goes on exactly like the original.
    for event in seq:
        _apply(back.book, event)
        _apply(book, event)
    assert _orders(back.book) == _orders(book)


def _sample() -> bytes:
    book = Book()
    _apply(book, add(1, "a", BUY, Decimal("228.5"), 50))
    _apply(book, add(2, "b", SELL, 230, 300))
    _apply(book, delete(3, "zz", SELL))
    return encode(ProjectorState(book, Top(Decimal("228.5"), 50, 230, 300), False))


def test_an_empty_book_round_trips() -> None:
    back = decode(encode(ProjectorState()), FORMAT_VERSION)
    assert len(back.book) == 0 and back.l1_last is None and back.book.top() is None


@pytest.mark.parametrize(
    ("mangle", "version", "says"),
    [
        (lambda p: p, 2, "format version 2 is not one this ledger reads"),
        (lambda p: p[: len(p) // 2], 1, "corrupt"),
        (lambda p: p[:10] + bytes([p[10] ^ 0xFF]) + p[11:], 1, "corrupt"),
        (lambda p: b"garbage", 1, "corrupt"),
        (lambda p: zlib.compress(zlib.decompress(p).rsplit(b"\n", 1)[0]), 1, "orders where the header says 2"),
        (lambda p: zlib.compress(zlib.decompress(p).replace(b"ledger-book 1", b"ledger-book 9")), 1, "not a version-1"),
        (lambda p: zlib.compress(zlib.decompress(p).replace(b"228.5\t50", b"228.5\tx")), 1, "line is corrupt"),
        (lambda p: zlib.compress(zlib.decompress(p).replace(b"\tb", b"\ta")), 1, None),  # same id, other side: fine
        (lambda p: zlib.compress(zlib.decompress(p).replace(b"S\t230", b"B\t230").replace(b"\tb", b"\ta")), 1,
         "appears twice"),
        (lambda p: zlib.compress(zlib.decompress(p).replace(b'"orders": 2', b'"orders": "two"')), 1, "header"),
    ],
)  # fmt: skip
def test_damage_is_refused_with_a_reason(mangle, version: int, says: str | None) -> None:  # type: ignore[no-untyped-def]
    payload = mangle(_sample())
    if says is None:
        decode(payload, version)
        return
    with pytest.raises(SnapshotError) as err:
        decode(payload, version, where="stream s, book snapshot at seq 7")
    assert says in str(err.value) and "stream s, book snapshot at seq 7" in str(err.value)


def test_orders_resting_at_size_zero_survive_a_round_trip() -> None:
    book = Book()
    _apply(book, add(1, "z", SELL, 101, 5))
    _apply(book, add(2, "s", SELL, 101, 3))
    _apply(book, add(3, "w", SELL, 102, 1))
    _apply(book, add(4, "b", BUY, 99, 2))
    _apply(book, fill(5, "z", SELL, 101, 5, keep_at_zero=True))  # rests at 0 in a level that has size
    _apply(book, fill(6, "w", SELL, 102, 1, keep_at_zero=True))  # rests at 0 alone: its level is idle
    back = decode(encode(ProjectorState(book=book, l1_last=book.top())), FORMAT_VERSION).book
    assert (
        _orders(back)
        == _orders(book)
        == [
            (BUY, "b", 99, 2),
            (SELL, "z", 101, 0),
            (SELL, "s", 101, 3),
            (SELL, "w", 102, 0),
        ]
    )
    assert back.top() == book.top() == Top(99, 2, 101, 3)
    assert back.levels(SELL) == book.levels(SELL)
    back.update(SELL, "w", 102, 4, keep_at_zero=True)
    assert back.levels(SELL)[1].size == 4
