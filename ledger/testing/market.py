"""The vocabulary of the local exchange: sides, messages, book views, errors, formats.

Shared by the matching engine (:mod:`ledger.testing.matching`), the order flow and the
server; nothing here matches orders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Final, Literal, NamedTuple, TypeAlias, TypedDict

__all__ = [
    "LEVEL3_SCHEMA",
    "Bbo",
    "BookEntry",
    "BookView",
    "Level3Message",
    "Level3Snapshot",
    "MatchingError",
    "Message",
    "OrderRejectedError",
    "RestingOrder",
    "Side",
    "SnapshotUnavailableError",
    "UnknownOrderError",
    "fixed_clock",
    "format_amount",
    "format_time",
]

Side: TypeAlias = Literal["buy", "sell"]
#: One full-channel message, ready for ``json.dumps``.
Message: TypeAlias = dict[str, str | int]
#: One compact ``level3`` channel message.
Level3Message: TypeAlias = list[str | int]

LEVEL3_SCHEMA: Final[dict[str, list[str]]] = {
    "change": ["type", "product_id", "sequence", "order_id", "price", "size", "time"],
    "done": ["type", "product_id", "sequence", "order_id", "time"],
    "match": ["type", "product_id", "sequence", "maker_order_id", "taker_order_id", "price", "size", "time"],
    "noop": ["type", "product_id", "sequence", "time"],
    "open": ["type", "product_id", "sequence", "order_id", "side", "price", "size", "time"],
}

_QUANTUM: Final = Decimal("0.00000001")
_ZERO: Final = Decimal(0)


class MatchingError(Exception):
    """Root of the engine's errors: a request the engine cannot carry out."""


class UnknownOrderError(MatchingError, KeyError):
    """The order is not resting on this product's book."""


class OrderRejectedError(MatchingError, ValueError):
    """The request is malformed or not allowed (bad side/price/size, crossing modify, no-op)."""


class SnapshotUnavailableError(MatchingError, LookupError):
    """The book at that sequence is older than the history the engine keeps, or in the future."""


class Level3Snapshot(TypedDict):
    """The payload of ``GET /products/<id>/book?level=3``."""

    sequence: int
    bids: list[list[str]]
    asks: list[list[str]]


class BookEntry(NamedTuple):
    price: Decimal
    size: Decimal
    order_id: str


class BookView(NamedTuple):
    """The engine's book: per side, every order in queue order (bids best first)."""

    sequence: int
    bids: tuple[BookEntry, ...]
    asks: tuple[BookEntry, ...]


class Bbo(NamedTuple):
    """Best bid and ask (price, total size at that price) after the message ``sequence``."""

    sequence: int
    bid_price: Decimal | None
    bid_size: Decimal | None
    ask_price: Decimal | None
    ask_size: Decimal | None


@dataclass(frozen=True, slots=True)
class RestingOrder:
    """An order on the book. ``priority`` orders the queue within a price level."""

    order_id: str
    side: Side
    price: Decimal
    size: Decimal
    priority: int
    profile_id: str


def format_amount(value: Decimal) -> str:
    """A price or size as Coinbase wrote them in 2017: 8 decimals, ``"2602.22000000"``."""
    return f"{value.quantize(_QUANTUM):f}"


def format_time(moment: datetime) -> str:
    """ISO-8601 UTC with microseconds and ``Z``: ``"2017-06-25T11:23:14.792000Z"``."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: give a timezone-aware time")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fixed_clock(start: datetime | None = None, step: timedelta = timedelta(milliseconds=1)) -> Callable[[], datetime]:
    """A deterministic clock for tests: ``start`` then one ``step`` later at every call."""
    moment = start or datetime(2017, 6, 25, 11, 23, 14, tzinfo=UTC)

    def tick() -> datetime:
        nonlocal moment
        now = moment
        moment += step
        return now

    return tick


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _side(value: str) -> Side:
    if value == "buy":
        return "buy"
    if value == "sell":
        return "sell"
    raise OrderRejectedError(f"side must be 'buy' or 'sell', not {value!r}")


def _amount(value: Decimal | str | int, what: str) -> Decimal:
    if isinstance(value, float | bool):
        raise OrderRejectedError(f"{what} {value!r}: give a Decimal, str or int, never a float")
    try:
        number = value if isinstance(value, Decimal) else Decimal(value)
    except InvalidOperation as e:
        raise OrderRejectedError(f"{what} {value!r} is not a number") from e
    if not number.is_finite() or number <= 0:
        raise OrderRejectedError(f"{what} must be positive, not {value!r}")
    if number != number.quantize(_QUANTUM):
        raise OrderRejectedError(f"{what} {value!r} has more than 8 decimals")
    return number.quantize(_QUANTUM)
