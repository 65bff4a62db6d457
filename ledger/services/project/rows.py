"""The in-memory side of projection: one stream's book and its L1 bookkeeping, applying
event-log rows (CSV kinds and Coinbase kinds) as fast as Python allows. No I/O here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import localcontext
from typing import Any

from ledger.domain.book import Book, Level, Top
from ledger.domain.events import EXACT, Number, Side
from ledger.domain.l1 import L1Tracker
from ledger.domain.snapshot import ProjectorState
from ledger.errors import StreamError
from ledger.storage.projection import L1Row
from ledger.venues.csv.format import to_number

__all__ = ["StreamProjector"]

# Event kinds of venue feeds (Coinbase), applied by StreamProjector._venue_event.
_VENUE_KINDS = frozenset({"open", "done", "match", "change", "received", "activate", "noop"})


class StreamProjector:
    """The book of one stream and the L1 bookkeeping around it."""

    def __init__(self, error_threshold: int | None) -> None:
        self.book = Book()
        self.tracker = L1Tracker()
        self.error_threshold = error_threshold
        self.crossed = False
        self.numbers: dict[str | None, Number] = {}  # price/size text -> exact number

    def apply(self, rows: Sequence[Sequence[Any]], out: list[L1Row] | None, *, l1: bool = True) -> int:
        """Apply rows in order; append L1 changes to ``out`` (None: replay, write nothing).
        Return how many rows were applied (fewer when the error threshold stops it).
        Without ``l1`` only the book changes: for a book wanted at one point, not a
        projection that goes on.

        The hot loop of the projector: it calls the book's operations directly rather
        than building an :data:`~ledger.domain.events.Event` per row (the same mapping as
        :meth:`~ledger.domain.book.Book.apply`), and turns price and size text into exact numbers through a cache,
        since a book sees the same few hundred prices and sizes over and over."""
        threshold = self.error_threshold if out is not None else None
        with localcontext(EXACT):
            return self._apply(rows, out, l1, threshold)

    def _apply(self, rows: Sequence[Sequence[Any]], out: list[L1Row] | None, l1: bool, threshold: int | None) -> int:
        book = self.book
        add, update, delete, trade = book.add, book.update, book.delete, book.trade
        numbers = self.numbers
        # The rule of L1Tracker.observe_book, inlined: a row when the top of book differs
        # from the last row. The best levels after the previous event, and their sizes:
        # while they are the same objects with the same sizes, the top has not moved
        # (levels are made per price, and never come back once removed).
        last: tuple[Any, ...] | None = self.tracker.last
        seen_bid: Level | None = None
        seen_ask: Level | None = None
        seen_bid_size: Any = None
        seen_ask_size: Any = None
        bid_price: Any = None
        ask_price: Any = None
        applied = 0
        try:
            for seq, kind, order_id, side, price_text, size_text, ts in rows:
                if threshold is not None and book.anomalies.total() > threshold:
                    return applied
                if kind == "delete":
                    delete(side, order_id)
                elif kind in _VENUE_KINDS:
                    self._venue_event(seq, kind, order_id, side, price_text, size_text)
                else:
                    price = numbers.get(price_text)
                    if price is None:
                        price = self._number(seq, kind, price_text)
                    size = numbers.get(size_text)
                    if size is None:
                        size = self._number(seq, kind, size_text)
                    if kind == "add":
                        add(side, order_id, price, size)
                    elif kind == "update":
                        update(side, order_id, price, size)
                    elif kind == "trade":
                        trade(side, order_id, size)
                    else:
                        raise StreamError(f"seq {seq}: the projector does not know the event kind {kind!r}")
                applied += 1
                if not l1:
                    continue
                bid_level = book.best_bid_level
                ask_level = book.best_ask_level
                if bid_level is None or ask_level is None:
                    seen_bid = None
                    continue
                bid_size = bid_level.total
                ask_size = ask_level.total
                if bid_level is not seen_bid or ask_level is not seen_ask:
                    seen_bid, seen_ask, bid_price, ask_price = bid_level, ask_level, book.best_bid, book.best_ask
                elif bid_size == seen_bid_size and ask_size == seen_ask_size:
                    continue
                seen_bid_size, seen_ask_size = bid_size, ask_size
                top = (bid_price, bid_size, ask_price, ask_size)
                if top == last:
                    continue
                last = top
                crossed = bid_price > ask_price
                if crossed and not self.crossed:
                    book.anomalies["crossed_book"] += 1
                self.crossed = crossed
                if out is not None:
                    out.append((seq, ts, *top))
        finally:
            self.tracker.last = None if last is None else Top(*last)
        return applied

    def _venue_event(
        self, seq: int, kind: str, order_id: str, side: Side | None, price_text: str | None, size_text: str | None
    ) -> None:
        """Coinbase full-channel (and level3) events, as the exchange documents them:
        ``open`` rests an order; ``match`` takes size off the maker; ``done`` removes the
        order if it rests (it often never did), and nothing else removes one: an order
        matched down to 0 rests at size 0 (outside the levels and L1) until its ``done``;
        ``change`` sets a resting order's new size (giving a size-0 order size again, as an
        iceberg's refresh does) and, for ``modify_order``, its new price, and is ignored for
        orders not on the book;
        ``received``, ``activate`` and ``noop`` leave the book alone. The compact level3
        channel leaves out the side of done, match and change: it is looked up by id."""
        book = self.book
        if kind in ("received", "activate", "noop"):
            return
        if kind == "open":
            if side is None:
                raise StreamError(f"seq {seq}: an open without a side")
            book.add(side, order_id, self._number(seq, kind, price_text), self._number(seq, kind, size_text))
            return
        resting = side if side is not None and (side, order_id) in book.orders else book.side_of(order_id)
        if kind == "done":
            if resting is not None:
                book.discard(resting, order_id)
        elif kind == "match":
            if resting is None:
                book.anomalies["trade_unknown_order"] += 1
            else:
                book.trade(resting, order_id, self._number(seq, kind, size_text), remove_at_zero=False)
        elif kind == "change" and resting is not None:
            order = book.orders[(resting, order_id)]
            price = order.price if price_text is None else self._number(seq, kind, price_text)
            book.update(resting, order_id, price, self._number(seq, kind, size_text), remove_at_zero=False)

    def _number(self, seq: int, kind: str, text: str | None) -> Number:
        if text is None:
            raise StreamError(f"seq {seq}: a {kind} event without the price or size it needs")
        cached = self.numbers.get(text)
        if cached is not None:
            return cached
        if len(self.numbers) > 100_000:
            self.numbers.clear()
        value = self.numbers[text] = to_number(text)
        return value

    def over_threshold(self) -> bool:
        return self.over_threshold_with(self.book.anomalies)

    def over_threshold_with(self, anomalies: Mapping[str, int]) -> bool:
        return self.error_threshold is not None and sum(anomalies.values()) > self.error_threshold

    def state(self) -> ProjectorState:
        return ProjectorState(book=self.book, l1_last=self.tracker.last, crossed=self.crossed)

    def reset(self, book: Book) -> None:
        """Take ``book`` (a venue's snapshot) as the book; anomaly counts carry on."""
        book.anomalies = self.book.anomalies
        self.book = book

    def emit_l1(self, seq: int, ts: Any, out: list[L1Row] | None) -> None:
        """After a reset: an L1 row at ``seq`` if the top of the new book differs."""
        changed = self.tracker.observe_book(self.book)
        if changed is not None:
            self.crossed = changed.bid_price > changed.ask_price
            if out is not None:
                out.append((seq, ts, changed.bid_price, changed.bid_size, changed.ask_price, changed.ask_size))

    def restore(self, state: ProjectorState) -> None:
        self.book = state.book
        self.tracker = L1Tracker(state.l1_last)
        self.crossed = state.crossed
