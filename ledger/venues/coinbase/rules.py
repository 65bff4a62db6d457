"""How Coinbase Exchange's stored messages change a book (``docs/venues/coinbase.md``).

``open`` rests the remainder of an order. ``match`` takes its size off the maker, and an
order matched down to 0 stays on the book at size 0 (outside the levels and L1) until its
``done``: only ``done`` removes an order, and a ``done`` for an order that never rested (it
often did not) is normal. ``change`` sets a resting order's new size (giving a size-0 order
size again, as an iceberg's refresh does) and, for ``modify_order``, its new price; it is
ignored for orders not on the book. ``received``, ``activate`` and ``noop`` change no order.
The compact ``level3`` channel leaves out the side of ``done``, ``match`` and ``change``:
the order is then found by its id. Every message is a whole exchange event.

    >>> CoinbaseRules().events([(3, "match", "ab", "S", "2600.01", "0.5", None)])
    [('fill', 3, None, 128, None, 'ab', 'S', Decimal('2600.01'), Decimal('0.5'), True, 'B', None)]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ledger.domain.events import LAST, Record
from ledger.errors import StreamError
from ledger.venues._numbers import Numbers, unknown_kind

__all__ = ["CoinbaseRules", "taker_of"]

_OTHER_SIDE = {"B": "S", "S": "B", None: None}
_NO_CHANGE = frozenset({"received", "activate", "noop"})


class CoinbaseRules:
    """Stored Coinbase messages ``(seq, kind, order_id, side, price, size, ts)`` (full or
    level3 channel) to typed events, in the layout of :mod:`ledger.domain.events`."""

    def __init__(self) -> None:
        self._number = Numbers()

    def events(self, rows: Iterable[Sequence[Any]]) -> list[Record]:
        return list(self.iter_events(rows))

    def iter_events(self, rows: Iterable[Sequence[Any]]) -> Iterator[Record]:
        number = self._number
        cached = number.get
        whole = LAST  # a local: cheaper than a global, read for every row
        for seq, kind, order_id, side, price_text, size_text, ts in rows:
            if kind == "done":
                yield ("delete", seq, ts, whole, None, order_id, side, True)
            elif kind in _NO_CHANGE:
                yield ("mark", seq, ts, whole, None)
            elif kind == "match":  # order_id is the maker's; the taker took the other side
                price = cached(price_text) or number(seq, price_text)
                size = cached(size_text) or number(seq, size_text)
                yield ("fill", seq, ts, whole, None, order_id, side, price, size, True, _OTHER_SIDE[side], None)
            elif kind == "open":
                if side is None:
                    raise StreamError(f"seq {seq}: an open without a side")
                price = cached(price_text) or number(seq, price_text)
                size = cached(size_text) or number(seq, size_text)
                yield ("add", seq, ts, whole, None, order_id, side, price, size)
            elif kind == "change":  # a new size; with modify_order, a new price too
                new_price = None if price_text is None else cached(price_text) or number(seq, price_text)
                new_size = None if size_text is None else cached(size_text) or number(seq, size_text)
                yield ("modify", seq, ts, whole, None, order_id, side, new_price, new_size, None, True, True)
            else:
                unknown_kind(seq, kind, "the Coinbase feed")


def taker_of(raw: str) -> str | None:
    """The ``taker_order_id`` of a stored full-channel ``match`` message; None for any
    other message, for the compact ``level3`` channel (its arrays do not name the taker)
    and for a raw that is not a JSON object.

        >>> taker_of('{"type": "match", "maker_order_id": "m", "taker_order_id": "t"}')
        't'
        >>> taker_of('["m", "BTC-USD", 7, "m", "t", "0.1", "100", "2024-01-01T00:00:00Z"]') is None
        True
    """
    from ledger.venues.coinbase.codec import MessageError, decode_frame

    try:
        message = decode_frame(raw)
    except MessageError:
        return None
    if not isinstance(message, dict) or message.get("type") != "match":
        return None
    taker = message.get("taker_order_id")
    return taker if isinstance(taker, str) else None
