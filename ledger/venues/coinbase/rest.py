"""Coinbase's REST level-3 book (``GET /products/<id>/book?level=3``), stored as a source
snapshot, as a :class:`~ledger.domain.book.Book`. Orders listed at size 0 (matched down to 0,
their ``done`` not yet sent) are kept at 0, as the feed's rules keep them."""

from __future__ import annotations

from decimal import localcontext

from ledger.domain.book import Book
from ledger.domain.events import EXACT
from ledger.errors import SnapshotError
from ledger.venues._numbers import exact
from ledger.venues.coinbase.codec import MessageError, decode, rest_snapshot_rows

__all__ = ["rest_book"]


def rest_book(raw: str, *, where: str) -> Book:
    """The book of a stored REST level-3 payload; ``where`` (stream and seq) goes in errors."""
    try:
        _, orders = rest_snapshot_rows(decode(raw))
        with localcontext(EXACT):
            return Book.from_orders((side, oid, exact(p), exact(q)) for side, p, q, oid in orders)
    except (MessageError, ValueError, ArithmeticError) as e:
        raise SnapshotError(f"{where}: {e}") from None
