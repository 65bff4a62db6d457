"""Coinbase Exchange feed codec: full-channel and compact ``level3`` messages to event-log rows.

Pure: no I/O, no database, no event loop. The websocket reader hands each frame to
:func:`decode` (orjson, a dependency; the standard library where it cannot be had), then
:func:`classify` says what the message is and :func:`to_row` makes the event-log row of a
sequenced event. A real full-channel message (``tests/data/coinbase``) and its row::

    >>> raw = ('{"type":"open","side":"sell","price":"2602.22000000",'
    ...        '"order_id":"26c22ff5-01b1-4ca3-859c-6349d6eb06b4","remaining_size":"0.10000000",'
    ...        '"product_id":"BTC-USD","sequence":3419023015,"time":"2017-06-25T11:23:14.792000Z"}')
    >>> message = decode(raw)
    >>> classify(message)
    'event'
    >>> to_row(message, raw)[:8]  # doctest: +NORMALIZE_WHITESPACE
    ('BTC-USD', 3419023015, 'open', '26c22ff5-01b1-4ca3-859c-6349d6eb06b4', 'S', '2602.22000000',
     '0.10000000', '2017-06-25T11:23:14.792000Z')

Rows (:class:`CoinbaseRow`; ``kind`` is the Coinbase type, side ``B``/``S``, prices and
sizes the exact decimal text as sent, ``None`` stored as NULL)::

    received  order_id, side, price (absent for market orders), size (absent for a market
              order by funds)
    open      order_id, side, price, size = remaining_size
    match     order_id = maker_order_id, side = the maker's side, price, size
              (taker_order_id is checked and stays in raw only)
    done      order_id, side, price and size = remaining_size when sent (market orders: none)
    change    order_id, side, price = new_price if sent else price (absent for market
              orders), size = new_size (absent for a market order's new_funds)
    activate  order_id, side, price = stop_price, size; Coinbase sends it without a
              sequence (and with a Unix ``timestamp`` instead of ``time``): no row then

Messages that are not sequenced events give no row (:func:`classify` names them):
``heartbeat`` (its sequence is that of the last event), ``subscriptions``, ``error``,
``status``, the ``level3`` schema message, and any other type (``unknown``).

The compact ``level3`` channel's arrays are read by :mod:`ledger.venues.coinbase.level3`
into the same rows; signing the subscribe request and REST calls is
:mod:`ledger.venues.coinbase.auth`.

Checks: sequence a JSON integer in 0..2**63-1; prices and sizes JSON strings holding a
plain decimal (at most 20 integer and 18 fractional digits; no exponent; sizes not
negative); times ISO-8601 UTC such as ``2017-06-25T11:23:14.792000Z`` (``Z`` or
``+00:00``, up to 9 fractional digits), kept as sent, which PostgreSQL reads as
``timestamptz``; order and product ids short ASCII words. A known event that fails a
check raises :class:`MessageError`, whose text names the field, the product and the
sequence (as far as they are valid).

Errors: :class:`~ledger.errors.MessageError` (a :class:`~ledger.errors.RecordError` of
:mod:`ledger.errors`, and a ValueError; importable from here too), for a frame or payload that
cannot be read, or a value that cannot be stored (``.field``, ``.product_id``, ``.sequence``
say where).

A row is stored by :mod:`ledger.storage.copy` (:func:`copy_row` gives its line of COPY text,
for tests and tools); :func:`rest_snapshot_rows` validates a REST ``book?level=3`` payload.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any, Final, Literal, NamedTuple, TypeAlias

from ledger.domain.events import Side
from ledger.errors import MessageError, RecordError
from ledger.storage.copy import event_row, events_payload

__all__ = [
    "EVENT_KINDS",
    "JSON_LIBRARY",
    "CoinbaseRow",
    "MessageClass",
    "MessageError",
    "classify",
    "copy_row",
    "decode",
    "decode_frame",
    "rest_snapshot_rows",
    "to_row",
]

#: The ``kind`` values of the rows this module makes.
EVENT_KINDS: Final = ("received", "open", "match", "done", "change", "activate", "noop")
#: What :func:`classify` answers.
MessageClass: TypeAlias = Literal["event", "heartbeat", "subscriptions", "error", "status", "schema", "unknown"]

_MAX_INT8: Final = 2**63 - 1
_SIDES: Final[dict[str, Side]] = {"buy": "B", "sell": "S"}
_PRICE = re.compile(r"-?[0-9]{1,20}(?:\.[0-9]{1,18})?").fullmatch
_SIZE = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,18})?").fullmatch
_ANY_DECIMAL = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?").fullmatch
_EXPONENT = re.compile(r"[+-]?[0-9.]*[eE][+-]?[0-9]*").fullmatch
_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.:-]{0,127}").fullmatch
_PRODUCT = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{0,63}").fullmatch
_TIME = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?(?:Z|\+00:00)"
).fullmatch
_UNIX_TIME = re.compile(r"([0-9]{1,11})(?:\.([0-9]{1,9}))?").fullmatch
_TIMESTAMP = re.compile(r"[0-9]{1,11}(?:\.[0-9]{1,6})?").fullmatch
_CLASSES: Final[dict[str, MessageClass]] = {
    "received": "event",
    "open": "event",
    "match": "event",
    "done": "event",
    "change": "event",
    "activate": "event",
    "heartbeat": "heartbeat",
    "subscriptions": "subscriptions",
    "error": "error",
    "status": "status",
    "level3": "schema",
}


# -- errors ----------------------------------------------------------------------------------


#: Where a value was read: (what message, product_id, sequence), the last two when valid.
_Where: TypeAlias = tuple[str, str | None, int | None]


def _error(where: _Where, field: str, problem: str) -> MessageError:
    what, product, sequence = where
    place = what
    if product is not None:
        place += f" of {product}"
    if sequence is not None:
        place += f" at sequence {sequence}"
    return MessageError(f"{place}: {field} {problem}", field=field, product_id=product, sequence=sequence)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


# -- decoding ----------------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _stdlib_loads(raw: bytes | str) -> Any:
    text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
    return json.loads(text, parse_constant=_refuse_constant)


def _pick_loads() -> tuple[str, Callable[[bytes | str], Any]]:
    try:
        import orjson
    except ImportError:  # a dependency, but a platform without a wheel may lack it: the same JSON, slower
        return "json", _stdlib_loads
    return "orjson", orjson.loads


#: The JSON decoder in use: "orjson" (a dependency), else "json" where it is missing.
JSON_LIBRARY, _loads = _pick_loads()


def _parse(raw: bytes | str) -> Any:
    try:
        return _loads(raw)
    except (ValueError, RecursionError) as e:  # orjson.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MessageError(f"not valid JSON: {e}") from e


def decode(raw: bytes | str) -> dict[str, Any]:
    """One full-channel message: a JSON object, else :class:`MessageError`."""
    value = _parse(raw)
    if not isinstance(value, dict):
        raise MessageError(f"expected a JSON object, found a JSON {_json_kind(value)}")
    return value


def decode_frame(raw: bytes | str) -> dict[str, Any] | list[Any]:
    """One websocket frame: a JSON object, or an array (the ``level3`` channel's events)."""
    value = _parse(raw)
    if not isinstance(value, dict | list):
        raise MessageError(f"expected a JSON object or array, found a JSON {_json_kind(value)}")
    return value


def classify(message: Mapping[str, Any]) -> MessageClass:
    """What a decoded message is: ``event`` (a full-channel event type), ``heartbeat``,
    ``subscriptions``, ``error``, ``status``, ``schema`` (the ``level3`` channel's schema)
    or ``unknown`` (any other or no type)."""
    kind = message.get("type")
    return _CLASSES.get(kind, "unknown") if type(kind) is str else "unknown"


class CoinbaseRow(NamedTuple):
    """One event-log row. ``None`` fields are stored as NULL; ``raw`` is the frame as received."""

    product_id: str
    seq: int
    kind: str
    order_id: str | None
    side: Side | None
    price: str | None
    size: str | None
    time: str
    raw: str


# -- value checks ------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _valid_day(day: str) -> bool:
    try:
        date.fromisoformat(day)
    except ValueError:
        return False
    return True


def _valid_time(text: str) -> bool:
    match = _TIME(text)
    return match is not None and _valid_day(match.group(1))


def _amount_problem(value: object, *, signed: bool) -> str:
    if value is None:
        return "is missing"
    if not isinstance(value, str):
        return f"must be a decimal string, not a JSON {_json_kind(value)} ({_show(value)})"
    if _EXPONENT(value):
        return f"uses an exponent, not a plain decimal number: {_show(value)}"
    match = _ANY_DECIMAL(value)
    if match is None:
        return f"is not a plain decimal number: {_show(value)}"
    if not signed and value.startswith("-"):
        return f"is negative: {_show(value)}"
    if len(match.group(1)) > 20:
        return f"has more than 20 integer digits: {_show(value)}"
    return f"has more than 18 fractional digits: {_show(value)}"


def _price(value: object, field: str, where: _Where) -> str:
    if type(value) is str and _PRICE(value) is not None:
        return value
    raise _error(where, field, _amount_problem(value, signed=True))


def _size(value: object, field: str, where: _Where) -> str:
    if type(value) is str and _SIZE(value) is not None:
        return value
    raise _error(where, field, _amount_problem(value, signed=False))


def _optional_price(value: object, field: str, where: _Where) -> str | None:
    return None if value is None else _price(value, field, where)


def _optional_size(value: object, field: str, where: _Where) -> str | None:
    return None if value is None else _size(value, field, where)


def _side(value: object, field: str, where: _Where) -> Side:
    side = _SIDES.get(value) if type(value) is str else None
    if side is not None:
        return side
    problem = "is missing" if value is None else f"must be 'buy' or 'sell', not {_show(value)}"
    raise _error(where, field, problem)


def _order_id(value: object, field: str, where: _Where) -> str:
    if type(value) is str and _ID(value) is not None:
        return value
    if value is None:
        raise _error(where, field, "is missing")
    if not isinstance(value, str):
        raise _error(where, field, f"must be a string, not a JSON {_json_kind(value)} ({_show(value)})")
    raise _error(where, field, f"is not an id of at most 128 letters, digits and '_.:-': {_show(value)}")


def _head(what: str, product: object, sequence: object, time: object) -> tuple[str, int, str]:
    """The product_id, sequence and time every sequenced message carries, checked."""
    if (
        type(product) is str
        and _PRODUCT(product) is not None
        and type(sequence) is int
        and 0 <= sequence <= _MAX_INT8
        and type(time) is str
        and _valid_time(time)
    ):
        return product, sequence, time
    good_product = product if type(product) is str and _PRODUCT(product) is not None else None
    good_sequence = sequence if type(sequence) is int and 0 <= sequence <= _MAX_INT8 else None
    where = (what, good_product, good_sequence)
    if good_product is None:
        if product is None:
            raise _error(where, "product_id", "is missing")
        raise _error(where, "product_id", f"is not a product id such as 'BTC-USD': {_show(product)}")
    if good_sequence is None:
        if sequence is None:
            raise _error(where, "sequence", "is missing")
        if type(sequence) is int:
            raise _error(where, "sequence", f"is out of range 0..2**63-1: {sequence}")
        raise _error(
            where, "sequence", f"must be a JSON integer, not a JSON {_json_kind(sequence)} ({_show(sequence)})"
        )
    raise _error(where, "time", _time_problem(time))


def _time_problem(value: object) -> str:
    if value is None:
        return "is missing"
    if not isinstance(value, str):
        return f"must be a string, not a JSON {_json_kind(value)} ({_show(value)})"
    if _TIME(value) is None:
        return f"is not an ISO-8601 UTC time like '2017-06-25T11:23:14.792000Z': {_show(value)}"
    return f"is not a valid date: {_show(value)}"


# -- full channel ------------------------------------------------------------------------------


# What each event type adds to the head (product_id, sequence, time): the field that holds
# the order id, and the row's price and size, checked.
_Fields: TypeAlias = tuple[str, str | None, str | None]


def _received(m: Mapping[str, Any], where: _Where) -> _Fields:
    market = m.get("order_type") == "market"
    price = _optional_price(m.get("price"), "price", where) if market else _price(m.get("price"), "price", where)
    if market and m.get("size") is None:
        _size(m.get("funds"), "funds", where)  # a market order by funds: no size
        return "order_id", price, None
    return "order_id", price, _size(m.get("size"), "size", where)


def _open(m: Mapping[str, Any], where: _Where) -> _Fields:
    return "order_id", _price(m.get("price"), "price", where), _size(m.get("remaining_size"), "remaining_size", where)


def _match(m: Mapping[str, Any], where: _Where) -> _Fields:
    _order_id(m.get("taker_order_id"), "taker_order_id", where)
    return "maker_order_id", _price(m.get("price"), "price", where), _size(m.get("size"), "size", where)


def _done(m: Mapping[str, Any], where: _Where) -> _Fields:
    price = _optional_price(m.get("price"), "price", where)
    return "order_id", price, _optional_size(m.get("remaining_size"), "remaining_size", where)


def _change(m: Mapping[str, Any], where: _Where) -> _Fields:
    new_price = m.get("new_price")
    price: str | None
    if new_price is not None:
        price = _price(new_price, "new_price", where)
    else:
        price = _optional_price(m.get("price"), "price", where)
    if m.get("new_size") is None and m.get("new_funds") is not None:
        _size(m["new_funds"], "new_funds", where)  # a market order's funds changed: no size
        return "order_id", price, None
    return "order_id", price, _size(m.get("new_size"), "new_size", where)


def _activate(m: Mapping[str, Any], where: _Where) -> _Fields:
    size = _optional_size(m.get("size"), "size", where)
    if size is None:
        _size(m.get("funds"), "funds", where)
    return "order_id", _optional_price(m.get("stop_price"), "stop_price", where), size


def _unix_time(value: object, where: _Where) -> str:
    """Unix seconds as text (``"1483736448.299000"``) to ISO-8601 UTC, without a float."""
    match = _UNIX_TIME(value) if isinstance(value, str) else None
    if match is None:
        raise _error(where, "timestamp", f"is not Unix seconds as a decimal string: {_show(value)}")
    whole = datetime.fromtimestamp(int(match.group(1)), UTC)
    fraction = (match.group(2) or "").ljust(9, "0")
    return whole.strftime("%Y-%m-%dT%H:%M:%S.") + fraction + "Z"


_PARSERS: Final[dict[str, Callable[[Mapping[str, Any], _Where], _Fields]]] = {
    "received": _received,
    "open": _open,
    "match": _match,
    "done": _done,
    "change": _change,
    "activate": _activate,
}


def to_row(message: Mapping[str, Any], raw: str) -> CoinbaseRow | None:
    """The event-log row of a full-channel event, or ``None`` for a message that is not one.

    ``raw`` is the frame as received, stored unchanged. A known event type with a missing
    or bad field raises :class:`MessageError`; so does a message with no ``type`` string.
    """
    if not isinstance(message, Mapping):
        raise MessageError(f"expected a JSON object, found a JSON {_json_kind(message)}")
    kind = message.get("type")
    if type(kind) is not str:
        problem = "is missing" if kind is None else f"must be a string, not a JSON {_json_kind(kind)}"
        raise MessageError(f"message: type {problem}", field="type")
    parse = _PARSERS.get(kind)
    if parse is None:
        return None
    time = message.get("time")
    if kind == "activate":
        if message.get("sequence") is None:
            return None  # as Coinbase sends it: no place in the sequence, and no book change
        if time is None and message.get("timestamp") is not None:
            time = _unix_time(message["timestamp"], ("activate", None, None))
    product, seq, time = _head(kind, message.get("product_id"), message.get("sequence"), time)
    where = (kind, product, seq)
    order_field, price, size = parse(message, where)
    return CoinbaseRow(
        product,
        seq,
        kind,
        _order_id(message.get(order_field), order_field, where),
        _side(message.get("side"), "side", where),
        price,
        size,
        time,
        raw,
    )


# -- storage -----------------------------------------------------------------------------------


def copy_row(row: CoinbaseRow, stream_id: int) -> bytes:
    """The row as one line of COPY text, stream id first, as :mod:`ledger.storage.copy`
    encodes it; :class:`MessageError` for a value PostgreSQL text cannot hold."""
    if type(stream_id) is not int or type(row.seq) is not int:
        raise MessageError(f"stream id and seq must be integers, not {_show(stream_id)} and {_show(row.seq)}")
    try:
        stored = event_row(row.seq, row.kind, row.order_id, row.side, row.price, row.size, row.time, row.raw)
    except RecordError as e:
        raise MessageError(str(e)) from e
    return events_payload(stream_id, [stored])


def rest_snapshot_rows(payload: Mapping[str, Any]) -> tuple[int, list[tuple[Side, str, str, str]]]:
    """The sequence of a REST ``GET /products/<id>/book?level=3`` payload and its orders as
    ``(side, price, size, order_id)``: bids then asks, each in the order given (best first,
    queue order within a price). :class:`MessageError` when it is not such a book."""
    if not isinstance(payload, Mapping):
        raise MessageError(f"level-3 book: expected a JSON object, found a JSON {_json_kind(payload)}")
    sequence = payload.get("sequence")
    if type(sequence) is not int or not 0 <= sequence <= _MAX_INT8:
        problem = "is missing" if sequence is None else f"must be a JSON integer in 0..2**63-1, not {_show(sequence)}"
        raise MessageError(f"level-3 book: sequence {problem}", field="sequence")
    rows: list[tuple[Side, str, str, str]] = []
    seen: set[str] = set()
    sides: tuple[tuple[str, Side], ...] = (("bids", "B"), ("asks", "S"))
    for name, side in sides:
        entries = payload.get(name)
        if not isinstance(entries, list):
            raise MessageError(f"level-3 book at sequence {sequence}: {name} must be a JSON array", field=name)
        for i, entry in enumerate(entries):
            if type(entry) is list and len(entry) == 3:
                price, size, order_id = entry
                if (
                    type(price) is str
                    and _PRICE(price) is not None
                    and type(size) is str
                    and _SIZE(size) is not None
                    and type(order_id) is str
                    and _ID(order_id) is not None
                    and order_id not in seen
                ):
                    seen.add(order_id)
                    rows.append((side, price, size, order_id))
                    continue
            raise _snapshot_entry_error(entry, (f"level-3 book, {name}[{i}]", None, sequence))
    return sequence, rows


def _snapshot_entry_error(entry: object, where: _Where) -> MessageError:
    """Why a level-3 book entry was refused (it failed the checks of the fast path)."""
    if not isinstance(entry, list) or len(entry) != 3:
        return _error(where, "entry", f"must be [price, size, order_id], not {_show(entry)}")
    price, size, order_id = entry
    if type(order_id) is not str:  # a level-2 entry ends with a number of orders
        return _error(where, "order_id", f"must be a string (is this a level=3 book?), not {_show(order_id)}")
    _order_id(order_id, "order_id", where)
    _price(price, "price", where)
    _size(size, "size", where)
    return _error(where, "order_id", f"appears twice in the book: {order_id}")
