"""The L1-change rule: when does an event produce a best bid/offer row.

After each event, when both sides of the book are non-empty, the best bid and best ask and
the total size at each form the top of book. A row is emitted when any of the four values
differs from the last emitted row. A locked or crossed book is still emitted; a book with
an empty side emits nothing and leaves the last row as it was.

    >>> tracker = L1Tracker()
    >>> tracker.observe(Top(228, 50, 230, 300))
    Top(bid_price=228, bid_size=50, ask_price=230, ask_size=300)
    >>> tracker.observe(Top(228, 50, 230, 300)) is None
    True
"""

from __future__ import annotations

from ledger.domain.book import Book, Top

__all__ = ["L1Tracker"]


class L1Tracker:
    """Remembers the last emitted top of book and says when a new one differs."""

    __slots__ = ("last",)

    def __init__(self, last: Top | None = None) -> None:
        self.last = last

    def observe(self, top: Top | None) -> Top | None:
        """Return ``top`` when it is a new L1 row, else None."""
        if top is None or top == self.last:
            return None
        self.last = top
        return top

    def observe_book(self, book: Book) -> Top | None:
        """Same as ``observe(book.top())``, without building a Top for every unchanged event
        (the projector calls this once per event)."""
        bid = book.best_bid
        ask = book.best_ask
        if bid is None or ask is None:
            return None
        bid_size = book.bids[bid].total
        ask_size = book.asks[ask].total
        last = self.last
        if (
            last is not None
            and bid == last.bid_price
            and ask == last.ask_price
            and bid_size == last.bid_size
            and ask_size == last.ask_size
        ):
            return None
        self.last = top = Top(bid, bid_size, ask, ask_size)
        return top
