"""The Coinbase codec (ledger.venues.coinbase.codec): real 2017 messages, the local exchange's
full-channel and level3 messages, refusals, COPY rows, REST books and the signed subscribe.

No database. Books rebuilt from rows are compared with the matching engine's own book
through :class:`RowBook`, a naive book written here from the full-channel rules.
"""

from __future__ import annotations

import asyncio
import base64
import doctest
import hashlib
import hmac
import json
import random
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ledger.testing import LEVEL3_SCHEMA, Credentials, LocalExchange, MatchingEngine, RandomOrderFlow, fixed_clock, sign
from ledger.venues.coinbase import codec as coinbase
from ledger.venues.coinbase.auth import subscribe_message
from ledger.venues.coinbase.codec import (
    CoinbaseRow,
    MessageError,
    classify,
    copy_row,
    decode,
    decode_frame,
    rest_snapshot_rows,
    to_row,
)
from ledger.venues.coinbase.level3 import Level3Schema, level3_to_row

REAL = Path(__file__).parent / "data" / "coinbase" / "full_channel_2017-06-25_excerpt.jsonl"
SCHEMA = Level3Schema(LEVEL3_SCHEMA)
OPEN = {
    "type": "open",
    "side": "sell",
    "price": "2602.22000000",
    "order_id": "26c22ff5-01b1-4ca3-859c-6349d6eb06b4",
    "remaining_size": "0.10000000",
    "product_id": "BTC-USD",
    "sequence": 3419023015,
    "time": "2017-06-25T11:23:14.792000Z",
}
MATCH = {
    "type": "match",
    "trade_id": 7,
    "maker_order_id": "ac928c66-ca53-498f-9c13-a110027a60e8",
    "taker_order_id": "132fb6ae-456b-4654-b4e0-d681ac05cea1",
    "side": "buy",
    "size": "0.40000000",
    "price": "2600.00000000",
    "product_id": "BTC-USD",
    "sequence": 50,
    "time": "2017-06-25T11:23:15.000001Z",
}


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _row(message: dict[str, Any]) -> CoinbaseRow | None:
    raw = _dumps(message)
    return to_row(decode(raw), raw)


def test_the_module_docstring_example_runs() -> None:
    result = doctest.testmod(coinbase)
    assert result.attempted >= 3 and result.failed == 0


# -- real messages ---------------------------------------------------------------------------


def test_every_real_message_decodes_into_the_row_it_says() -> None:
    lines = REAL.read_text().splitlines()
    assert len(lines) == 23
    rows: list[CoinbaseRow] = []
    for line in lines:
        message = decode(line.encode())  # bytes, as a websocket may hand them over
        assert decode(line) == message
        row = to_row(message, line)
        if message["type"] == "heartbeat":
            assert classify(message) == "heartbeat" and row is None
            continue
        assert classify(message) == "event" and row is not None
        assert row.raw == line and row.kind == message["type"] and row.product_id == message["product_id"]
        rows.append(row)
    assert rows[0] == CoinbaseRow(
        "BTC-USD",
        3419023013,
        "done",
        "4eef1226-4b38-422c-a5b1-56def7107f9a",
        "S",
        "2601.76000000",
        "3.09000000",
        "2017-06-25T11:23:14.775000Z",
        lines[0],
    )
    by_seq = {(r.product_id, r.seq): r[2:8] for r in rows}
    assert by_seq[("ETH-USD", 617133251)] == (
        "open",
        "c1ac921c-021f-446d-ad6f-06057a6c17f5",
        "B",
        "309.41000000",
        "0.01495400",
        "2017-06-25T11:23:14.864000Z",
    )
    assert by_seq[("ETH-USD", 617133252)] == (
        "received",
        "cc8b3a22-e0f4-4c34-ba35-743fec10cd5c",
        "S",
        "309.77000000",
        "3.00000000",
        "2017-06-25T11:23:14.892000Z",
    )
    assert by_seq[("ETH-USD", 617133261)] == (
        "done",
        "e928ecbb-d920-4753-aef4-4911036b42f3",
        "B",
        "302.22000000",
        "14.64853000",
        "2017-06-25T11:23:14.934000Z",
    )
    assert by_seq[("BTC-USD", 3419023022)][:4] == ("open", "c72b9f87-263f-4207-a571-e5698cc63eeb", "S", "2599.40000000")
    assert sorted(s for p, s in by_seq if p == "BTC-USD") == list(range(3419023013, 3419023023))
    assert sorted(s for p, s in by_seq if p == "ETH-USD") == list(range(617133250, 617133262))
    assert {r.kind for r in rows} == {"received", "open", "done"}


# -- the local exchange's messages -----------------------------------------------------------


class RowBook:
    """A naive L3 book fed with rows: orders by id with a priority counter for queue order."""

    def __init__(self) -> None:
        self.orders: dict[str, tuple[str, Decimal, Decimal, int]] = {}
        self.clock = 0

    def apply(self, row: CoinbaseRow) -> None:
        order = self.orders.get(row.order_id or "")
        if row.kind == "open":
            assert row.order_id and row.side and row.price and row.size and order is None
            self.clock += 1
            self.orders[row.order_id] = (row.side, Decimal(row.price), Decimal(row.size), self.clock)
        elif order is None or row.order_id is None:
            return  # done, match or change of an order that never rested; received; noop
        elif row.kind == "match":
            assert row.size is not None and row.price is not None and Decimal(row.price) == order[1]
            left = order[2] - Decimal(row.size)
            if left > 0:
                self.orders[row.order_id] = (order[0], order[1], left, order[3])
            else:
                del self.orders[row.order_id]
        elif row.kind == "done":
            del self.orders[row.order_id]
        elif row.kind == "change":
            assert row.size is not None
            price = order[1] if row.price is None else Decimal(row.price)
            size = Decimal(row.size)
            if price != order[1] or size > order[2]:
                self.clock += 1
                self.orders[row.order_id] = (order[0], price, size, self.clock)
            else:
                self.orders[row.order_id] = (order[0], price, size, order[3])

    def view(self, side: str) -> list[tuple[Decimal, Decimal, str]]:
        orders = [(p, s, oid, prio) for oid, (sd, p, s, prio) in self.orders.items() if sd == side]
        orders.sort(key=lambda o: (-o[0] if side == "B" else o[0], o[3]))
        return [o[:3] for o in orders]


def _expected(m: dict[str, Any]) -> tuple[Any, ...]:
    """(kind, order_id, side, price, size) the row of ``m`` must carry, from the message shapes."""
    side = {"buy": "B", "sell": "S"}[m["side"]]
    kind = m["type"]
    if kind == "received":
        return kind, m["order_id"], side, m.get("price"), m["size"]
    if kind == "open":
        return kind, m["order_id"], side, m["price"], m["remaining_size"]
    if kind == "match":
        return kind, m["maker_order_id"], side, m["price"], m["size"]
    if kind == "done":
        return kind, m["order_id"], side, m.get("price"), m.get("remaining_size")
    assert kind == "change"
    return kind, m["order_id"], side, m.get("new_price", m.get("price")), m["new_size"]


def _permuted(schema: dict[str, list[str]], rng: random.Random) -> dict[str, list[str]]:
    """The same layouts in another field order, with 'type' moved off the front everywhere."""
    out = {}
    for kind, names in schema.items():
        rest = [n for n in names if n != "type"]
        rng.shuffle(rest)
        out[kind] = [rest[0], "type", *rest[1:]]
    return out


@pytest.mark.parametrize("seed", [1, 7])
def test_engine_messages_and_level3_arrays_become_rows_that_rebuild_the_book(seed: int) -> None:
    engine = MatchingEngine("BTC-USD", start_sequence=5_000, seed=seed, clock=fixed_clock())
    flow = RandomOrderFlow(engine, random.Random(seed))
    rng = random.Random(seed)
    permuted = _permuted(LEVEL3_SCHEMA, rng)
    permuted_schema = Level3Schema.from_message(decode(_dumps({"type": "level3", "schema": permuted})))
    full_book, compact_book = RowBook(), RowBook()
    seen: set[str] = set()
    for step in flow.steps(300):
        for m in step:
            raw = _dumps(m)
            message = decode(raw)
            row = to_row(message, raw)
            assert row is not None and classify(message) == "event"
            assert row.product_id == "BTC-USD" and row.seq == m["sequence"] and row.time == m["time"]
            assert row.raw == raw and row[2:7] == _expected(m)
            array = engine.level3_message(int(m["sequence"]))
            compact_raw = _dumps(array)
            frame = decode_frame(compact_raw)
            assert isinstance(frame, list)
            compact = level3_to_row(frame, compact_raw, SCHEMA)
            assert compact is not None
            assert compact.seq == row.seq and compact.time == row.time and compact.raw == compact_raw
            if compact.kind == "noop":
                assert row.kind in ("received", "change", "done")
                assert compact[3:7] == (None, None, None, None)
            else:
                assert compact.kind == row.kind and compact.order_id == row.order_id
                if row.kind == "done":
                    assert (compact.side, compact.price, compact.size) == (None, None, None)
                elif row.kind == "open":
                    assert compact[4:7] == row[4:7]
                else:  # match and change: no side in level3
                    assert compact.side is None and (compact.price, compact.size) == (row.price, row.size)
            order = {name: i for i, name in enumerate(LEVEL3_SCHEMA[str(array[0])])}
            reordered = [array[order[name]] for name in permuted[str(array[0])]]
            assert level3_to_row(reordered, compact_raw, permuted_schema) == compact
            seen.add(f"{row.kind}/{compact.kind}:{m.get('reason', m.get('order_type', ''))}:{row.price is None}")
            full_book.apply(row)
            compact_book.apply(compact)
        view = engine.book()
        expected = {
            side: [(e.price, e.size, e.order_id) for e in entries]
            for side, entries in (("B", view.bids), ("S", view.asks))
        }
        assert {"B": full_book.view("B"), "S": full_book.view("S")} == expected
        assert {"B": compact_book.view("B"), "S": compact_book.view("S")} == expected
    for case in (
        "received/noop:limit:False",
        "received/noop:market:True",  # a market order: no price
        "open/open::False",
        "match/match::False",
        "done/done:filled:False",
        "done/done:canceled:False",
        "done/noop:filled:True",  # a market order's done: no price, no size
        "change/change:STP:False",
        "change/noop:STP:False",  # STP on a taker that never rested
        "change/change:modify_order:False",
    ):
        assert case in seen, case


def test_a_level3_schema_is_read_by_name_and_checked() -> None:
    with_extra = {**LEVEL3_SCHEMA, "received": ["type", "product_id", "sequence", "order_id", "time"]}
    schema = Level3Schema(with_extra)
    array = ["received", "BTC-USD", 9, "x1", "2017-06-25T11:23:14.792000Z"]
    assert level3_to_row(array, _dumps(array), schema) is None  # listed, but not a kind stored
    done = ["done", "BTC-USD", 10, "x1", "2017-06-25T11:23:14.792000Z"]
    assert level3_to_row(done, _dumps(done), {"type": "level3", "schema": LEVEL3_SCHEMA}) == CoinbaseRow(
        "BTC-USD", 10, "done", "x1", None, None, None, "2017-06-25T11:23:14.792000Z", _dumps(done)
    )
    noop = ["noop", "BTC-USD", 11, "2017-06-25T11:23:14.792000Z"]
    assert level3_to_row(noop, "r", LEVEL3_SCHEMA) == CoinbaseRow(
        "BTC-USD", 11, "noop", None, None, None, None, "2017-06-25T11:23:14.792000Z", "r"
    )
    with pytest.raises(MessageError, match="'ticker' is not one the channel's schema lists"):
        level3_to_row(["ticker", "BTC-USD", 12, "2017-06-25T11:23:14Z"], "r", SCHEMA)
    with pytest.raises(MessageError, match="has 5 fields, the schema gives 4"):
        level3_to_row([*noop, "extra"], "r", SCHEMA)
    with pytest.raises(MessageError, match=r"level3 open of BTC-USD at sequence 13: side must be 'buy' or 'sell'"):
        level3_to_row(["open", "BTC-USD", 13, "x", "BUY", "1.0", "1.0", "2017-06-25T11:23:14Z"], "r", SCHEMA)
    with pytest.raises(MessageError, match="expected a level3 JSON array"):
        level3_to_row({"type": "noop"}, "r", SCHEMA)  # type: ignore[arg-type]
    with pytest.raises(MessageError, match=r"schema\['open'\] lacks side, price"):
        Level3Schema({"open": ["type", "product_id", "sequence", "order_id", "size", "time"]})
    with pytest.raises(MessageError, match="puts 'type' where the other layouts do not"):
        Level3Schema(
            {
                "noop": ["type", "product_id", "sequence", "time"],
                "done": ["order_id", "type", "product_id", "sequence", "time"],
            }
        )
    with pytest.raises(MessageError, match="distinct field names"):
        Level3Schema({"noop": ["type", "product_id", "sequence", "time", "time"]})
    with pytest.raises(MessageError, match="type 'level3'"):
        Level3Schema.from_message({"type": "subscriptions"})


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('{"type":"open",', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        ("", "not valid JSON"),
        ('{"type":"open","price":NaN}', "not valid JSON"),
        ("[1, 2]", "expected a JSON object, found a JSON array"),
        ('"open"', "expected a JSON object, found a JSON string"),
        ("42", "expected a JSON object, found a JSON number"),
        ("null", "expected a JSON object, found a JSON null"),
    ],
)
@pytest.mark.parametrize("decoder", ["default", "stdlib"])
def test_malformed_json_and_non_objects_are_refused(
    raw: str | bytes, reason: str, decoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if decoder == "stdlib":  # the fallback used when orjson is not installed
        monkeypatch.setattr(coinbase, "_loads", coinbase._stdlib_loads)
    with pytest.raises(MessageError, match=reason):
        decode(raw)


def test_the_stdlib_fallback_reads_what_orjson_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = REAL.read_text().splitlines()
    fast = [decode(line) for line in lines]
    monkeypatch.setattr(coinbase, "_loads", coinbase._stdlib_loads)
    assert [decode(line.encode()) for line in lines] == fast
    with pytest.raises(MessageError, match="not valid JSON"):
        decode("[" * 100_000)  # too deep for the standard library's recursion


def test_decode_frame_takes_level3_arrays_but_no_scalars() -> None:
    assert decode_frame('["noop","BTC-USD",1,"2017-06-25T11:23:14Z"]') == ["noop", "BTC-USD", 1, "2017-06-25T11:23:14Z"]
    with pytest.raises(MessageError, match="JSON object or array, found a JSON number"):
        decode_frame("1.5")
    assert coinbase.JSON_LIBRARY in ("orjson", "json")


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (OPEN, "order_id"),
        (OPEN, "side"),
        (OPEN, "price"),
        (OPEN, "remaining_size"),
        (OPEN, "time"),
        (MATCH, "maker_order_id"),
        (MATCH, "taker_order_id"),
        (MATCH, "side"),
        (MATCH, "price"),
        (MATCH, "size"),
        ({**OPEN, "type": "received", "size": "1.0", "order_type": "limit"}, "price"),
        ({**OPEN, "type": "received", "size": "1.0", "order_type": "limit"}, "size"),
        ({**OPEN, "type": "done", "reason": "canceled"}, "order_id"),
        ({**OPEN, "type": "change", "new_size": "0.2"}, "new_size"),
    ],
)
def test_a_missing_field_is_named_with_product_and_sequence(message: dict[str, Any], field: str) -> None:
    broken = {k: v for k, v in message.items() if k != field}
    with pytest.raises(MessageError) as caught:
        _row(broken)
    error = caught.value
    assert error.field == field and error.product_id == "BTC-USD" and error.sequence == message["sequence"]
    assert str(error) == f"{message['type']} of BTC-USD at sequence {message['sequence']}: {field} is missing"


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("price", "1e5", "uses an exponent"),
        ("price", "2.6E+3", "uses an exponent"),
        ("price", 2602.22, "must be a decimal string, not a JSON number"),
        ("price", 2602, "must be a decimal string, not a JSON number"),
        ("price", "1" * 21, "has more than 20 integer digits"),
        ("price", "1." + "1" * 19, "has more than 18 fractional digits"),
        ("price", "NaN", "is not a plain decimal number"),
        ("price", "Infinity", "is not a plain decimal number"),
        ("price", "", "is not a plain decimal number"),
        ("price", " 1.0", "is not a plain decimal number"),
        ("price", "1.", "is not a plain decimal number"),
        ("price", ".5", "is not a plain decimal number"),
        ("price", "+1.5", "is not a plain decimal number"),
        ("price", "0x10", "is not a plain decimal number"),
        ("price", "١٢", "is not a plain decimal number"),  # Arabic-Indic digits
        ("remaining_size", "-0.1", "is negative"),
        ("remaining_size", None, "is missing"),
        ("sequence", "3419023015", "must be a JSON integer, not a JSON string"),
        ("sequence", -1, "is out of range"),
        ("sequence", 2**63, "is out of range"),
        ("sequence", True, "must be a JSON integer, not a JSON boolean"),
        ("sequence", 1.5, "must be a JSON integer, not a JSON number"),
        ("time", "2017-06-25 11:23:14.792000Z", "is not an ISO-8601 UTC time"),
        ("time", "2017-06-25T11:23:14.792000", "is not an ISO-8601 UTC time"),
        ("time", "2017-06-25T11:23:14.792000+02:00", "is not an ISO-8601 UTC time"),
        ("time", "2017-06-25T24:00:00Z", "is not an ISO-8601 UTC time"),
        ("time", "2017-02-30T11:23:14Z", "is not a valid date"),
        ("time", 1498389794, "must be a string, not a JSON number"),
        ("side", "BUY", "must be 'buy' or 'sell'"),
        ("order_id", 42, "must be a string, not a JSON number"),
        ("order_id", "a\tb", "is not an id"),
        ("product_id", "BTC USD", "is not a product id"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(field: str, value: object, problem: str) -> None:
    with pytest.raises(MessageError, match=problem) as caught:
        _row({**OPEN, field: value})
    assert caught.value.field == field
    assert f" {field} " in str(caught.value)


def test_values_within_the_limits_are_kept_exactly_as_sent() -> None:
    row = _row({**OPEN, "price": "9" * 20 + "." + "1" * 18, "remaining_size": "0", "time": "2017-06-25T11:23:14Z"})
    assert row is not None and row.price == "9" * 20 + "." + "1" * 18 and row.size == "0"
    row = _row({**OPEN, "price": "-1.5", "time": "2017-06-25T11:23:14.123456789+00:00"})
    assert row is not None and row.price == "-1.5"  # prices may be negative (as in the CSV source); sizes not
    assert row.time == "2017-06-25T11:23:14.123456789+00:00"


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ({"type": "heartbeat", "last_trade_id": 1, "product_id": "BTC-USD", "sequence": 5, "time": "t"}, "heartbeat"),
        ({"type": "subscriptions", "channels": [{"name": "full", "product_ids": ["BTC-USD"]}]}, "subscriptions"),
        ({"type": "error", "message": "Failed to subscribe", "reason": "x"}, "error"),
        ({"type": "status", "products": [], "currencies": []}, "status"),
        ({"type": "level3", "schema": LEVEL3_SCHEMA}, "schema"),
        ({"type": "ticker", "product_id": "BTC-USD", "sequence": 5, "price": "1e5"}, "unknown"),
        ({"type": "l2update", "product_id": "BTC-USD", "changes": []}, "unknown"),
        ({"type": "last_match", **{k: v for k, v in MATCH.items() if k != "type"}}, "unknown"),
    ],
)
def test_messages_that_are_not_events_give_no_row(message: dict[str, Any], kind: str) -> None:
    assert classify(message) == kind
    assert _row(message) is None


def test_a_message_without_a_type_is_unknown_and_refused() -> None:
    assert classify({"product_id": "BTC-USD"}) == "unknown" == classify({"type": ["open"]})
    with pytest.raises(MessageError, match="type is missing"):
        _row({k: v for k, v in OPEN.items() if k != "type"})
    with pytest.raises(MessageError, match="type must be a string, not a JSON array"):
        _row({**OPEN, "type": ["open"]})


def test_market_orders_by_funds_and_activate_messages() -> None:
    received = {**OPEN, "type": "received", "order_type": "market", "funds": "3000.234"}
    del received["price"], received["remaining_size"]
    row = _row(received)
    assert row is not None and (row.kind, row.side, row.price, row.size) == ("received", "S", None, None)
    with pytest.raises(MessageError, match="funds is missing"):
        _row({k: v for k, v in received.items() if k != "funds"})
    change = {**OPEN, "type": "change", "new_funds": "5.23512", "old_funds": "12.234412", "price": "400.23"}
    row = _row(change)
    assert row is not None and (row.kind, row.price, row.size) == ("change", "400.23", None)
    activate = {
        "type": "activate",
        "product_id": "BTC-USD",
        "timestamp": "1483736448.299000",
        "order_id": "7b52009b-64fd-0a2a-49e6-d8a939753077",
        "stop_type": "entry",
        "side": "buy",
        "stop_price": "80",
        "size": "2",
        "funds": "50",
        "private": True,
    }
    assert classify(activate) == "event" and _row(activate) is None  # as Coinbase sends it: no sequence
    row = _row({**activate, "sequence": 77})
    assert row == CoinbaseRow(
        "BTC-USD",
        77,
        "activate",
        "7b52009b-64fd-0a2a-49e6-d8a939753077",
        "B",
        "80",
        "2",
        "2017-01-06T21:00:48.299000000Z",
        _dumps({**activate, "sequence": 77}),
    )
    with pytest.raises(MessageError, match="timestamp is not Unix seconds"):
        _row({**activate, "sequence": 77, "timestamp": "1e9"})


# -- COPY rows -------------------------------------------------------------------------------


def _parse_copy_line(line: bytes) -> list[str | None]:
    """PostgreSQL COPY text format, read back independently: split on tabs, then unescape."""
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    unescape = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r", "b": "\b", "f": "\f", "v": "\v"}
    cells: list[str | None] = []
    for cell in line[:-1].decode("utf-8").split("\t"):
        if cell == "\\N":
            cells.append(None)
            continue
        out, i = [], 0
        while i < len(cell):
            if cell[i] == "\\":
                out.append(unescape[cell[i + 1]])
                i += 2
            else:
                out.append(cell[i])
                i += 1
        cells.append("".join(out))
    return cells


@pytest.mark.parametrize(
    "raw",
    [
        _dumps(OPEN),
        "a\ttab and a\\backslash\nnewline\r\ncrlf \\N \\. end",
        "\\",
        "\t\t",
        "ünïcødé ₿ 𝄞",
    ],
)
def test_copy_rows_round_trip(raw: str) -> None:
    row = CoinbaseRow("BTC-USD", 3419023015, "done", "ab-1", "S", None, "0.1", "2017-06-25T11:23:14.792000Z", raw)
    line = copy_row(row, 12)
    assert _parse_copy_line(line) == ["12", "3419023015", "done", "ab-1", "S", None, "0.1", row.time, raw]


def test_copy_rows_of_real_messages_and_refusals() -> None:
    line = REAL.read_text().splitlines()[0]
    row = to_row(decode(line), line)
    assert row is not None
    assert copy_row(row, 3) == (
        b"3\t3419023013\tdone\t4eef1226-4b38-422c-a5b1-56def7107f9a\tS\t2601.76000000\t3.09000000\t"
        b"2017-06-25T11:23:14.775000Z\t" + line.encode() + b"\n"
    )
    with pytest.raises(MessageError, match="NUL"):
        copy_row(row._replace(raw="a\x00b"), 3)
    with pytest.raises(MessageError, match="Unicode"):
        copy_row(row._replace(raw="\ud800"), 3)
    with pytest.raises(MessageError, match="must be integers"):
        copy_row(row, "3")  # type: ignore[arg-type]


# -- REST level-3 book -----------------------------------------------------------------------


def test_a_rest_level3_book_gives_its_sequence_and_orders() -> None:
    engine = MatchingEngine("BTC-USD", start_sequence=100, seed=3, clock=fixed_clock())
    for _ in RandomOrderFlow(engine, random.Random(3)).steps(150):
        pass
    payload = decode(_dumps({**engine.book_level3(), "auction_mode": False, "time": "2017-06-25T11:23:14Z"}))
    sequence, rows = rest_snapshot_rows(payload)
    view = engine.book()
    assert sequence == engine.sequence
    assert rows == [("B", f"{e.price:.8f}", f"{e.size:.8f}", e.order_id) for e in view.bids] + [
        ("S", f"{e.price:.8f}", f"{e.size:.8f}", e.order_id) for e in view.asks
    ]
    assert rest_snapshot_rows({"sequence": 0, "bids": [], "asks": []}) == (0, [])


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ([], "expected a JSON object, found a JSON array"),
        ({"bids": [], "asks": []}, "sequence is missing"),
        ({"sequence": "5", "bids": [], "asks": []}, "sequence must be a JSON integer"),
        ({"sequence": 5, "asks": []}, "bids must be a JSON array"),
        ({"sequence": 5, "bids": [["1.0", "2.0", 3]], "asks": []}, r"is this a level=3 book\?"),
        ({"sequence": 5, "bids": [["1.0", "2.0"]], "asks": []}, r"bids\[0\] at sequence 5: entry must be"),
        (
            {"sequence": 5, "bids": [], "asks": [["1.0", "1", "a"], ["1e3", "1", "b"]]},
            r"asks\[1\].*price uses an exponent",
        ),
        ({"sequence": 5, "bids": [["1.0", "-1", "a"]], "asks": []}, "size is negative"),
        ({"sequence": 5, "bids": [["1.0", "1", "a"]], "asks": [["2.0", "1", "a"]]}, r"asks\[0\].*appears twice"),
    ],
)
def test_a_malformed_rest_book_is_refused(payload: Any, reason: str) -> None:
    with pytest.raises(MessageError, match=reason):
        rest_snapshot_rows(payload)


# -- the signed subscribe --------------------------------------------------------------------


def test_the_signature_is_hmac_sha256_of_timestamp_get_verify_path() -> None:
    secret = base64.b64encode(b"secret-key-bytes").decode()
    message = subscribe_message(
        ["BTC-USD"], ["full", {"name": "level3", "product_ids": ["BTC-USD"]}], "k", secret, "p", 1700000000
    )
    expected = hmac.new(b"secret-key-bytes", b"1700000000GET/users/self/verify", hashlib.sha256).digest()
    assert message == {
        "type": "subscribe",
        "product_ids": ["BTC-USD"],
        "channels": ["full", {"name": "level3", "product_ids": ["BTC-USD"]}],
        "signature": base64.b64encode(expected).decode(),
        "key": "k",
        "passphrase": "p",
        "timestamp": "1700000000",
    }
    assert message["signature"] == sign(secret, "1700000000")  # the local exchange's own signer


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"secret": "not base64 at all!"}, "secret"),
        ({"secret": ""}, "secret"),
        ({"key": ""}, "key"),
        ({"passphrase": 5}, "passphrase"),
        ({"timestamp": "soon"}, "timestamp"),
        ({"timestamp": 1.5}, "timestamp"),
        ({"product_ids": "BTC-USD"}, "product_ids"),
        ({"product_ids": []}, "product_ids"),
        ({"channels": []}, "channels"),
    ],
)
def test_a_bad_subscribe_argument_is_refused_without_showing_secrets(arguments: dict[str, Any], field: str) -> None:
    base: dict[str, Any] = {
        "product_ids": ["BTC-USD"],
        "channels": ["full"],
        "key": "the-key",
        "secret": "c2VjcmV0LWtleS1ieXRlcw==",
        "passphrase": "hunter2-pass",
        "timestamp": "1700000000",
    }
    with pytest.raises(MessageError) as caught:
        subscribe_message(**(base | arguments))
    assert caught.value.field == field
    shown = f"{caught.value!s} {caught.value!r} {caught.value.__cause__!r} {caught.value.__context__!r}"
    for secret in ("c2VjcmV0", "not base64", "hunter2", "the-key"):
        assert secret not in shown
    assert caught.value.__cause__ is None


def test_the_local_exchange_accepts_the_signed_subscribe_and_its_feed_converts() -> None:
    async def scenario() -> None:
        async with (
            LocalExchange(["BTC-USD"], seed=4, heartbeat_interval=0.05) as ex,
            aiohttp.ClientSession() as session,
        ):
            c = ex.credentials
            ws = await session.ws_connect(ex.ws_url)
            wrong = Credentials.generate(random.Random("someone else"))
            stamp = str(int(time.time()))
            await ws.send_json(subscribe_message(["BTC-USD"], ["full"], c.key, wrong.secret, c.passphrase, stamp))
            refused = await ws.receive_json(timeout=5)
            assert classify(refused) == "error" and refused["reason"] == "invalid signature"
            channels = ["full", "level3", "heartbeat"]
            await ws.send_json(subscribe_message(["BTC-USD"], channels, c.key, c.secret, c.passphrase, stamp))
            reply = decode(await ws.receive_str(timeout=5))
            assert classify(reply) == "subscriptions" and to_row(reply, "") is None
            schema_message = decode(await ws.receive_str(timeout=5))
            assert classify(schema_message) == "schema"
            schema = Level3Schema.from_message(schema_message)
            await ex.run_random_flow(60)
            full: dict[int, CoinbaseRow] = {}
            compact: dict[int, CoinbaseRow] = {}
            beats = 0
            while len(full) < len(ex.messages("BTC-USD")) or len(compact) < len(full) or not beats:
                raw = await ws.receive_str(timeout=5)
                frame = decode_frame(raw)
                if isinstance(frame, list):
                    row = level3_to_row(frame, raw, schema)
                    assert row is not None
                    compact[row.seq] = row
                elif classify(frame) == "heartbeat":
                    beats += 1
                    assert to_row(frame, raw) is None
                else:
                    row = to_row(frame, raw)
                    assert row is not None
                    full[row.seq] = row
            await ws.close()
        sequences = [int(m["sequence"]) for m in ex.messages("BTC-USD")]
        assert sorted(full) == sorted(compact) == sequences
        assert all(compact[s].kind in (full[s].kind, "noop") for s in sequences)

    asyncio.run(asyncio.wait_for(scenario(), timeout=15))
