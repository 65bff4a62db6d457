"""The local Coinbase-Exchange-like exchange (ledger.testing): engine, feed, REST book, faults.

Books are checked against :class:`RefBook`, a deliberately naive L3 book written here from
the full-channel rules (open appends, match reduces the maker, done removes by id, change
sets the size or moves the order), so that the engine and the reference do not share code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ledger.testing import (
    LEVEL3_SCHEMA,
    Credentials,
    Faults,
    LocalExchange,
    MatchingEngine,
    OrderRejectedError,
    RandomOrderFlow,
    SnapshotUnavailableError,
    UnknownOrderError,
    fixed_clock,
    sign,
    subscribe_message,
)

REAL_MESSAGES = Path(__file__).parent / "data" / "coinbase" / "full_channel_2017-06-25_excerpt.jsonl"
AMOUNT = re.compile(r"^\d+\.\d{8}$")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
BOTH = ["BTC-USD", "ETH-USD"]
IDLE = 0.25  # seconds without a frame after which a test client stops reading


def _fmt(value: Decimal) -> str:
    return f"{value:.8f}"


class RefBook:
    """A naive level-3 book: orders by id, and per (side, price) a list in queue order."""

    def __init__(self) -> None:
        self.orders: dict[str, tuple[str, Decimal, Decimal]] = {}
        self.queues: dict[tuple[str, Decimal], list[str]] = {}

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any]) -> RefBook:
        book = cls()
        for side, rows in (("buy", snapshot["bids"]), ("sell", snapshot["asks"])):
            for price, size, order_id in rows:
                book._add(order_id, side, Decimal(price), Decimal(size))
        return book

    def _add(self, order_id: str, side: str, price: Decimal, size: Decimal) -> None:
        assert order_id not in self.orders, f"open of an order already on the book: {order_id}"
        self.orders[order_id] = (side, price, size)
        self.queues.setdefault((side, price), []).append(order_id)

    def _drop(self, order_id: str) -> None:
        side, price, _ = self.orders.pop(order_id)
        queue = self.queues[(side, price)]
        queue.remove(order_id)
        if not queue:
            del self.queues[(side, price)]

    def _change(self, order_id: str, price: Decimal, size: Decimal) -> None:
        side, old_price, old_size = self.orders[order_id]
        if price != old_price or size > old_size:  # back of the (new) level
            self._drop(order_id)
            self._add(order_id, side, price, size)
        else:
            self.orders[order_id] = (side, price, size)

    def apply(self, m: dict[str, Any]) -> None:
        """One full-channel message."""
        kind = m["type"]
        if kind == "open":
            self._add(m["order_id"], m["side"], Decimal(m["price"]), Decimal(m["remaining_size"]))
        elif kind == "match" and m["maker_order_id"] in self.orders:
            side, price, size = self.orders[m["maker_order_id"]]
            left = size - Decimal(m["size"])
            if left > 0:
                self.orders[m["maker_order_id"]] = (side, price, left)
            else:
                self._drop(m["maker_order_id"])
        elif kind == "done" and m["order_id"] in self.orders:
            self._drop(m["order_id"])
        elif kind == "change" and m["order_id"] in self.orders:
            price = Decimal(m["new_price"]) if "new_price" in m else self.orders[m["order_id"]][1]
            self._change(m["order_id"], price, Decimal(m["new_size"]))

    def apply_level3(self, a: list[Any]) -> None:
        """One compact level3 message (an array laid out by LEVEL3_SCHEMA)."""
        fields = dict(zip(LEVEL3_SCHEMA[a[0]], a, strict=True))
        kind = fields["type"]
        if kind == "open":
            self._add(fields["order_id"], fields["side"], Decimal(fields["price"]), Decimal(fields["size"]))
        elif kind == "match":
            self.apply({**fields, "type": "match"})
        elif kind == "done" and fields["order_id"] in self.orders:
            self._drop(fields["order_id"])
        elif kind == "change" and fields["order_id"] in self.orders:
            self._change(fields["order_id"], Decimal(fields["price"]), Decimal(fields["size"]))

    def level3(self) -> dict[str, list[list[str]]]:
        def rows(side: str, best_first: Callable[[Decimal], Decimal]) -> list[list[str]]:
            prices = sorted((p for s, p in self.queues if s == side), key=best_first)
            return [
                [_fmt(price), _fmt(self.orders[oid][2]), oid] for price in prices for oid in self.queues[(side, price)]
            ]

        return {"bids": rows("buy", lambda p: -p), "asks": rows("sell", lambda p: p)}

    def bbo(self) -> tuple[Decimal | None, Decimal | None, Decimal | None, Decimal | None]:
        def best(side: str, pick: Callable[[Iterable[Decimal]], Decimal]) -> tuple[Decimal | None, Decimal | None]:
            prices = [p for s, p in self.queues if s == side]
            if not prices:
                return None, None
            price = pick(prices)
            return price, sum((self.orders[o][2] for o in self.queues[(side, price)]), Decimal(0))

        return (*best("buy", max), *best("sell", min))


def _book_only(snapshot: Any) -> dict[str, Any]:
    return {"bids": snapshot["bids"], "asks": snapshot["asks"]}


def _engine(seed: int = 1, **kwargs: Any) -> MatchingEngine:
    return MatchingEngine("BTC-USD", start_sequence=1000, seed=seed, clock=fixed_clock(), **kwargs)


# -- engine: exact messages ----------------------------------------------------------------


def test_limit_orders_match_in_price_time_priority() -> None:
    engine = _engine()
    a = engine.place_limit("sell", "2600.10", "1", profile_id="m")[0]["order_id"]
    b = engine.place_limit("sell", "2600.10", "2", profile_id="m")[0]["order_id"]
    c = engine.place_limit("sell", "2600.05", "0.5", profile_id="m")[0]["order_id"]
    messages = engine.place_limit("buy", "2600.10", "2.25", profile_id="t", client_oid="my-oid")
    taker = messages[0]["order_id"]
    assert [(m["type"], m.get("maker_order_id"), m.get("size"), m.get("price")) for m in messages] == [
        ("received", None, "2.25000000", "2600.10000000"),
        ("match", c, "0.50000000", "2600.05000000"),  # best price first
        ("done", None, None, "2600.05000000"),
        ("match", a, "1.00000000", "2600.10000000"),  # then time priority
        ("done", None, None, "2600.10000000"),
        ("match", b, "0.75000000", "2600.10000000"),
        ("done", None, None, "2600.10000000"),  # the taker, filled
    ]
    assert messages[0]["client_oid"] == "my-oid"
    assert [m["sequence"] for m in messages] == list(range(1006, 1013))
    assert messages[1] | {"time": "t"} == {
        "type": "match",
        "trade_id": 1,
        "maker_order_id": c,
        "taker_order_id": taker,
        "side": "sell",
        "size": "0.50000000",
        "price": "2600.05000000",
        "product_id": "BTC-USD",
        "sequence": 1007,
        "time": "t",
    }
    assert messages[-1] | {"time": "t"} == {
        "type": "done",
        "side": "buy",
        "order_id": taker,
        "reason": "filled",
        "price": "2600.10000000",
        "remaining_size": "0.00000000",
        "product_id": "BTC-USD",
        "sequence": 1012,
        "time": "t",
    }
    assert engine.book_level3() == {"sequence": 1012, "bids": [], "asks": [["2600.10000000", "1.25000000", b]]}
    assert engine.last_trade_id == 3


def test_partial_fill_rests_the_remainder() -> None:
    engine = _engine()
    maker = engine.place_limit("buy", "2599", "0.3", profile_id="m")[0]["order_id"]
    messages = engine.place_limit("sell", "2598.5", "1", profile_id="t")
    taker = messages[0]["order_id"]
    assert [m["type"] for m in messages] == ["received", "match", "done", "open"]
    assert messages[1]["side"] == "buy" and messages[1]["price"] == "2599.00000000"
    assert messages[2]["order_id"] == maker and messages[2]["reason"] == "filled"
    assert messages[3]["remaining_size"] == "0.70000000" and messages[3]["price"] == "2598.50000000"
    assert engine.book_level3()["asks"] == [["2598.50000000", "0.70000000", taker]]


def test_market_orders_have_no_price_and_cancel_when_the_book_runs_out() -> None:
    engine = _engine()
    engine.place_limit("sell", "2600", "1", profile_id="m")
    messages = engine.place_market("buy", "1.5", profile_id="t")
    assert "price" not in messages[0] and messages[0]["order_type"] == "market"
    assert [m["type"] for m in messages] == ["received", "match", "done", "done"]
    assert set(messages[-1]) == {"type", "side", "order_id", "reason", "product_id", "sequence", "time"}
    assert messages[-1]["reason"] == "canceled"
    engine.place_limit("sell", "2601", "1", profile_id="m")
    assert engine.place_market("buy", "0.25", profile_id="t")[-1]["reason"] == "filled"
    assert engine.book_level3()["asks"][0][1] == "0.75000000"


def test_cancel() -> None:
    engine = _engine()
    order = engine.place_limit("buy", "2500", "0.1")[0]["order_id"]
    (done,) = engine.cancel(order)
    assert (done["type"], done["reason"], done["remaining_size"], done["price"]) == (
        "done",
        "canceled",
        "0.10000000",
        "2500.00000000",
    )
    assert engine.book().bids == ()
    with pytest.raises(UnknownOrderError):
        engine.cancel(order)


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (lambda e: e.place_limit("buy", 2600.5, "1"), OrderRejectedError),  # float
        (lambda e: e.place_limit("buy", "2600", "-1"), OrderRejectedError),
        (lambda e: e.place_limit("buy", "2600", "0.000000001"), OrderRejectedError),  # 9 decimals
        (lambda e: e.place_limit("hold", "2600", "1"), OrderRejectedError),
        (lambda e: e.place_market("buy", "abc"), OrderRejectedError),
        (lambda e: e.modify("nope", price="1"), UnknownOrderError),
    ],
)
def test_bad_requests_are_refused(request_: Callable[[MatchingEngine], object], error: type[Exception]) -> None:
    engine = _engine()
    with pytest.raises(error):
        request_(engine)
    assert engine.sequence == 999  # nothing was published


@pytest.mark.parametrize(
    ("taker_size", "expected", "book"),
    [
        # taker larger: the maker is canceled, the (not yet open) taker decremented, then it matches on
        ("3", [("done", "M", "canceled"), ("change", "T", "3.00000000->2.00000000"), ("match", "O", None)], "T:1.5"),
        # taker smaller: the maker decremented in place, the taker canceled
        ("0.4", [("change", "M", "1.00000000->0.60000000"), ("done", "T", "canceled")], "M:0.6,O:0.5"),
        # same size: both canceled
        ("1", [("done", "M", "canceled"), ("done", "T", "canceled")], "O:0.5"),
    ],
)
def test_self_trade_prevention_decrements_and_cancels(taker_size: str, expected: list[Any], book: str) -> None:
    engine = _engine()
    names = {
        engine.place_limit("sell", "2600", "1", profile_id="me")[0]["order_id"]: "M",
        engine.place_limit("sell", "2600", "0.5", profile_id="other")[0]["order_id"]: "O",
    }
    messages = engine.place_limit("buy", "2600", taker_size, profile_id="me")
    names[messages[0]["order_id"]] = "T"
    got = []
    for m in messages[1:]:
        if m["type"] == "match":
            got.append(("match", names[str(m["maker_order_id"])], None))
        elif m["type"] == "change":
            assert m["reason"] == "STP" and m["price"] == "2600.00000000"
            got.append(("change", names[str(m["order_id"])], f"{m['old_size']}->{m['new_size']}"))
        elif m["type"] == "done":
            got.append(("done", names[str(m["order_id"])], m["reason"]))
    assert got[: len(expected)] == expected
    view = engine.book()
    assert ",".join(f"{names[e.order_id]}:{e.size.normalize()}" for e in (*view.bids, *view.asks)) == book


def test_modify_moves_the_order_and_keeps_priority_only_for_a_size_cut() -> None:
    engine = _engine()
    a, b, c = (engine.place_limit("buy", "2600", "1")[0]["order_id"] for _ in range(3))
    engine.place_limit("sell", "2605", "1")

    def queue() -> list[str]:
        return [row[2] for row in engine.book_level3()["bids"]]

    (change,) = engine.modify(a, size="0.4")  # size cut: stays first
    assert queue() == [a, b, c]
    assert change | {"time": "t", "sequence": 0} == {
        "type": "change",
        "reason": "modify_order",
        "order_id": a,
        "side": "buy",
        "old_size": "1.00000000",
        "new_size": "0.40000000",
        "old_price": "2600.00000000",
        "new_price": "2600.00000000",
        "product_id": "BTC-USD",
        "sequence": 0,
        "time": "t",
    }
    engine.modify(b, size="1.5")  # size up: back of the level
    assert queue() == [a, c, b]
    engine.modify(a, price="2601")  # new price: new level
    assert queue() == [a, c, b] and engine.book_level3()["bids"][0][0] == "2601.00000000"
    engine.modify(a, price="2600", size="0.1")
    assert queue() == [c, b, a]
    with pytest.raises(OrderRejectedError, match="cross"):
        engine.modify(c, price="2605")
    with pytest.raises(OrderRejectedError, match="nothing"):
        engine.modify(c, price="2600", size="1")
    (done,) = engine.cancel(a)
    assert done["price"] == "2600.00000000"  # the price after the modifies


def test_messages_have_the_shapes_of_real_coinbase_messages() -> None:
    real = [json.loads(line) for line in REAL_MESSAGES.read_text().splitlines()]
    real_keys = {(m["type"], "client_oid" in m): set(m) for m in real}
    engine = _engine()
    ours = engine.place_limit("sell", "2602.22", "0.1") + engine.place_limit(
        "buy", "309.41", "0.014954", client_oid="x"
    )
    ours += engine.cancel(str(ours[0]["order_id"]))
    for m in ours:
        assert set(m) == real_keys[(m["type"], "client_oid" in m)], m
        assert TIME.match(str(m["time"])) and UUID.match(str(m["order_id"]))
        for key in ("price", "size", "remaining_size"):
            if key in m:
                assert AMOUNT.match(str(m[key])), m
    heartbeat = next(m for m in real if m["type"] == "heartbeat")
    assert set(heartbeat) == {"type", "last_trade_id", "product_id", "sequence", "time"}


def test_order_ids_repeat_with_the_seed() -> None:
    def ids(seed: int) -> list[str]:
        engine = _engine(seed)
        flow = RandomOrderFlow(engine, random.Random(seed))
        return [str(m["order_id"]) for step in flow.steps(50) for m in step if m["type"] == "received"]

    assert ids(3) == ids(3) != ids(4)


# -- engine: random flows against the reference book ---------------------------------------


def _check_invariants(engine: MatchingEngine) -> None:
    view = engine.book()
    assert all(e.size > 0 for e in (*view.bids, *view.asks))
    assert [e.price for e in view.bids] == sorted((e.price for e in view.bids), reverse=True)
    assert [e.price for e in view.asks] == sorted(e.price for e in view.asks)
    if view.bids and view.asks:
        assert view.bids[0].price < view.asks[0].price, "crossed resting book"


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
@example(seed=0)
def test_random_flows_replay_to_the_engine_book_after_every_message(seed: int) -> None:
    engine = _engine(seed)
    flow = RandomOrderFlow(engine, random.Random(seed), mid=Decimal("2600.00"))
    full, compact = RefBook(), RefBook()
    expected_sequence = 1000
    kinds: set[str] = set()
    for step in flow.steps(200):
        for m in step:
            assert m["sequence"] == expected_sequence, "sequence +1 per message"
            expected_sequence += 1
            kinds.add(f"{m['type']}:{m.get('reason', '')}")
            full.apply(m)
            compact.apply_level3(engine.level3_message(int(m["sequence"])))
            assert full.level3() == _book_only(engine.book_level3(at_sequence=int(m["sequence"])))
        assert full.level3() == compact.level3() == _book_only(engine.book_level3())
        _check_invariants(engine)
    assert {"match:", "change:STP", "change:modify_order", "done:canceled", "done:filled"} <= kinds
    history = engine.bbo_history()
    assert [b.sequence for b in history] == list(range(1000, engine.sequence + 1))
    replay = RefBook()
    for m, bbo in zip(engine.messages(), history, strict=True):
        replay.apply(m)
        assert replay.bbo() == bbo[1:]


@pytest.mark.parametrize("seed", range(6))
def test_snapshot_at_any_sequence_plus_the_later_messages_rebuilds_the_book(seed: int) -> None:
    engine = _engine(seed)
    flow = RandomOrderFlow(engine, random.Random(seed))
    for _ in flow.steps(300):
        pass
    messages = engine.messages()
    rng = random.Random(seed)
    for at in [engine.oldest_sequence, *rng.sample(range(1000, engine.sequence), 10), engine.sequence]:
        snapshot = engine.book_level3(at_sequence=at)
        assert snapshot["sequence"] == at
        book = RefBook.from_snapshot(snapshot)
        for m in messages:
            if m["sequence"] > at:
                book.apply(m)
        assert book.level3() == _book_only(engine.book_level3())


def test_past_books_are_kept_for_history_messages_only() -> None:
    engine = _engine(history=10)
    for _ in RandomOrderFlow(engine, random.Random(1)).steps(40):
        pass
    assert engine.oldest_sequence == engine.sequence - 10
    engine.book_level3(at_sequence=engine.sequence - 10)
    with pytest.raises(SnapshotUnavailableError):
        engine.book_level3(at_sequence=engine.sequence - 11)
    with pytest.raises(SnapshotUnavailableError):
        engine.book_level3(at_sequence=engine.sequence + 1)


# -- server helpers ------------------------------------------------------------------------


def _run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), timeout=15))


async def _subscribe(
    session: aiohttp.ClientSession,
    ex: LocalExchange,
    channels: list[Any],
    products: list[str] = BOTH,
    credentials: Credentials | None = None,
) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(ex.ws_url)
    await ws.send_json(subscribe_message(products, channels, credentials or ex.credentials))
    reply = await ws.receive_json(timeout=5)
    assert reply["type"] == "subscriptions", reply
    return ws


async def _read(ws: aiohttp.ClientWebSocketResponse, idle: float = IDLE) -> list[str]:
    """Every text frame until the connection is quiet for ``idle`` seconds or closes."""
    frames: list[str] = []
    while True:
        try:
            message = await ws.receive(timeout=idle)
        except TimeoutError:
            return frames
        if message.type != aiohttp.WSMsgType.TEXT:
            return frames
        frames.append(message.data)


def _feed(frames: list[str]) -> list[dict[str, Any]]:
    return [m for m in map(json.loads, frames) if m["type"] not in ("heartbeat", "subscriptions")]


async def _faulty_feed(faults: Faults, n_orders: int = 150) -> tuple[LocalExchange, list[str], list[str]]:
    """Frames a client got for one product under ``faults``, and the texts the engine published."""
    async with LocalExchange(["BTC-USD"], seed=11, faults=faults) as ex, aiohttp.ClientSession() as session:
        ws = await _subscribe(session, ex, ["full"], ["BTC-USD"])
        await ex.run_random_flow(n_orders)
        frames = await _read(ws)
        await ws.close()
    published = [json.dumps(m, separators=(",", ":")) for m in ex.messages("BTC-USD")]
    return ex, frames, published


# -- server: feed, REST, auth --------------------------------------------------------------


def test_signed_subscriber_receives_every_message_and_heartbeats() -> None:
    async def scenario() -> None:
        async with LocalExchange(BOTH, seed=2, heartbeat_interval=0.05) as ex, aiohttp.ClientSession() as session:
            ws = await _subscribe(session, ex, ["full", "heartbeat"])
            await ex.run_random_flow(120)
            got: list[dict[str, Any]] = []
            beats: dict[str, dict[str, Any]] = {}
            while any(beats.get(p, {}).get("sequence") != ex.sequence(p) for p in BOTH):
                m = await ws.receive_json(timeout=5)
                if m["type"] == "heartbeat":
                    beats[m["product_id"]] = m
                else:
                    got.append(m)
            for product in BOTH:
                assert [m for m in got if m["product_id"] == product] == ex.messages(product)
                assert beats[product]["last_trade_id"] == ex.engine(product).last_trade_id
                assert set(beats[product]) == {"type", "last_trade_id", "product_id", "sequence", "time"}
                assert TIME.match(beats[product]["time"])
            await ws.close()

    _run(scenario)


def test_rest_snapshot_plus_buffered_messages_rebuild_the_book() -> None:
    async def scenario() -> None:
        async with LocalExchange(BOTH, seed=5) as ex, aiohttp.ClientSession() as session:
            await ex.run_random_flow(100)  # a book before anyone listens
            ws = await _subscribe(session, ex, ["full"])
            flow = asyncio.create_task(ex.run_random_flow(200, rate=2000))
            await asyncio.sleep(0.03)
            snapshots = {}
            for product in BOTH:
                async with session.get(f"{ex.rest_url}/products/{product}/book", params={"level": "3"}) as response:
                    assert response.status == 200
                    snapshots[product] = await response.json()
            await flow
            buffered = _feed(await _read(ws))
            await ws.close()
            for product, snapshot in snapshots.items():
                assert snapshot["sequence"] < ex.sequence(product), "the flow went on after the snapshot"
                book = RefBook.from_snapshot(snapshot)
                for m in buffered:
                    if m["product_id"] == product and m["sequence"] > snapshot["sequence"]:
                        book.apply(m)
                assert book.level3() == _book_only(ex.book_level3(product))

    _run(scenario)


def test_level3_channel_sends_the_schema_then_compact_arrays() -> None:
    async def scenario() -> None:
        async with LocalExchange(BOTH, seed=8) as ex, aiohttp.ClientSession() as session:
            ws = await _subscribe(session, ex, [{"name": "level3", "product_ids": ["ETH-USD"]}])
            assert await ws.receive_json(timeout=5) == {"type": "level3", "schema": LEVEL3_SCHEMA}
            await ex.run_random_flow(150)
            arrays = [json.loads(frame) for frame in await _read(ws)]
            await ws.close()
            assert [a[2] for a in arrays] == [m["sequence"] for m in ex.messages("ETH-USD")]
            assert {a[0] for a in arrays} == {"open", "change", "match", "done", "noop"}
            book = RefBook()
            for a in arrays:
                assert len(a) == len(LEVEL3_SCHEMA[a[0]]) and a[1] == "ETH-USD"
                book.apply_level3(a)
            assert book.level3() == _book_only(ex.book_level3("ETH-USD"))

    _run(scenario)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (
            lambda m, c: m | {"signature": sign(c.secret, m["timestamp"], request_path="/users/self")},
            "invalid signature",
        ),
        (lambda m, c: m | {"passphrase": "wrong"}, "invalid passphrase"),
        (lambda m, c: m | {"key": "0" * 32}, "invalid API key"),
        (
            lambda m, c: (
                m | {"timestamp": str(int(time.time()) - 120), "signature": sign(c.secret, str(int(time.time()) - 120))}
            ),
            "request timestamp expired",
        ),
        (
            lambda m, c: {k: v for k, v in m.items() if k != "signature"},
            "full and level3 channels require authentication",
        ),
    ],
)
def test_a_bad_signature_is_refused(
    tamper: Callable[[dict[str, Any], Credentials], dict[str, Any]], reason: str
) -> None:
    async def scenario() -> None:
        async with LocalExchange(BOTH, seed=3, heartbeat_interval=60) as ex, aiohttp.ClientSession() as session:
            ws = await session.ws_connect(ex.ws_url)
            await ws.send_json(tamper(subscribe_message(BOTH, ["full"], ex.credentials), ex.credentials))
            error = await ws.receive_json(timeout=5)
            assert error["type"] == "error" and error["reason"] == reason, error
            if reason == "invalid signature":
                assert error["message"] == "Sorry, you could not be authenticated: Bad Request"
            ex.place("BTC-USD", "buy", "2600", "1")
            await ws.send_json(subscribe_message(BOTH, ["heartbeat"]))  # no signature needed
            assert (await ws.receive_json(timeout=5))["channels"] == [{"name": "heartbeat", "product_ids": BOTH}]
            await ws.send_json(subscribe_message(["BTC-USD"], ["full"], ex.credentials))  # right this time
            assert (await ws.receive_json(timeout=5))["type"] == "subscriptions"
            ex.cancel("BTC-USD", ex.book("BTC-USD").bids[0].order_id)
            assert (await ws.receive_json(timeout=5))["type"] == "done"
            await ws.close()

    _run(scenario)


def test_signature_is_coinbase_hmac_of_timestamp_get_verify_path() -> None:
    credentials = Credentials("k", "c2VjcmV0LWtleS1ieXRlcw==", "p")  # base64 of b"secret-key-bytes"
    expected = base64.b64encode(
        hmac.new(b"secret-key-bytes", b"1700000000GET/users/self/verify", hashlib.sha256).digest()
    ).decode()
    assert sign(credentials.secret, "1700000000") == expected
    message = subscribe_message(["BTC-USD"], ["full"], credentials, timestamp="1700000000")
    assert message == {
        "type": "subscribe",
        "product_ids": ["BTC-USD"],
        "channels": ["full"],
        "signature": expected,
        "key": "k",
        "passphrase": "p",
        "timestamp": "1700000000",
    }
    assert "c2Vj" not in repr(credentials) and "'p'" not in repr(credentials)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (subscribe_message(["BTC-USD"], ["level2"]), "level2 is not a valid channel"),
        (subscribe_message(["DOGE-USD"], ["heartbeat"]), "DOGE-USD is not a valid product"),
        ({"type": "hello"}, "type must be 'subscribe' or 'unsubscribe'"),
    ],
)
def test_unknown_channels_and_products_are_refused(message: dict[str, Any], reason: str) -> None:
    async def scenario() -> None:
        async with LocalExchange(BOTH) as ex, aiohttp.ClientSession() as session:
            ws = await session.ws_connect(ex.ws_url)
            await ws.send_json(message)
            assert await ws.receive_json(timeout=5) == {
                "type": "error",
                "message": "Failed to subscribe",
                "reason": reason,
            }
            await ws.close()

    _run(scenario)


def test_unsubscribe_stops_the_feed_and_silence_gets_disconnected() -> None:
    async def scenario() -> None:
        async with LocalExchange(BOTH, subscribe_timeout=0.1) as ex, aiohttp.ClientSession() as session:
            ws = await _subscribe(session, ex, ["full"])
            await ws.send_json(subscribe_message(["BTC-USD"], ["full"], kind="unsubscribe"))
            assert (await ws.receive_json(timeout=5))["channels"] == [{"name": "full", "product_ids": ["ETH-USD"]}]
            ex.place("BTC-USD", "buy", "2600", "1")
            ex.place("ETH-USD", "buy", "300", "1")
            assert {m["product_id"] for m in _feed(await _read(ws))} == {"ETH-USD"}
            await ws.close()
            silent = await session.ws_connect(ex.ws_url)
            closing = await silent.receive(timeout=5)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1008

    _run(scenario)


def test_rest_book_levels_and_unknown_product() -> None:
    async def scenario() -> None:
        async with LocalExchange(["BTC-USD"], seed=4) as ex, aiohttp.ClientSession() as session:
            for price, size in (("2600", "1"), ("2600", "0.5"), ("2599", "2"), ("2601", "3")):
                ex.place("BTC-USD", "buy" if price != "2601" else "sell", price, size)
            url = f"{ex.rest_url}/products/BTC-USD/book"
            async with session.get(url, params={"level": "3"}) as response:
                level3 = await response.json()
            assert level3 == {
                **ex.book_level3("BTC-USD"),
                "auction_mode": False,
                "time": level3["time"],
            }
            async with session.get(url, params={"level": "2"}) as response:
                level2 = await response.json()
            assert level2["bids"] == [["2600.00000000", "1.50000000", 2], ["2599.00000000", "2.00000000", 1]]
            async with session.get(url) as response:  # level 1 by default, as Coinbase
                assert (await response.json())["asks"] == [["2601.00000000", "3.00000000", 1]]
            async with session.get(f"{ex.rest_url}/products/DOGE-USD/book?level=3") as response:
                assert response.status == 404

    _run(scenario)


# -- server: faults ------------------------------------------------------------------------


def test_fault_drop_loses_messages_and_leaves_gaps() -> None:
    async def scenario() -> None:
        ex, frames, published = await _faulty_feed(Faults(drop=0.1))
        assert ex.connections[0].dropped > 0
        assert len(frames) == len(published) - ex.connections[0].dropped
        iterator = iter(published)
        assert all(frame in iterator for frame in frames), "what arrives is in order, a subsequence"

    _run(scenario)


def test_fault_duplicate_sends_messages_twice() -> None:
    async def scenario() -> None:
        ex, frames, published = await _faulty_feed(Faults(duplicate=0.1))
        assert ex.connections[0].duplicated > 0
        assert len(frames) == len(published) + ex.connections[0].duplicated
        assert [f for i, f in enumerate(frames) if i == 0 or f != frames[i - 1]] == published

    _run(scenario)


def test_fault_reorder_swaps_adjacent_messages() -> None:
    async def scenario() -> None:
        ex, frames, published = await _faulty_feed(Faults(reorder=0.1))
        assert ex.connections[0].reordered > 0
        assert frames != published and sorted(frames) == sorted(published)
        position = {text: i for i, text in enumerate(published)}
        assert all(abs(position[f] - i) <= 1 for i, f in enumerate(frames)), "only adjacent swaps"
        sequences = [json.loads(f)["sequence"] for f in frames]
        swaps = sum(a > b for a, b in itertools.pairwise(sequences))
        assert ex.connections[0].reordered - 1 <= swaps <= ex.connections[0].reordered  # the last may go out alone

    _run(scenario)


def test_fault_malformed_sends_broken_json_before_real_messages() -> None:
    async def scenario() -> None:
        ex, frames, published = await _faulty_feed(Faults(malformed=0.1))
        broken, good = [], []
        for i, frame in enumerate(frames):
            try:
                json.loads(frame)
                good.append(frame)
            except ValueError:
                broken.append(frame)
                assert frames[i + 1].startswith(frame) and frame != frames[i + 1]
        assert len(broken) == ex.connections[0].malformed > 0
        assert good == published

    _run(scenario)


def test_fault_disconnect_after_n_messages_cuts_only_the_first_connection() -> None:
    async def scenario() -> None:
        faults = Faults(disconnect_after=25)
        async with LocalExchange(["BTC-USD"], seed=6, faults=faults) as ex, aiohttp.ClientSession() as session:
            ws = await _subscribe(session, ex, ["full"], ["BTC-USD"])
            await ex.run_random_flow(40)
            frames = await _read(ws, idle=2)
            assert ws.closed and ws.close_code == 1001
            assert frames == [json.dumps(m, separators=(",", ":")) for m in ex.messages("BTC-USD")[:25]]
            again = await _subscribe(session, ex, ["full"], ["BTC-USD"])
            await ex.run_random_flow(40)
            assert len(_feed(await _read(again))) > 25 and not again.closed
            assert [c.disconnected for c in ex.connections] == [True, False]
            await again.close()

    _run(scenario)


def test_fault_slow_and_failing_rest() -> None:
    async def scenario() -> None:
        faults = Faults(rest_delay=0.3, rest_failures=2)
        async with LocalExchange(["BTC-USD"], seed=7, faults=faults) as ex, aiohttp.ClientSession() as session:
            await ex.run_random_flow(30)
            statuses = []
            for _ in range(3):
                started = time.perf_counter()
                async with session.get(f"{ex.rest_url}/products/BTC-USD/book?level=3") as response:
                    statuses.append(response.status)
                    body = await response.json()
                assert time.perf_counter() - started >= 0.3
            assert statuses == [500, 500, 200] and ex.rest_calls == 3
            assert _book_only(body) == _book_only(ex.book_level3("BTC-USD"))

    _run(scenario)


def test_fault_stale_snapshot_is_the_book_k_messages_ago() -> None:
    async def scenario() -> None:
        async with LocalExchange(["BTC-USD"], seed=9, faults=Faults(stale_snapshot_by=7)) as ex:
            async with aiohttp.ClientSession() as session:
                await ex.run_random_flow(80)
                async with session.get(f"{ex.rest_url}/products/BTC-USD/book?level=3") as response:
                    snapshot = await response.json()
            messages = ex.messages("BTC-USD")
            assert snapshot["sequence"] == ex.sequence("BTC-USD") - 7
            replay = RefBook()
            for m in messages:
                if m["sequence"] <= snapshot["sequence"]:
                    replay.apply(m)
            assert replay.level3() == _book_only(snapshot)
            assert replay.level3() != _book_only(ex.book_level3("BTC-USD"))
            book = RefBook.from_snapshot(snapshot)
            for m in messages:
                if m["sequence"] > snapshot["sequence"]:
                    book.apply(m)
            assert book.level3() == _book_only(ex.book_level3("BTC-USD"))

    _run(scenario)


def test_faults_are_validated() -> None:
    with pytest.raises(ValueError, match="drop"):
        Faults(drop=1.5)
    with pytest.raises(ValueError, match="rest_failures"):
        Faults(rest_failures=-1)


# -- Coinbase's removal rule: an order matched to 0 rests until its done (#10.1) ------------


class ZeroRestingRefBook(RefBook):
    """The reference book under Coinbase's own rule: a ``match`` never removes the maker (it
    rests at size 0 in its place until its ``done``), a ``change`` may give it size again,
    and a level holding only orders at 0 is no price."""

    def apply(self, m: dict[str, Any]) -> None:
        if m["type"] == "match" and m["maker_order_id"] in self.orders:
            side, price, size = self.orders[m["maker_order_id"]]
            left = size - Decimal(m["size"])
            assert left >= 0, m
            self.orders[m["maker_order_id"]] = (side, price, left)
        else:
            super().apply(m)

    def bbo(self) -> tuple[Decimal | None, Decimal | None, Decimal | None, Decimal | None]:
        def best(side: str, pick: Callable[[Iterable[Decimal]], Decimal]) -> tuple[Decimal | None, Decimal | None]:
            totals = {
                p: sum((self.orders[o][2] for o in queue), Decimal(0))
                for (s, p), queue in self.queues.items()
                if s == side
            }
            live = [p for p, total in totals.items() if total]
            if not live:
                return None, None
            price = pick(live)
            return price, totals[price]

        return (*best("buy", max), *best("sell", min))


def _zero_engine(seed: int = 1) -> MatchingEngine:
    return _engine(seed, zero_until_done=True)


def test_a_maker_matched_to_zero_rests_at_zero_until_its_done() -> None:
    engine = _zero_engine()
    a = engine.place_limit("sell", "2600.10", "1", profile_id="m")[0]["order_id"]
    b = engine.place_limit("sell", "2600.20", "2", profile_id="m")[0]["order_id"]
    messages = engine.place_limit("buy", "2600.10", "1", profile_id="t")
    taker = messages[0]["order_id"]
    assert [(m["type"], m.get("maker_order_id") or m.get("order_id")) for m in messages] == [
        ("received", taker),
        ("match", a),
        ("done", taker),  # the taker's; the maker's comes later
    ]
    matched = int(messages[1]["sequence"])
    assert engine.book_level3()["asks"] == [["2600.10000000", "0.00000000", a], ["2600.20000000", "2.00000000", b]]
    assert engine.best_ask() == (Decimal("2600.20"), Decimal("2")) and engine.bbo_history()[-1].ask_price == Decimal(
        "2600.20"
    )  # a level of orders at 0 is no price
    assert engine.pending == [a] and a not in engine.resting_order_ids()
    with pytest.raises(OrderRejectedError, match="pending"):
        engine.cancel(str(a))
    # A buy at the zero order's price does not trade with it: it rests.
    rest = engine.place_limit("buy", "2600.10", "0.5", profile_id="t")
    assert [m["type"] for m in rest] == ["received", "open"]
    (done,) = engine.settle()
    assert (done["type"], done["order_id"], done["reason"], done["remaining_size"]) == (
        "done",
        a,
        "filled",
        "0.00000000",
    )
    assert engine.book_level3()["asks"] == [["2600.20000000", "2.00000000", b]] and engine.settle() == []
    assert engine.book_level3(at_sequence=matched)["asks"][0] == ["2600.10000000", "0.00000000", a]


def test_an_iceberg_is_refreshed_from_zero_by_a_change_then_done() -> None:
    engine = _zero_engine()
    ice_messages = engine.place_limit("sell", "2600", "1.2", profile_id="m", peak="0.5")
    ice = str(ice_messages[0]["order_id"])
    assert ice_messages[0]["size"] == "1.20000000" and ice_messages[1]["remaining_size"] == "0.50000000"
    other = str(engine.place_limit("sell", "2600", "1", profile_id="m")[0]["order_id"])

    def asks() -> list[tuple[str, str]]:
        return [(row[2], row[1]) for row in engine.book_level3()["asks"]]

    took = engine.place_market("buy", "0.5", profile_id="t")
    assert [(m["type"], m.get("maker_order_id") or m["order_id"]) for m in took[1:]] == [
        ("match", ice),
        ("change", ice),  # the next slice, right after the match that emptied the shown one
        ("done", took[0]["order_id"]),
    ]
    refresh = took[2]
    assert refresh | {"time": "t", "sequence": 0} == {
        "type": "change",
        "order_id": ice,
        "side": "sell",
        "old_size": "0.00000000",
        "new_size": "0.50000000",
        "price": "2600.00000000",
        "product_id": "BTC-USD",
        "sequence": 0,
        "time": "t",
    }
    assert engine.book_level3(at_sequence=int(took[1]["sequence"]))["asks"][0] == ["2600.00000000", "0.00000000", ice]
    assert engine.level3_message(int(refresh["sequence"]))[3:6] == [ice, "2600.00000000", "0.50000000"]
    assert asks() == [(other, "1.00000000"), (ice, "0.50000000")]  # refreshed at the back of its level
    took = engine.place_market("buy", "1.5", profile_id="t")
    assert [(m["type"], m.get("new_size")) for m in took[1:]] == [
        ("match", None),  # other, to 0
        ("match", None),  # ice, to 0
        ("change", "0.20000000"),  # ice's last slice
        ("done", None),  # the taker
    ]
    assert asks() == [(other, "0.00000000"), (ice, "0.20000000")] and engine.pending == [other]
    assert [(m["type"], m["order_id"]) for m in engine.settle()] == [("done", other)]
    engine.place_market("buy", "0.2", profile_id="t")
    assert asks() == [(ice, "0.00000000")] and engine.best_ask() is None  # no slice left: waits for its done
    (done,) = engine.settle()
    assert (done["type"], done["order_id"], done["reason"]) == ("done", ice, "filled") and asks() == []


def test_icebergs_need_the_zero_until_done_engine() -> None:
    with pytest.raises(OrderRejectedError, match="zero_until_done"):
        _engine().place_limit("sell", "2600", "1", peak="0.5")
    with pytest.raises(ValueError, match="zero_until_done"):
        RandomOrderFlow(_engine(), random.Random(1), icebergs=0.2)


@pytest.mark.parametrize("seed", range(4))
def test_random_flows_under_the_zero_rule_replay_to_the_engine_book_after_every_message(seed: int) -> None:
    engine = _zero_engine(seed)
    flow = RandomOrderFlow(engine, random.Random(seed), mid=Decimal("2600.00"), icebergs=0.3)
    full, compact = ZeroRestingRefBook(), ZeroRestingRefBook()
    expected_sequence = 1000
    refreshes = zero_books = 0
    for step in flow.steps(300):
        for m in step:
            assert m["sequence"] == expected_sequence
            expected_sequence += 1
            refreshes += m["type"] == "change" and m["old_size"] == "0.00000000"
            full.apply(m)
            compact.apply_level3(engine.level3_message(int(m["sequence"])))
            assert full.level3() == _book_only(engine.book_level3(at_sequence=int(m["sequence"])))
        book = engine.book_level3()
        assert full.level3() == compact.level3() == _book_only(book)
        zero = [row for row in book["bids"] + book["asks"] if row[1] == "0.00000000"]
        assert sorted(row[2] for row in zero) == sorted(engine.pending)  # only orders waiting for settle()
        zero_books += bool(zero)
        bid, ask = engine.best_bid(), engine.best_ask()
        assert bid is None or ask is None or bid[0] < ask[0], "crossed resting book"
    assert refreshes > 0 and zero_books > 0
    replay = ZeroRestingRefBook()
    for m, bbo in zip(engine.messages(), engine.bbo_history(), strict=True):
        replay.apply(m)
        assert replay.bbo() == bbo[1:]


def test_a_rest_book_between_a_match_and_its_done_lists_the_order_at_zero() -> None:
    async def scenario() -> None:
        async with LocalExchange(["BTC-USD"], seed=4, zero_until_done=True) as ex, aiohttp.ClientSession() as session:
            ws = await _subscribe(session, ex, ["full"], ["BTC-USD"])
            maker = ex.place("BTC-USD", "sell", "2601", "1", profile_id="maker")
            ex.market("BTC-USD", "buy", "1", profile_id="taker")
            async with session.get(f"{ex.rest_url}/products/BTC-USD/book?level=3") as response:
                book = await response.json()
            assert book["asks"] == [["2601.00000000", "0.00000000", maker]]
            async with session.get(f"{ex.rest_url}/products/BTC-USD/book?level=2") as response:
                assert (await response.json())["asks"] == []  # nothing to trade against
            assert ex.settle("BTC-USD") == 1
            feed = _feed(await _read(ws))
            await ws.close()
            assert [m["type"] for m in feed][-1] == "done" and feed[-1]["order_id"] == maker
            replay = ZeroRestingRefBook.from_snapshot(book)
            for m in feed:
                if m["sequence"] > book["sequence"]:
                    replay.apply(m)
            assert replay.level3() == _book_only(ex.book_level3("BTC-USD"))

    _run(scenario)
