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

from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NoReturn

from ledger.domain.events import Number, Record
from ledger.domain.projector import ADD, CLEAR, MARK, MODIFY, PRICED, REDUCE
from ledger.errors import StreamError
from ledger.venues._numbers import kept_exact, unknown_kind

__all__ = ["DatabentoRules"]

_OTHER_SIDE = {"B": "S", "S": "B", None: None}


class DatabentoRules:
    """Stored Databento rows ``(seq, kind, order_id, side, price, size, ts, flags, ts_event,
    ...)`` (the fields after ``ts_event`` are not read) to typed events in the layout of
    :mod:`ledger.domain.events`. ``price`` and ``size`` may be numbers (a row made in memory
    by :func:`~ledger.venues.databento.dbn.stored_rows`) or their text (a row read back from
    the event log); ``ts`` and ``ts_event`` are passed on as they come."""

    #: Each stored kind's book operation, for :meth:`Projector.apply_stored
    #: <ledger.domain.projector.Projector.apply_stored>` (the projection's path: the rows
    #: applied as they are, no event made of them; :meth:`iter_events` makes the events).
    ops: Mapping[str, str] = MappingProxyType(
        {"add": ADD, "cancel": REDUCE, "modify": MODIFY, "fill": PRICED, "trade": PRICED, "none": MARK, "clear": CLEAR}
    )
    #: The rows carry each record's flags (a record may be part of an event).
    flagged = True

    def __init__(self) -> None:
        #: Stored price and size texts already made exact numbers (:func:`~ledger.venues._numbers.kept_exact`).
        self.known: dict[str, Number] = {}

    @staticmethod
    def number(known: dict[str, Number], value: Any, /) -> Any:
        return kept_exact(known, value)

    def refuse(self, row: Sequence[Any], /) -> NoReturn:
        """Raise the error :meth:`iter_events` raises for ``row``."""
        self.events([row])
        raise StreamError(f"seq {row[0]}: a Databento record the rules refuse")  # (not reached)

    def events(self, rows: Iterable[Sequence[Any]]) -> list[Record]:
        return list(self.iter_events(rows))

    def iter_events(self, rows: Iterable[Sequence[Any]]) -> Iterator[Record]:
        # A price or size is looked up in a plain dict (the lookup CPython specialises; a
        # miss is rare: a book sees the same few hundred texts over and over) and made on a
        # miss by kept_exact, which gives a number (a row made in memory) or None back as it is.
        known = self.known
        for row in rows:
            try:  # a row as the log returns it: exactly the nine fields read
                seq, kind, order_id, side, price, size, ts, flags, ts_event = row
            except ValueError:
                seq, kind, order_id, side, price, size, ts, flags, ts_event = row[:9]
            try:
                size = known[size]
            except KeyError:
                size = kept_exact(known, size)
            if kind == "add":
                try:
                    price = known[price]
                except KeyError:
                    price = kept_exact(known, price)
                if side is None or price is None:
                    raise StreamError(f"seq {seq}: a Databento add without a side or a price")
                yield ("add", seq, ts, flags, ts_event, order_id, side, price, size)
            elif kind == "cancel":  # the size cancelled: a partial cancel keeps the order's place
                yield ("reduce", seq, ts, flags, ts_event, order_id, side, size)
            elif kind == "modify":  # new absolute price and size; the common priority rule
                try:
                    price = known[price]
                except KeyError:
                    price = kept_exact(known, price)
                yield ("modify", seq, ts, flags, ts_event, order_id, side, price, size, None, False, False)
            elif kind == "fill":  # the resting order's side; the book changes by the event's C or M
                try:
                    price = known[price]
                except KeyError:
                    price = kept_exact(known, price)
                yield ("trade", seq, ts, flags, ts_event, price, size, _OTHER_SIDE[side], order_id, None)
            elif kind == "trade":  # the aggressor's side and, where known, its order
                try:
                    price = known[price]
                except KeyError:
                    price = kept_exact(known, price)
                yield ("trade", seq, ts, flags, ts_event, price, size, side, None, order_id)
            elif kind == "none":
                yield ("mark", seq, ts, flags, ts_event)
            elif kind == "clear":
                yield ("clear", seq, ts, flags, ts_event)
            else:
                unknown_kind(seq, kind, "Databento MBO")
