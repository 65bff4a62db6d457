"""How the L3 CSV format's stored records change a book (``docs/venues/csv.md``).

``add`` rests an order; ``update`` sets its price and size to new absolute values (its queue
place kept only at the same price with a size that does not grow; removed at 0); ``delete``
removes it; ``trade`` takes the traded size off the resting order, which goes at 0 (the
trade price does not change the book). Orders are keyed by (side, order id): an id may rest
on both sides. Every record is a whole exchange event.

    >>> CsvRules().events([(7, "add", "42", "B", "229.13", "300", None)])
    [('add', 7, None, 128, None, '42', 'B', Decimal('229.13'), 300)]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NoReturn

from ledger.domain.events import LAST, Number, Record
from ledger.domain.projector import ADD, DELETE, FILL, MODIFY
from ledger.errors import StreamError
from ledger.venues._numbers import Numbers, kept_exact, unknown_kind

__all__ = ["CsvRules"]


class CsvRules:
    """Stored CSV records ``(seq, kind, order_id, side, price, size, ts)`` to typed events
    (plain tuples in the layout of :mod:`ledger.domain.events`: this runs once per event)."""

    #: Each stored kind's book operation, for :meth:`Projector.apply_stored
    #: <ledger.domain.projector.Projector.apply_stored>` (the projection's path: the rows
    #: applied as they are, no event made of them; :meth:`iter_events` makes the events).
    ops: Mapping[str, str] = MappingProxyType({"add": ADD, "update": MODIFY, "delete": DELETE, "trade": FILL})
    #: The rows carry no flags: every record is a whole event.
    flagged = False

    def __init__(self) -> None:
        self._number = Numbers()
        #: Stored price and size texts already made exact numbers (for apply_stored).
        self.known: dict[str, Number] = {}

    @staticmethod
    def number(known: dict[str, Number], value: Any, /) -> Any:
        """:func:`~ledger.venues._numbers.kept_exact` (None comes back as it is: the row is
        then refused)."""
        return kept_exact(known, value)

    def refuse(self, row: Sequence[Any], /) -> NoReturn:
        """Raise the error :meth:`iter_events` raises for ``row``."""
        self.events([row])
        raise StreamError(f"seq {row[0]}: a CSV record the rules refuse")  # (not reached)

    def events(self, rows: Iterable[Sequence[Any]]) -> list[Record]:
        return list(self.iter_events(rows))

    def iter_events(self, rows: Iterable[Sequence[Any]]) -> Iterator[Record]:
        number = self._number
        cached = number.get
        whole = LAST  # a local: cheaper than a global, read for every row
        for seq, kind, order_id, side, price_text, size_text, ts in rows:
            if kind == "delete":
                yield ("delete", seq, ts, whole, None, order_id, side, False)
                continue
            price = cached(price_text)
            if price is None:
                price = number(seq, price_text)
            size = cached(size_text)
            if size is None:
                size = number(seq, size_text)
            if kind == "add":
                yield ("add", seq, ts, whole, None, order_id, side, price, size)
            elif kind == "trade":  # the trade's price; the resting order loses size, and goes at 0
                yield ("fill", seq, ts, whole, None, order_id, side, price, size, False, None, None)
            elif kind == "update":
                yield ("modify", seq, ts, whole, None, order_id, side, price, size, None, False, False)
            else:
                unknown_kind(seq, kind, "the L3 CSV format")
