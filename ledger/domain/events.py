"""Normalised L3 events: what every source is turned into before it reaches a book.

Events are frozen, slotted dataclasses; a book applies them with an explicit ``match`` on
their type (see :meth:`ledger.domain.book.Book.apply`). Prices and sizes are exact numbers
(``int`` or :class:`decimal.Decimal`, never ``float``); order ids are strings, so a 19-digit
integer id and a Coinbase UUID are handled alike.

    >>> Add(seq=7, order_id="42", side=BUY, price=Decimal("229.13"), size=300)
    Add(seq=7, order_id='42', side='B', price=Decimal('229.13'), size=300)
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded
from typing import Final, Literal, TypeAlias

__all__ = [
    "BUY",
    "EXACT",
    "SELL",
    "Add",
    "Delete",
    "Event",
    "Number",
    "Side",
    "Trade",
    "Update",
]

Side: TypeAlias = Literal["B", "S"]
BUY: Final = "B"
SELL: Final = "S"

#: An exact quantity: integer ticks/lots or a Decimal. Never float.
Number: TypeAlias = int | Decimal

#: The Decimal context books run under: wide enough that sums of inputs (at most 20
#: integer and 18 fractional digits) are exact, and loud (an exception) if one ever is not.
#: Python's default context keeps 28 digits and rounds silently.
EXACT: Final = Context(prec=80, traps=[Inexact, InvalidOperation, Overflow, Rounded])


@dataclass(frozen=True, slots=True)
class Add:
    """A new order rests on the book."""

    seq: int
    order_id: str
    side: Side
    price: Number
    size: Number


@dataclass(frozen=True, slots=True)
class Update:
    """An order's price and size are set to new absolute values."""

    seq: int
    order_id: str
    side: Side
    price: Number
    size: Number


@dataclass(frozen=True, slots=True)
class Delete:
    """An order leaves the book."""

    seq: int
    order_id: str
    side: Side


@dataclass(frozen=True, slots=True)
class Trade:
    """A resting order is executed against; ``size`` is taken off it.

    ``price`` is the execution price; it does not change the book.
    """

    seq: int
    order_id: str
    side: Side
    price: Number
    size: Number


Event: TypeAlias = Add | Update | Delete | Trade
