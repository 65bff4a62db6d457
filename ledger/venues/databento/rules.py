"""How Databento MBO records change a book (``docs/venues/databento.md``).

Databento's documented rules, record by record: ``A`` (kind ``add``) rests an order;
``C`` (``cancel``) takes the record's size off the order, which keeps its place (a partial
cancel) and goes at 0 (a full one); ``M`` (``modify``) gives the order a new absolute price
and size, keeping its place in the queue only when the price is the same and the size does
not grow; ``R`` (``clear``) empties the book; ``T`` (``trade``) and ``F`` (``fill``) do not
change the book, since the ``C`` or ``M`` of the same exchange event carries the change
(applying ``F`` too would count it twice); ``N`` (``none``) changes nothing. The flags go
through as they are: ``F_LAST`` ends an exchange event (the book is looked at only then),
``F_SNAPSHOT`` records rebuild the book, ``F_MAYBE_BAD_BOOK`` and ``F_BAD_TS_RECV`` are kept.

    >>> DatabentoRules().events([(7, "cancel", "42", "B", "4799.25", "2", None, 130, None)])
    [('reduce', 7, None, 130, None, '42', 'B', 2)]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ledger.domain.events import Record
from ledger.errors import StreamError
from ledger.venues._numbers import Numbers, unknown_kind

__all__ = ["DatabentoRules"]

_OTHER_SIDE = {"B": "S", "S": "B", None: None}


class DatabentoRules:
    """Stored Databento rows ``(seq, kind, order_id, side, price, size, ts, flags, ts_event,
    ...)`` (the fields after ``ts_event`` are not read) to typed events in the layout of
    :mod:`ledger.domain.events`. ``price`` and ``size`` may be numbers (a row made in memory
    by :func:`~ledger.venues.databento.dbn.stored_rows`) or their text (a row read back from
    the event log); ``ts`` and ``ts_event`` are passed on as they come."""

    def __init__(self) -> None:
        self._number = Numbers()

    def events(self, rows: Iterable[Sequence[Any]]) -> list[Record]:
        return list(self.iter_events(rows))

    def iter_events(self, rows: Iterable[Sequence[Any]]) -> Iterator[Record]:
        number = self._number
        cached = number.get
        for row in rows:
            seq, kind, order_id, side, price, size, ts, flags, ts_event = row if len(row) == 9 else row[:9]
            if size.__class__ is str:
                size = cached(size) or number(seq, size)
            if kind == "add":
                if price.__class__ is str:
                    price = cached(price) or number(seq, price)
                if side is None or price is None:
                    raise StreamError(f"seq {seq}: a Databento add without a side or a price")
                yield ("add", seq, ts, flags, ts_event, order_id, side, price, size)
            elif kind == "cancel":  # the size cancelled: a partial cancel keeps the order's place
                yield ("reduce", seq, ts, flags, ts_event, order_id, side, size)
            elif kind == "modify":  # new absolute price and size; the common priority rule
                if price.__class__ is str:
                    price = cached(price) or number(seq, price)
                yield ("modify", seq, ts, flags, ts_event, order_id, side, price, size, None, False, False)
            elif kind == "fill":  # the resting order's side; the book changes by the event's C or M
                if price.__class__ is str:
                    price = cached(price) or number(seq, price)
                yield ("trade", seq, ts, flags, ts_event, price, size, _OTHER_SIDE[side], order_id, None)
            elif kind == "trade":  # the aggressor's side and, where known, its order
                if price.__class__ is str:
                    price = cached(price) or number(seq, price)
                yield ("trade", seq, ts, flags, ts_event, price, size, side, None, order_id)
            elif kind == "none":
                yield ("mark", seq, ts, flags, ts_event)
            elif kind == "clear":
                yield ("clear", seq, ts, flags, ts_event)
            else:
                unknown_kind(seq, kind, "Databento MBO")
