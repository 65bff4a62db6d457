"""The typed event model: what every venue's records become before they reach a book.

Each venue (``ledger/venues/<name>/``) turns its stored records into these events; the
projector (:mod:`ledger.domain.projector`) applies them to a :class:`~ledger.domain.book.Book`
with one L1 rule and one crossed-book rule, whatever the venue. ``docs/events.md`` describes
the model with one example per venue.

An event is a named tuple whose first fields are the same for every kind::

    (kind, seq, ts, flags, ts_event, ...the kind's own fields)

- ``kind``: ``"add"``, ``"modify"``, ``"reduce"``, ``"delete"``, ``"fill"``, ``"trade"``,
  ``"clear"``, ``"replace"`` or ``"mark"`` (one class each, below);
- ``seq``: its place in the stream (unique; replay order);
- ``ts``: when the record was received (what L1 rows carry); ``ts_event``: when the venue
  says it happened, where it says so (both a datetime, stored timestamptz text, or None);
- ``flags``: :data:`LAST` ends one exchange event (the records of one event are applied
  before the book is looked at: L1 rows, views and snapshots see only event ends); the
  quality marks :data:`BAD_TS_RECV` and :data:`MAYBE_BAD_BOOK`; :data:`SNAPSHOT` for the
  records of a venue's snapshot. The bits are Databento's, so its flags map one to one.

Prices and sizes are exact numbers (``int`` or :class:`decimal.Decimal`, at any scale; never
``float``); order ids are strings, so a 19-digit integer id and a Coinbase UUID are alike.
Build events with the lower-case constructors:

    >>> event = add(7, "42", BUY, Decimal("229.13"), 300)
    >>> event.kind, event.order_id, event.price, event.flags == LAST
    ('add', '42', Decimal('229.13'), True)
    >>> event == ("add", 7, None, LAST, None, "42", "B", Decimal("229.13"), 300)
    True

The projector takes any tuple laid out like one of these classes (:data:`Record`): the
venues' decoders, which make one event per stored record on the projector's hot path, build
plain tuples of the same layout, since CPython builds and indexes exact tuples several times
faster than tuple subclasses. A plain tuple equals the named tuple with the same items.
"""

from __future__ import annotations

from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded
from typing import Any, Final, Literal, NamedTuple, TypeAlias

__all__ = [
    "BAD_TS_RECV",
    "BUY",
    "EXACT",
    "LAST",
    "MAYBE_BAD_BOOK",
    "SELL",
    "SNAPSHOT",
    "Add",
    "Clear",
    "Delete",
    "Event",
    "Fill",
    "Mark",
    "Modify",
    "Number",
    "Record",
    "Reduce",
    "Replace",
    "Side",
    "Trade",
    "add",
    "clear",
    "delete",
    "fill",
    "mark",
    "modify",
    "reduce",
    "replace",
    "trade",
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

#: The last record of one exchange event: the book may be looked at after it.
LAST: Final = 1 << 7
#: A record of the venue's snapshot: a run of them replaces the book.
SNAPSHOT: Final = 1 << 5
#: The receive time is not reliable.
BAD_TS_RECV: Final = 1 << 3
#: The book may be wrong from here until the next clear or snapshot (the venue says so).
MAYBE_BAD_BOOK: Final = 1 << 2

#: Receive and event times: a datetime, PostgreSQL timestamptz text as stored, or None.
Time: TypeAlias = Any


class Add(NamedTuple):
    """A new order rests on the book, at the back of its level."""

    kind: Literal["add"]
    seq: int
    ts: Time
    flags: int
    ts_event: Time
    order_id: str
    side: Side
    price: Number
    size: Number


class Modify(NamedTuple):
    """A resting order gets a new absolute size and price (None: that one is unchanged).

    ``priority``: None is the common rule (the order keeps its place in the queue only when
    the price is the same and the size does not grow); True keeps its place at the same
    price whatever the size; False always sends it to the back. At size 0 the order is
    removed, unless ``keep_at_zero`` (it then rests at 0, outside the levels, until it is
    deleted). ``if_resting``: a modify of an order not on the book is normal for this
    venue (ignored, not an anomaly). ``side`` None: the order is found by its id alone."""

    kind: Literal["modify"]
    seq: int
    ts: Time
    flags: int
    ts_event: Time
    order_id: str
    side: Side | None
    price: Number | None
    size: Number | None
    priority: bool | None
    keep_at_zero: bool
    if_resting: bool


class Reduce(NamedTuple):
    """A resting order loses ``size`` (a partial cancel) and keeps its place; at 0 it goes."""

    kind: Literal["reduce"]
    seq: int
    ts: Time
    flags: int
    ts_event: Time
    order_id: str
    side: Side | None
    size: Number


class Delete(NamedTuple):
    """An order leaves the book. ``if_resting``: an order that never rested is normal for
    this venue (Coinbase announces the end of every order), not an anomaly."""

    kind: Literal["delete"]
    seq: int
    ts: Time
    flags: int
    ts_event: Time
    order_id: str
    side: Side | None
    if_resting: bool


class Fill(NamedTuple):
    """A resting order is executed against: ``size`` is taken off it (a trade that changes
    the book). At 0 the order goes, unless ``keep_at_zero`` (Coinbase: only its ``done``
    removes it). ``price`` is the execution price, which does not change the book;
    ``aggressor`` the side that took liquidity and ``taker_id`` its order, where known."""

    kind: Literal["fill"]
    seq: int
    ts: Time
    flags: int
    ts_event: Time
    order_id: str
    side: Side | None
    price: Number
    size: Number
    keep_at_zero: bool
    aggressor: Side | None
    taker_id: str | None


class Trade(NamedTuple):
    """An execution that does not change the book: the venue's other records of the same
    event carry the change (Databento's ``T`` and ``F``)."""

    kind: Literal["trade"]
    seq: int
    ts: Time
    flags: int
    ts_event: Time
    price: Number
    size: Number
    aggressor: Side | None
    order_id: str | None
    taker_id: str | None


class Clear(NamedTuple):
    """Every order leaves the book (Databento's ``R``)."""

    kind: Literal["clear"]
    seq: int
    ts: Time
    flags: int
    ts_event: Time


class Replace(NamedTuple):
    """An order is cancelled and a new id rests at a new price and size, at the back of its
    level (Nasdaq ITCH's replace)."""

    kind: Literal["replace"]
    seq: int
    ts: Time
    flags: int
    ts_event: Time
    order_id: str
    side: Side | None
    new_order_id: str
    price: Number
    size: Number


class Mark(NamedTuple):
    """A record that changes no order (Coinbase ``received``, ``activate``, ``noop``;
    Databento ``N``). It still has its seq, and its flags may end an event."""

    kind: Literal["mark"]
    seq: int
    ts: Time
    flags: int
    ts_event: Time


Event: TypeAlias = Add | Modify | Reduce | Delete | Fill | Trade | Clear | Replace | Mark

#: What the projector takes: an :data:`Event`, or a plain tuple laid out like one.
Record: TypeAlias = tuple[Any, ...]


def add(seq: int, order_id: str, side: Side, price: Number, size: Number, *, ts: Time = None,
        flags: int = LAST, ts_event: Time = None) -> Add:  # fmt: skip
    return Add("add", seq, ts, flags, ts_event, order_id, side, price, size)


def modify(
    seq: int,
    order_id: str,
    side: Side | None,
    price: Number | None,
    size: Number | None,
    *,
    priority: bool | None = None,
    keep_at_zero: bool = False,
    if_resting: bool = False,
    ts: Time = None,
    flags: int = LAST,
    ts_event: Time = None,
) -> Modify:
    return Modify("modify", seq, ts, flags, ts_event, order_id, side, price, size, priority, keep_at_zero, if_resting)


def reduce(seq: int, order_id: str, side: Side | None, size: Number, *, ts: Time = None, flags: int = LAST,
           ts_event: Time = None) -> Reduce:  # fmt: skip
    return Reduce("reduce", seq, ts, flags, ts_event, order_id, side, size)


def delete(seq: int, order_id: str, side: Side | None, *, if_resting: bool = False, ts: Time = None,
           flags: int = LAST, ts_event: Time = None) -> Delete:  # fmt: skip
    return Delete("delete", seq, ts, flags, ts_event, order_id, side, if_resting)


def fill(
    seq: int,
    order_id: str,
    side: Side | None,
    price: Number,
    size: Number,
    *,
    keep_at_zero: bool = False,
    aggressor: Side | None = None,
    taker_id: str | None = None,
    ts: Time = None,
    flags: int = LAST,
    ts_event: Time = None,
) -> Fill:
    return Fill("fill", seq, ts, flags, ts_event, order_id, side, price, size, keep_at_zero, aggressor, taker_id)


def trade(
    seq: int,
    price: Number,
    size: Number,
    *,
    aggressor: Side | None = None,
    order_id: str | None = None,
    taker_id: str | None = None,
    ts: Time = None,
    flags: int = LAST,
    ts_event: Time = None,
) -> Trade:
    return Trade("trade", seq, ts, flags, ts_event, price, size, aggressor, order_id, taker_id)


def clear(seq: int, *, ts: Time = None, flags: int = LAST, ts_event: Time = None) -> Clear:
    return Clear("clear", seq, ts, flags, ts_event)


def replace(seq: int, order_id: str, side: Side | None, new_order_id: str, price: Number, size: Number, *,
            ts: Time = None, flags: int = LAST, ts_event: Time = None) -> Replace:  # fmt: skip
    return Replace("replace", seq, ts, flags, ts_event, order_id, side, new_order_id, price, size)


def mark(seq: int, *, ts: Time = None, flags: int = LAST, ts_event: Time = None) -> Mark:
    return Mark("mark", seq, ts, flags, ts_event)
