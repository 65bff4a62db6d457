"""Coinbase Exchange's compact ``level3`` channel: arrays laid out by the channel's schema.

The channel sends, once, ``{"type": "level3", "schema": {...}}`` naming the fields of each
compact type; every event after it is a JSON array in that layout. :class:`Level3Schema`
reads the schema message; :func:`level3_to_row` makes the event-log row of one array, with
the same checks and the same :class:`~ledger.venues.coinbase.codec.CoinbaseRow` as the full
channel. Its ``match`` and ``change`` carry no side, its ``done`` no side, price or size
(NULL), and ``noop`` (a message that changes no book) is a row of kind ``noop`` that keeps
the sequence contiguous.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

from ledger.venues.coinbase.codec import (
    CoinbaseRow,
    MessageError,
    _error,
    _head,
    _json_kind,
    _order_id,
    _price,
    _show,
    _side,
    _size,
    _Where,
)

__all__ = ["Level3Schema", "level3_to_row"]


class _Layout(NamedTuple):
    """Positions of one compact type's fields; -1 where the type has none."""

    kind: str  # the row kind, "" for a type this module does not store
    length: int
    product: int
    sequence: int
    time: int
    order_id: int
    side: int
    price: int
    size: int


# The fields each compact type must have besides type, product_id, sequence and time.
_LEVEL3_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "open": ("order_id", "side", "price", "size"),
    "change": ("order_id", "price", "size"),
    "match": ("maker_order_id", "price", "size"),
    "done": ("order_id",),
    "noop": (),
}


class Level3Schema:
    """Where each compact ``level3`` type keeps its fields, from the channel's schema message.

    ``{"type": "level3", "schema": {"open": ["type", "product_id", "sequence", "order_id",
    "side", "price", "size", "time"], ...}}``: build it once per connection with
    :meth:`from_message` and pass it to :func:`level3_to_row`. ``type`` must sit at the same
    position in every layout (it says which layout the rest follows).
    """

    __slots__ = ("_layouts", "_type_index", "fields")

    def __init__(self, schema: Mapping[str, Sequence[str]]) -> None:
        where: _Where = ("level3 schema", None, None)
        if not isinstance(schema, Mapping) or not schema:
            raise _error(where, "schema", "must be a non-empty JSON object of field lists")
        layouts: dict[str, _Layout] = {}
        type_index: int | None = None
        for kind, names in schema.items():
            if not isinstance(kind, str) or not isinstance(names, list | tuple):
                raise _error(where, f"schema[{kind!r}]", "must be a list of field names")
            if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
                raise _error(where, f"schema[{kind!r}]", f"must list distinct field names: {_show(names)}")
            position = {name: i for i, name in enumerate(names)}
            required = ("type", "product_id", "sequence", "time", *_LEVEL3_REQUIRED.get(kind, ()))
            missing = [name for name in required if name not in position]
            if missing:
                raise _error(where, f"schema[{kind!r}]", f"lacks {', '.join(missing)}")
            if type_index is not None and position["type"] != type_index:
                raise _error(where, f"schema[{kind!r}]", "puts 'type' where the other layouts do not")
            type_index = position["type"]
            order_field = "maker_order_id" if kind == "match" else "order_id"
            layouts[kind] = _Layout(
                kind if kind in _LEVEL3_REQUIRED else "",
                len(names),
                position["product_id"],
                position["sequence"],
                position["time"],
                position.get(order_field, -1),
                position.get("side", -1),
                position.get("price", -1),
                position.get("size", -1),
            )
        assert type_index is not None
        self._layouts = layouts
        self._type_index = type_index
        #: The schema as given: compact type -> field names.
        self.fields: dict[str, tuple[str, ...]] = {kind: tuple(names) for kind, names in schema.items()}

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Level3Schema:
        """From the decoded ``{"type": "level3", "schema": {...}}`` message."""
        if not isinstance(message, Mapping) or message.get("type") != "level3":
            raise MessageError("expected the level3 channel's schema message, with type 'level3'", field="type")
        schema = message.get("schema")
        if not isinstance(schema, Mapping):
            raise MessageError("level3 schema message: schema must be a JSON object", field="schema")
        return cls(schema)

    def __repr__(self) -> str:
        return f"Level3Schema({self.fields!r})"


def level3_to_row(array: Sequence[Any], raw: str, schema: Level3Schema | Mapping[str, Any]) -> CoinbaseRow | None:
    """The event-log row of one compact ``level3`` array, read by the channel's schema.

    ``schema`` is a :class:`Level3Schema` (fastest: build it once), the schema message, or
    its ``schema`` object. ``None`` for a type the schema lists but this module does not
    store; :class:`MessageError` for a type the schema does not list or a bad value.
    """
    if not isinstance(schema, Level3Schema):
        schema = Level3Schema.from_message(schema) if "schema" in schema else Level3Schema(schema)
    if not isinstance(array, list | tuple):
        raise MessageError(f"expected a level3 JSON array, found a JSON {_json_kind(array)}")
    kind = array[schema._type_index] if len(array) > schema._type_index else None
    layout = schema._layouts.get(kind) if type(kind) is str else None
    if layout is None:
        raise MessageError(f"level3 message: type {_show(kind)} is not one the channel's schema lists", field="type")
    if len(array) != layout.length:
        raise MessageError(
            f"level3 {kind} message: has {len(array)} fields, the schema gives {layout.length}", field="type"
        )
    if not layout.kind:
        return None
    product, seq, time = _head(f"level3 {kind}", array[layout.product], array[layout.sequence], array[layout.time])
    where = (f"level3 {kind}", product, seq)
    order_field = "maker_order_id" if kind == "match" else "order_id"
    return CoinbaseRow(
        product,
        seq,
        layout.kind,
        None if layout.order_id < 0 else _order_id(array[layout.order_id], order_field, where),
        None if layout.side < 0 else _side(array[layout.side], "side", where),
        None if layout.price < 0 else _price(array[layout.price], "price", where),
        None if layout.size < 0 else _size(array[layout.size], "size", where),
        time,
        raw,
    )
