"""A local Coinbase-Exchange-like server for tests: the websocket feed and the REST level-3 book.

    async with LocalExchange(products=["BTC-USD", "ETH-USD"], seed=1) as ex:
        # connect to ex.ws_url, send subscribe_message(..., ex.credentials), read the feed
        await ex.run_random_flow(500)
        # GET f"{ex.rest_url}/products/BTC-USD/book?level=3"

One :class:`~ledger.testing.matching.MatchingEngine` per product publishes full-channel
messages; each connection gets them through its own queue, where :class:`Faults` may drop,
duplicate, reorder or garble them, or cut the connection. The server listens on 127.0.0.1
on a free port, on one path for both sides: ``ws_url`` (``ws://127.0.0.1:PORT/``) and
``rest_url`` (``http://127.0.0.1:PORT``).

Websocket protocol (Coinbase Exchange's):

* ``{"type": "subscribe", "product_ids": [...], "channels": ["full", "heartbeat"]}``, a
  channel may also be ``{"name": "full", "product_ids": [...]}``; ``unsubscribe`` has the
  same shape. Channels: ``full``, ``level3`` (compact arrays, preceded once by the
  ``{"type": "level3", "schema": ...}`` message) and ``heartbeat``.
* ``full`` and ``level3`` need the signed fields ``key``, ``passphrase``, ``timestamp``
  (a string of Unix seconds, within ``max_clock_skew`` of the server's time) and
  ``signature``: base64 of HMAC-SHA256, keyed with the base64-decoded secret, over
  ``timestamp + "GET" + "/users/self/verify"`` (Coinbase's "Exchange WebSocket
  Authentication" page, docs.cdp.coinbase.com/exchange/websocket-feed/authentication,
  and its Python sample; :func:`sign`).
* Replies: ``{"type": "subscriptions", "channels": [{"name", "product_ids"}, ...]}`` or
  ``{"type": "error", "message": ..., "reason": ...}``; a bad signature gets the reply
  Coinbase sent in 2017: ``{"type": "error", "message": "Sorry, you could not be
  authenticated: Bad Request", "reason": "invalid signature"}``.
* ``{"type": "heartbeat", "last_trade_id": 7, "product_id": "BTC-USD", "sequence": 3419023015,
  "time": "..."}`` every ``heartbeat_interval`` seconds per subscribed product.
* A connection that sends no subscribe within ``subscribe_timeout`` seconds is closed.

REST: ``GET /products/{product_id}/book?level=3`` answers ``{"sequence", "bids", "asks",
"auction_mode", "time"}`` with ``[price, size, order_id]`` entries (level 2: ``[price,
size, num_orders]`` per price; level 1: the best of each side). The book is taken when the
request arrives, before any :attr:`Faults.rest_delay`.

``zero_until_done=True`` plays Coinbase's removal rule out (see
:mod:`ledger.testing.matching`): an order matched to 0 stays on the book at size 0 until
its ``done``, which comes with the product's next request (or :meth:`LocalExchange.settle`),
so a level-3 book taken in between lists it at size 0; ``icebergs`` (a share of the random
flow's limit orders) adds orders whose shown slice, matched to 0, is refreshed by a
``change`` from size 0 before their ``done``. Both are off by default: a seed then gives
the flows, books and faults it always gave.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import random
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Any, Final

from aiohttp import WSCloseCode, WSMsgType, web

from ledger.testing.credentials import Credentials, sign
from ledger.testing.flow import RandomOrderFlow
from ledger.testing.market import (
    LEVEL3_SCHEMA,
    Bbo,
    BookView,
    Level3Snapshot,
    Message,
    format_amount,
    format_time,
)
from ledger.testing.matching import MatchingEngine

__all__ = ["AUTH_CHANNELS", "CHANNELS", "ConnectionStats", "Faults", "LocalExchange"]

#: Channels the local exchange serves, and those that need a signed subscribe.
CHANNELS: Final = frozenset({"full", "level3", "heartbeat"})
AUTH_CHANNELS: Final = frozenset({"full", "level3"})

_DEFAULT_MIDS: Final = {"BTC-USD": Decimal("2600.00"), "ETH-USD": Decimal("300.00")}
_REORDER_FLUSH_S: Final = 0.05  # a held (reordered) frame goes out after this long alone


@dataclass(frozen=True, slots=True)
class Faults:
    """What goes wrong, on purpose; everything is off by default and drawn from the seed.

    Probabilities apply to each ``full``/``level3`` frame of a connection (never to
    subscriptions, errors or heartbeats). ``malformed`` sends a garbled frame (a cut-off
    copy of the message) *before* the real one, which still goes out. ``disconnect_after``
    closes a connection (code 1001) once it has sent that many feed frames; only the first
    ``disconnects`` connections are cut (``None``: every one). ``rest_failures`` answers
    the first K REST calls with HTTP 500; ``stale_snapshot_by`` serves the level-3 book as
    it was ``k`` messages before the product's last one.
    """

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    malformed: float = 0.0
    disconnect_after: int | None = None
    disconnects: int | None = 1
    rest_delay: float = 0.0
    rest_failures: int = 0
    stale_snapshot_by: int = 0

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate", "reorder", "malformed"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Faults.{name} is a probability in [0, 1], not {value!r}")
        for name in ("rest_delay", "rest_failures", "stale_snapshot_by"):
            if getattr(self, name) < 0:
                raise ValueError(f"Faults.{name} must not be negative")
        if self.disconnect_after is not None and self.disconnect_after < 0:
            raise ValueError("Faults.disconnect_after must not be negative")


@dataclass(slots=True)
class ConnectionStats:
    """What the server did on one websocket connection (feed frames only)."""

    index: int
    sent: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    malformed: int = 0
    disconnected: bool = False


@dataclass(frozen=True, slots=True)
class _Frame:
    text: str
    feed: bool  # a full/level3 message: subject to faults, counted for disconnect_after


class _Connection:
    def __init__(self, ws: web.WebSocketResponse, rng: random.Random, stats: ConnectionStats) -> None:
        self.ws = ws
        self.rng = rng
        self.stats = stats
        self.queue: asyncio.Queue[_Frame] = asyncio.Queue()
        self.subscriptions: dict[str, set[str]] = {name: set() for name in sorted(CHANNELS)}
        self.subscribed = False
        self.schema_sent = False
        self.stopping = asyncio.Event()
        self.close_code = WSCloseCode.OK
        self.close_reason = b""

    def stop(self, code: WSCloseCode, reason: bytes) -> None:
        """Ask the connection's handler to close it (the first request wins)."""
        if not self.stopping.is_set():
            self.close_code, self.close_reason = code, reason
            self.stopping.set()


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


class LocalExchange:
    """A Coinbase-Exchange-like server on 127.0.0.1, for tests. Use as an async context manager.

    ``seed`` fixes order ids, the random flow, start sequences, credentials and faults
    (message times come from ``clock``, by default the real UTC time).
    """

    def __init__(
        self,
        products: Iterable[str] = ("BTC-USD",),
        *,
        seed: int = 0,
        faults: Faults | None = None,
        credentials: Credentials | None = None,
        heartbeat_interval: float = 1.0,
        subscribe_timeout: float | None = 5.0,
        max_clock_skew: float = 30.0,
        history: int = 100_000,
        mids: dict[str, Decimal] | None = None,
        clock: Callable[[], datetime] | None = None,
        host: str = "127.0.0.1",
        zero_until_done: bool = False,
        icebergs: float = 0.0,
    ) -> None:
        self.products = tuple(products)
        if not self.products:
            raise ValueError("LocalExchange needs at least one product")
        self.faults = faults or Faults()
        self._seed = seed
        self._rng = random.Random(f"{seed}:exchange")
        self.credentials = credentials or Credentials.generate(random.Random(f"{seed}:credentials"))
        self.heartbeat_interval = heartbeat_interval
        self.subscribe_timeout = subscribe_timeout
        self.max_clock_skew = max_clock_skew
        self._clock = clock or (lambda: datetime.now(UTC))
        self._host = host
        history = max(history, self.faults.stale_snapshot_by + 1)
        self._engines: dict[str, MatchingEngine] = {}
        self._flows: dict[str, RandomOrderFlow] = {}
        for product in self.products:
            numbers = random.Random(f"{seed}:{product}:numbers")
            engine = MatchingEngine(
                product,
                start_sequence=numbers.randrange(1_000_000, 5_000_000_000),
                first_trade_id=numbers.randrange(1_000, 20_000_000),
                seed=f"{seed}:{product}:ids",
                clock=self._clock,
                history=history,
                zero_until_done=zero_until_done,
            )
            self._engines[product] = engine
            mid = (mids or {}).get(product, _DEFAULT_MIDS.get(product, Decimal("100.00")))
            flow_rng = random.Random(f"{seed}:{product}:flow")
            self._flows[product] = RandomOrderFlow(engine, flow_rng, mid=mid, icebergs=icebergs)
        self._connections: set[_Connection] = set()
        self.connections: list[ConnectionStats] = []
        self.rest_calls = 0
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> LocalExchange:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._feed)
        app.router.add_get("/products/{product_id}/book", self._book)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self._host, 0))
        await web.SockSite(runner, sock).start()
        self._runner = runner
        self._port = sock.getsockname()[1]

    async def close(self) -> None:
        for connection in list(self._connections):
            connection.stop(WSCloseCode.GOING_AWAY, b"server shutdown")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("LocalExchange is not started: use 'async with LocalExchange(...)'")
        return self._port

    @property
    def ws_url(self) -> str:
        return f"ws://{self._host}:{self.port}/"

    @property
    def rest_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # -- driving the market ----------------------------------------------------------------

    def engine(self, product: str) -> MatchingEngine:
        try:
            return self._engines[product]
        except KeyError:
            raise KeyError(f"unknown product {product!r}; this exchange has {list(self._engines)}") from None

    def place(
        self,
        product: str,
        side: str,
        price: Decimal | str | int,
        size: Decimal | str | int,
        *,
        profile_id: str = "default",
        client_oid: str | None = None,
        peak: Decimal | str | int | None = None,
    ) -> str:
        """Place a limit order (an iceberg showing ``peak`` with ``zero_until_done``),
        publish what it caused, return its order id."""
        engine = self.engine(product)
        messages = engine.place_limit(side, price, size, profile_id=profile_id, client_oid=client_oid, peak=peak)
        self._broadcast(product, messages)
        return str(messages[0]["order_id"])

    def settle(self, product: str) -> int:
        """Publish the done of the orders of ``product`` matched to 0
        (with ``zero_until_done``; the random flow does it before each request); how many
        messages that made."""
        messages = self.engine(product).settle()
        self._broadcast(product, messages)
        return len(messages)

    def market(self, product: str, side: str, size: Decimal | str | int, *, profile_id: str = "default") -> str:
        """Place a market order (by size), publish what it caused, return its order id."""
        messages = self.engine(product).place_market(side, size, profile_id=profile_id)
        self._broadcast(product, messages)
        return str(messages[0]["order_id"])

    def cancel(self, product: str, order_id: str) -> None:
        self._broadcast(product, self.engine(product).cancel(order_id))

    def modify(
        self,
        product: str,
        order_id: str,
        *,
        price: Decimal | str | int | None = None,
        size: Decimal | str | int | None = None,
    ) -> None:
        self._broadcast(product, self.engine(product).modify(order_id, price=price, size=size))

    async def run_random_flow(self, n_orders: int, rate: float | None = None) -> int:
        """Send ``n_orders`` seeded random requests across the products; return the messages published.

        ``rate`` is requests per second; ``None`` sends them as fast as the event loop
        lets the connections keep up (one loop turn per request).
        """
        published = 0
        for _ in range(n_orders):
            product = self._rng.choice(self.products)
            messages = self._flows[product].step()
            self._broadcast(product, messages)
            published += len(messages)
            await asyncio.sleep(1.0 / rate if rate else 0)
        return published

    # -- reading the market ----------------------------------------------------------------

    def sequence(self, product: str) -> int:
        return self.engine(product).sequence

    def book(self, product: str) -> BookView:
        """The engine's own book: orders in queue order per side (price, size, order_id)."""
        return self.engine(product).book()

    def book_level3(self, product: str, at_sequence: int | None = None) -> Level3Snapshot:
        return self.engine(product).book_level3(at_sequence)

    def bbo_history(self, product: str) -> list[Bbo]:
        """The engine's best bid/ask after every message of ``product``."""
        return self.engine(product).bbo_history()

    def messages(self, product: str) -> list[Message]:
        """Every full-channel message ``product`` published, in sequence order."""
        return self.engine(product).messages()

    # -- websocket -------------------------------------------------------------------------

    def _broadcast(self, product: str, messages: list[Message]) -> None:
        if not messages or not self._connections:
            return
        engine = self._engines[product]
        full = [_Frame(_dumps(m), feed=True) for m in messages]
        compact: list[_Frame] = []
        if any(product in c.subscriptions["level3"] for c in self._connections):
            compact = [_Frame(_dumps(engine.level3_message(int(m["sequence"]))), feed=True) for m in messages]
        for connection in self._connections:
            if product in connection.subscriptions["full"]:
                for frame in full:
                    connection.queue.put_nowait(frame)
            if product in connection.subscriptions["level3"]:
                for frame in compact:
                    connection.queue.put_nowait(frame)

    async def _feed(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(timeout=1.0)  # bounds the wait for the client's close reply
        await ws.prepare(request)
        stats = ConnectionStats(index=len(self.connections))
        self.connections.append(stats)
        connection = _Connection(ws, random.Random(f"{self._seed}:connection:{stats.index}"), stats)
        self._connections.add(connection)
        try:
            async with asyncio.TaskGroup() as tasks:
                workers = [
                    tasks.create_task(self._read_loop(connection)),
                    tasks.create_task(self._send_loop(connection)),
                    tasks.create_task(self._heartbeat_loop(connection)),
                ]
                await connection.stopping.wait()
                for worker in workers:
                    worker.cancel()
        finally:
            self._connections.discard(connection)
            # Closed here, with no receive() pending, so that the client's close reply is read
            # and the client sees a clean close code (aiohttp drops the transport otherwise).
            with contextlib.suppress(ConnectionError):
                await ws.close(code=connection.close_code, message=connection.close_reason)
        return ws

    async def _read_loop(self, connection: _Connection) -> None:
        ws = connection.ws
        while True:
            timeout = None if connection.subscribed else self.subscribe_timeout
            try:
                message = await ws.receive(timeout=timeout)
            except TimeoutError:
                connection.stop(WSCloseCode.POLICY_VIOLATION, b"no subscribe received")
                return
            if message.type == WSMsgType.TEXT:
                self._handle_request(connection, message.data)
            elif message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                connection.stop(WSCloseCode.OK, b"")
                return

    def _handle_request(self, connection: _Connection, text: str) -> None:
        def error(message: str, reason: str) -> None:
            connection.queue.put_nowait(_Frame(_dumps({"type": "error", "message": message, "reason": reason}), False))

        try:
            request = json.loads(text)
        except ValueError:
            return error("Failed to subscribe", "request is not valid JSON")
        if not isinstance(request, dict) or request.get("type") not in ("subscribe", "unsubscribe"):
            return error("Failed to subscribe", "type must be 'subscribe' or 'unsubscribe'")
        wanted = self._parse_channels(request)
        if isinstance(wanted, str):
            return error("Failed to subscribe", wanted)
        if request["type"] == "subscribe" and AUTH_CHANNELS & wanted.keys():
            refused = self._check_signature(request)
            if refused is not None:
                return error(*refused)
        for name, products in wanted.items():
            if request["type"] == "subscribe":
                connection.subscriptions[name] |= products
            else:
                connection.subscriptions[name] -= products
        connection.subscribed = True
        channels = [
            {"name": name, "product_ids": sorted(products)}
            for name, products in connection.subscriptions.items()
            if products
        ]
        connection.queue.put_nowait(_Frame(_dumps({"type": "subscriptions", "channels": channels}), False))
        if connection.subscriptions["level3"] and not connection.schema_sent:
            connection.schema_sent = True
            connection.queue.put_nowait(_Frame(_dumps({"type": "level3", "schema": LEVEL3_SCHEMA}), False))

    def _parse_channels(self, request: dict[str, Any]) -> dict[str, set[str]] | str:
        """The channels and products a (un)subscribe names, or why it is refused."""
        default_products = request.get("product_ids", [])
        channels = request.get("channels")
        if not isinstance(default_products, list) or not isinstance(channels, list) or not channels:
            return "channels must be a non-empty list and product_ids a list"
        wanted: dict[str, set[str]] = {}
        for channel in channels:
            if isinstance(channel, str):
                name, products = channel, default_products
            elif isinstance(channel, dict) and isinstance(channel.get("name"), str):
                name, products = channel["name"], channel.get("product_ids", default_products)
            else:
                return f"{channel!r} is not a valid channel"
            if name not in CHANNELS:
                return f"{name} is not a valid channel"
            if not isinstance(products, list) or not products:
                return f"channel {name} names no product_ids"
            for product in products:
                if product not in self._engines:
                    return f"{product} is not a valid product"
            wanted.setdefault(name, set()).update(products)
        return wanted

    def _check_signature(self, request: dict[str, Any]) -> tuple[str, str] | None:
        """``None`` when the signed fields are right, else the error's (message, reason)."""
        key, passphrase, timestamp, signature = (
            request.get(name) for name in ("key", "passphrase", "timestamp", "signature")
        )
        if key is None or passphrase is None or timestamp is None or signature is None:
            return "Failed to subscribe", "full and level3 channels require authentication"
        if not (isinstance(key, str) and isinstance(passphrase, str) and isinstance(timestamp, str)):
            return "Failed to subscribe", "key, passphrase, timestamp and signature must be strings"
        if not isinstance(signature, str):
            return "Failed to subscribe", "key, passphrase, timestamp and signature must be strings"
        try:
            stamp = Decimal(timestamp)
        except InvalidOperation:
            return "Sorry, you could not be authenticated: Bad Request", "invalid timestamp"
        if not stamp.is_finite() or abs(stamp - Decimal(time.time_ns()) / 10**9) > Decimal(str(self.max_clock_skew)):
            return "Sorry, you could not be authenticated: Bad Request", "request timestamp expired"
        if not hmac.compare_digest(key, self.credentials.key):
            return "Sorry, you could not be authenticated: Unauthorized", "invalid API key"
        if not hmac.compare_digest(passphrase, self.credentials.passphrase):
            return "Sorry, you could not be authenticated: Unauthorized", "invalid passphrase"
        if not hmac.compare_digest(signature, sign(self.credentials.secret, timestamp)):
            return "Sorry, you could not be authenticated: Bad Request", "invalid signature"
        return None

    async def _heartbeat_loop(self, connection: _Connection) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            for product in sorted(connection.subscriptions["heartbeat"]):
                engine = self._engines[product]
                beat = {
                    "type": "heartbeat",
                    "last_trade_id": engine.last_trade_id,
                    "product_id": product,
                    "sequence": engine.sequence,
                    "time": format_time(self._clock()),
                }
                connection.queue.put_nowait(_Frame(_dumps(beat), feed=False))

    async def _send_loop(self, connection: _Connection) -> None:
        faults, rng, stats, ws = self.faults, connection.rng, connection.stats, connection.ws
        cut = faults.disconnect_after is not None and (faults.disconnects is None or stats.index < faults.disconnects)

        async def send(text: str, feed: bool) -> bool:
            """Send one frame; ``False`` once the disconnect fault has closed the connection."""
            await ws.send_str(text)
            if feed:
                stats.sent += 1
                if cut and stats.sent >= (faults.disconnect_after or 0):
                    stats.disconnected = True
                    connection.stop(WSCloseCode.GOING_AWAY, b"disconnect fault")
                    return False
            return True

        held: str | None = None  # a feed frame that waits to go out after the next one
        try:
            while True:
                if held is None:
                    frame = await connection.queue.get()
                else:
                    try:
                        frame = await asyncio.wait_for(connection.queue.get(), _REORDER_FLUSH_S)
                    except TimeoutError:
                        text, held = held, None
                        if not await send(text, True):
                            return
                        continue
                frames = [(frame.text, frame.feed)]
                if frame.feed:
                    if faults.drop and rng.random() < faults.drop:
                        stats.dropped += 1
                        continue
                    if faults.duplicate and rng.random() < faults.duplicate:
                        stats.duplicated += 1
                        frames.append((frame.text, True))
                    if faults.malformed and rng.random() < faults.malformed:
                        stats.malformed += 1
                        await ws.send_str(frame.text[: rng.randint(1, len(frame.text) - 1)])
                    if held is None and faults.reorder and rng.random() < faults.reorder:
                        stats.reordered += 1
                        held = frame.text
                        continue
                if held is not None:
                    frames.append((held, True))
                    held = None
                for text, feed in frames:
                    if not await send(text, feed):
                        return
        except ConnectionError:
            connection.stop(WSCloseCode.GOING_AWAY, b"")  # the client went away

    # -- REST ------------------------------------------------------------------------------

    async def _book(self, request: web.Request) -> web.Response:
        self.rest_calls += 1
        call = self.rest_calls
        engine = self._engines.get(request.match_info["product_id"])
        if engine is None:
            return web.json_response({"message": "NotFound"}, status=404)
        level = request.query.get("level", "1")
        if level not in ("1", "2", "3"):
            return web.json_response({"message": "Invalid level"}, status=400)
        at = max(engine.oldest_sequence, engine.sequence - self.faults.stale_snapshot_by)
        snapshot = engine.book_level3(at)
        if self.faults.rest_delay:
            await asyncio.sleep(self.faults.rest_delay)
        if call <= self.faults.rest_failures:
            return web.json_response({"message": "Internal server error"}, status=500)
        payload: dict[str, Any] = {
            "bids": snapshot["bids"],
            "asks": snapshot["asks"],
            "sequence": snapshot["sequence"],
            "auction_mode": False,
            "time": format_time(self._clock()),
        }
        if level != "3":
            payload["bids"] = _aggregate(snapshot["bids"], top=level == "1")
            payload["asks"] = _aggregate(snapshot["asks"], top=level == "1")
        return web.json_response(payload)


def _aggregate(entries: list[list[str]], *, top: bool) -> list[list[str | int]]:
    """Level-2 rows ``[price, total size, number of orders]`` from level-3 rows, best first."""
    rows: list[list[str | int]] = []
    totals: dict[str, tuple[Decimal, int]] = {}
    for price, size, _ in entries:
        if not Decimal(size):
            continue  # an order matched to 0, waiting for its done: nothing to trade against
        total, count = totals.get(price, (Decimal(0), 0))
        totals[price] = (total + Decimal(size), count + 1)
    for price, (total, count) in totals.items():  # dicts keep the best-first order of entries
        rows.append([price, format_amount(total), count])
    return rows[:1] if top else rows
