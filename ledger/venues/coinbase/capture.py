"""Capture Coinbase Exchange's order-by-order feed into the event log, live.

One asyncio task reads the websocket (aiohttp): every frame is decoded, classified and, if
it is a sequenced event, turned into its event-log row (:mod:`ledger.venues.coinbase.codec`)
and handed to its product's :class:`~ledger.venues.coinbase.sync.ProductSync`, which
decides what is stored and when a REST level-3 book is needed. A writer task commits
what is ready in one transaction at a time on a thread (:class:`CaptureStore`), so rows
group into larger batches exactly when the database is slower; the messages waiting
are bounded (``max_pending``): past that the reader stops reading the socket. A tick
task starts REST fetches when a product asks for one.

Failures and what happens:

* a network error or a close: reconnect with exponential backoff and jitter, resubscribe;
  the messages lost in between show as a jump and the product resyncs from a REST book;
* no frame for ``idle_timeout`` seconds (heartbeats come every second): the connection is
  taken for dead and made again;
* a REST call failing or slow: retried ``rest_retries`` times with backoff and jitter, then
  the product's sync tries again later (with its own backoff);
* a frame that is not JSON or an event with a bad field: stored in ``rejects`` with its
  message number and the reason, attributed to its product when it can be read;
* the database unreachable: the commit is retried until it is back (the reader stops
  reading meanwhile, so memory stays bounded; a long outage ends in a disconnect by the
  exchange, then a reconnect and resync);
* the exchange refusing the subscription (bad credentials, unknown product): stop with
  its message;
* the feed unreachable: reconnect until stopped; if nothing at all was received, the run
  fails with the last connection error, and no stream was created (the streams are
  created, locked and read only when the first frame arrives);
* SIGINT or SIGTERM: stop reading, commit what was received, print the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from sqlalchemy.engine import Engine

from ledger._backoff import Backoff
from ledger._threads import prompt_handoffs
from ledger.domain.sequencing import GapTracker
from ledger.errors import FeedUnreachable, InputError, RecordError, RestCallFailed, SubscriptionRefused
from ledger.storage.copy import event_row
from ledger.storage.log import Reject
from ledger.venues.coinbase.auth import sign_request, subscribe_message
from ledger.venues.coinbase.capture_store import CaptureBatch, CaptureStore, StreamBatch
from ledger.venues.coinbase.codec import (
    MessageError,
    classify,
    decode,
    decode_frame,
    rest_snapshot_rows,
    to_row,
)
from ledger.venues.coinbase.level3 import Level3Schema, level3_to_row
from ledger.venues.coinbase.options import (
    REST_URL,
    WS_URL,
    ApiCredentials,
    CaptureSummary,
    CoinbaseOptions,
    Lags,
    ProductSummary,
    stream_name,
)
from ledger.venues.coinbase.sync import ProductSync, RestBook

__all__ = [
    "REST_URL",
    "WS_URL",
    "ApiCredentials",
    "Capture",
    "CaptureSummary",
    "CoinbaseOptions",
    "ProductSummary",
    "capture",
    "stream_name",
]

log = logging.getLogger(__name__)

_PRODUCT_IN_TEXT = re.compile(r'"product_id"\s*:\s*"([0-9A-Za-z_.-]{1,64})"')
_MAX_FRAME = 16 << 20  # bytes; feed messages are far smaller, REST books come over HTTP
_AUTH_WORDS = ("authenticat", "signature", "passphrase", "api key", "timestamp")
# Between a REST call's attempts: 0.4 s before the second, doubling up to 5 s, jittered.
_REST_RETRIES = Backoff(first=0.4, cap=5.0, jitter=(0.5, 1.0))


def capture(run: Capture) -> CaptureSummary:
    """Run a capture in an event loop of its own (uvloop, a dependency except on Windows,
    where asyncio's own loop runs), with SIGINT and SIGTERM stopping it, until it ends (see
    :class:`Capture`)."""
    runner_options: dict[str, Any] = {}
    with contextlib.suppress(ImportError):
        import uvloop

        runner_options["loop_factory"] = uvloop.new_event_loop
    with asyncio.Runner(**runner_options) as runner:
        return runner.run(run.run(handle_signals=True))


class Capture:
    """One capture run, until ``duration``, ``max_messages``, :meth:`stop` (SIGINT/SIGTERM
    with :func:`capture`), ``halt`` or a fatal error; :meth:`run` in an event loop (tests run
    it next to a LocalExchange). ``on_commit`` gets the ids of the streams each commit
    added events to; ``on_summary`` the summary every ``summary_every`` seconds."""

    def __init__(
        self,
        engine: Engine,
        options: CoinbaseOptions,
        credentials: ApiCredentials,
        *,
        on_summary: Callable[[CaptureSummary], None] | None = None,
        on_commit: Callable[[list[int]], None] | None = None,
        halt: threading.Event | None = None,
    ) -> None:
        if not options.products:
            raise InputError("name at least one product (--product BTC-USD)")
        if options.channel not in ("full", "level3"):
            raise InputError(f"--channel must be full or level3, not {options.channel!r}")
        self.options = options
        self._credentials = credentials
        self._on_summary = on_summary
        self._on_commit = on_commit
        self._halt = halt
        self._store = CaptureStore(engine, [stream_name(p) for p in options.products], retry_for=options.db_retry_for)
        self._syncs: dict[str, ProductSync] = {}
        self._stream_ids: dict[str, int] = {}
        self._rejects: dict[str, list[Reject]] = {p: [] for p in options.products}
        self._reject_counts = dict.fromkeys(options.products, 0)
        self._lags = {p: Lags() for p in options.products}
        self._all_lags = Lags()
        self._counted_at: dict[str, float] = {}
        self.summary = CaptureSummary(products=[ProductSummary(p, stream_name(p)) for p in options.products])
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._failure: BaseException | None = None
        self._subscribed = False
        self._opened = False  # the store: opened when the first frame arrives
        self._opening: asyncio.Future[dict[str, GapTracker]] | None = None
        self._last_error = ""  # why the last connection attempt ended
        self._attempts = 0  # connection attempts that ended
        self._silent = False  # the watchdog closed the connection
        self._last_frame = 0.0
        self._schema: Level3Schema | None = None
        self._fetches: set[asyncio.Task[None]] = set()
        self._messages = 0  # sequenced feed messages received
        self._in_flight = 0  # rows in the commit under way
        self._rng = random.Random()

    # -- the run -------------------------------------------------------------------------------

    def stop(self, reason: str = "requested") -> None:
        if not self._stop.is_set():
            self.summary.stopped_by = self.summary.stopped_by or reason
            self._stop.set()
        elif reason in ("SIGINT", "SIGTERM"):
            self._store.abort.set()  # a second signal: stop retrying the database too

    async def run(self, *, handle_signals: bool = False) -> CaptureSummary:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            if handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, self.stop, sig.name)
            # The loop decodes messages while a thread commits them: the committing thread
            # gets the GIL back promptly after each reply from PostgreSQL.
            with prompt_handoffs():
                await self._run_tasks()
        finally:
            if handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            if self._opening is not None:
                await asyncio.wait([self._opening])  # an open under way when stopped ends first
            await asyncio.to_thread(self._store.close)
            self.summary.seconds = time.perf_counter() - started
            self._fill_summary()
        if self._failure is not None:
            raise self._failure
        if self.summary.frames == 0 and self._last_error:
            # Rule: a capture that never received anything failed, whatever stopped it; it
            # says why with the last connection error, and leaves no (empty) stream behind.
            attempts = self._attempts
            raise FeedUnreachable(
                f"nothing was received from {self.options.ws_url} in {self.summary.seconds:.1f}s "
                f"({attempts} connection attempt{'s' if attempts != 1 else ''}); the last one: "
                f"{self._last_error}. No stream was created"
            )
        return self.summary

    async def _open(self) -> None:
        """Create, lock and read the streams, and start each product's sync: when the first
        frame arrives, so that a feed never reached leaves no stream behind."""
        loop = asyncio.get_running_loop()
        self._opening = asyncio.ensure_future(asyncio.to_thread(self._store.open))
        trackers = await asyncio.shield(self._opening)  # a stop meanwhile waits for it, then closes
        self._opened = True
        for product in self.options.products:
            name = stream_name(product)
            self._stream_ids[product] = self._store.ids[name]
            self._syncs[product] = ProductSync(
                product,
                trackers[name],
                timing=self.options.timing,
                now=loop.time(),
                latest_book=self._store.latest_books.get(self._store.ids[name], -1),
            )

    async def _run_tasks(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.options.rest_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            writer = asyncio.create_task(self._guard(self._writer()))
            others = [
                asyncio.create_task(self._guard(self._feed(session))),
                asyncio.create_task(self._guard(self._ticks(session))),
                asyncio.create_task(self._guard(self._periodic_summary())),
            ]
            if self.options.duration is not None:
                others.append(asyncio.create_task(self._guard(self._stop_after(self.options.duration))))
            try:
                await self._stop.wait()
            finally:
                for task in [*others, *self._fetches]:
                    task.cancel()
                await asyncio.gather(*others, *self._fetches, return_exceptions=True)
                self._closing = True
                self._wake.set()
                await writer

    async def _guard(self, work: Any) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # the first failure stops the run and is raised by run()
            if self._failure is None:
                self._failure = e
            self.stop("error")

    async def _stop_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.stop("duration")

    # -- the websocket ---------------------------------------------------------------------------

    async def _feed(self, session: aiohttp.ClientSession) -> None:
        options = self.options
        backoff = Backoff(first=options.reconnect_base, cap=options.reconnect_cap, jitter=(0.5, 1.0))
        delays = backoff.delays(self._rng)
        while not self._stop.is_set():
            opened = time.monotonic()
            frames_before = self.summary.frames
            reason = "closed by the exchange"
            try:
                async with session.ws_connect(
                    options.ws_url, heartbeat=options.idle_timeout / 2, max_msg_size=_MAX_FRAME, compress=0
                ) as ws:
                    self.summary.connections += 1
                    if self.summary.connections > 1:
                        for sync in self._syncs.values():
                            sync.reconnected()
                    await ws.send_str(json.dumps(self._subscribe_message()))
                    reason = await self._read(ws)
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            finally:
                self._subscribed = False
            self._attempts += 1
            if self._stop.is_set():
                return
            self._last_error = reason
            if self.summary.frames > frames_before or time.monotonic() - opened > 60:
                delays = backoff.delays(self._rng)  # it had been working: from the first delay again
            delay = next(delays)
            self.summary.reconnects += 1
            log.warning("websocket %s: %s; reconnecting in %.1fs", options.ws_url, reason, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    def _subscribe_message(self) -> dict[str, Any]:
        c = self._credentials
        channels = [self.options.channel, "heartbeat"]
        return subscribe_message(list(self.options.products), channels, c.key, c.secret, c.passphrase, int(time.time()))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """Read frames until the connection ends; why it ended."""
        loop = asyncio.get_running_loop()
        limit = self.options.max_messages
        watchdog = asyncio.create_task(self._watch(ws))
        try:
            reason = await self._read_frames(ws, loop, limit)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        if self._silent:
            self._silent = False
            return f"no message for {self.options.idle_timeout:g}s (heartbeat watchdog)"
        return reason

    async def _watch(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Close a connection that stays silent for ``idle_timeout`` seconds (heartbeats
        come every second; websocket pings and pongs do not count: a stuck feed answers them)."""
        loop = asyncio.get_running_loop()
        self._last_frame = loop.time()
        while True:
            await asyncio.sleep(self.options.idle_timeout / 4)
            if loop.time() - self._last_frame > self.options.idle_timeout and self._room.is_set():
                self._silent = True
                await ws.close()
                return

    async def _read_frames(
        self, ws: aiohttp.ClientWebSocketResponse, loop: asyncio.AbstractEventLoop, limit: int | None
    ) -> str:
        while not self._stop.is_set():
            if not self._room.is_set():
                await self._room.wait()  # the writer is behind: stop reading, the socket pushes back
                self._last_frame = loop.time()
            message = await ws.receive()
            if not self._opened and message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                await self._open()  # the first frame: now there is something to store
            self._last_frame = loop.time()
            if message.type is aiohttp.WSMsgType.TEXT:
                self._frame(message.data, loop.time())
            elif message.type is aiohttp.WSMsgType.BINARY:
                self._frame(message.data.decode("utf-8", errors="replace"), loop.time())
            elif message.type is aiohttp.WSMsgType.ERROR:
                return f"connection error: {ws.exception()}"
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return f"closed by the exchange (code {ws.close_code})"
            if limit is not None and self._messages >= limit:
                self.stop("max_messages")
        return "stopping"

    def _frame(self, raw: str, now: float) -> None:
        """One websocket frame: store, buffer, count or reject it."""
        self.summary.frames += 1
        try:
            message = decode_frame(raw)
            if type(message) is list:
                if self._schema is None:
                    raise MessageError("a level3 array came before the channel's schema message")
                row = level3_to_row(message, raw, self._schema)
            else:
                assert isinstance(message, dict)
                kind = classify(message)
                if kind == "unknown" and type(message.get("type")) is not str:
                    raise MessageError("message: type is missing or not a string", field="type")
                if kind != "event":
                    self._control(kind, message, now)
                    return
                row = to_row(message, raw)
            if row is None:
                self.summary.control_messages += 1  # an activate without a sequence, a level3 type not stored
                return
            sync = self._syncs.get(row.product_id)
            if sync is None:
                raise MessageError(f"product {row.product_id} was not subscribed to")
            line = event_row(row.seq, row.kind, row.order_id, row.side, row.price, row.size, row.time, row.raw)
        except RecordError as e:  # a MessageError, or a value the log cannot hold
            self._reject(raw, str(e))
            return
        except (ValueError, TypeError, KeyError, IndexError) as e:  # kept, not lost, whatever it is
            self._reject(raw, f"unreadable: {type(e).__name__}: {e}")
            return
        self._messages += 1
        sync.row(row.seq, (row.seq, line, now), now)
        if self._messages & 63 == 0 and self._backlog() >= self.options.max_pending:
            self._room.clear()
        self._wake.set()

    def _backlog(self) -> int:
        """Rows received and not yet committed."""
        return self._in_flight + sum(sync.ready for sync in self._syncs.values())

    def _control(self, kind: str, message: dict[str, Any], now: float) -> None:
        if kind == "heartbeat":
            self.summary.heartbeats += 1
            product = message.get("product_id")
            sync = self._syncs.get(product) if type(product) is str else None
            seq = message.get("sequence")
            if sync is not None and type(seq) is int:
                sync.heartbeat(seq, now)
            return
        self.summary.control_messages += 1
        if kind == "subscriptions":
            channels = ", ".join(
                f"{c.get('name')} {' '.join(c.get('product_ids') or [])}"
                for c in message.get("channels") or []
                if isinstance(c, dict)
            )
            log.info("subscribed: %s", channels or json.dumps(message)[:300])
            self._subscribed = True
        elif kind == "schema":
            try:
                self._schema = Level3Schema.from_message(message)
            except MessageError as e:
                raise SubscriptionRefused(f"the level3 channel's schema message cannot be read: {e}") from None
        elif kind == "error":
            text = f"{message.get('message', '')}: {message.get('reason', '')}".strip(": ")
            if not self._subscribed or any(w in text.lower() for w in _AUTH_WORDS):
                raise SubscriptionRefused(f"the exchange refused the subscription: {text[:500]}")
            log.warning("the exchange sent an error: %s", text[:500])
        else:
            log.info("message of type %r: %s", message.get("type"), json.dumps(message)[:300])

    def _reject(self, raw: str, reason: str) -> None:
        """Keep a frame that cannot be stored as an event, under its product when it names one."""
        found = _PRODUCT_IN_TEXT.search(raw[:4096])
        product = found.group(1) if found and found.group(1) in self._rejects else self.options.products[0]
        text = raw.replace("\x00", "\\x00")
        self._rejects[product].append(Reject(self.summary.frames, text, reason))
        self._reject_counts[product] += 1
        self.summary.rejects += 1
        log.warning("frame %d rejected (%s): %s", self.summary.frames, product, reason)
        self._wake.set()

    # -- REST books ------------------------------------------------------------------------------

    async def _ticks(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.05)
            if self._halt is not None and self._halt.is_set():
                self.stop("halted")
                return
            if not self._subscribed:
                continue  # a book fetched before the subscription may miss what follows it
            now = loop.time()
            for product, sync in self._syncs.items():
                if sync.wants_book(now):
                    sync.fetching(now)
                    task = asyncio.create_task(self._guard(self._fetch(session, product)))
                    self._fetches.add(task)
                    task.add_done_callback(self._fetches.discard)

    async def _fetch(self, session: aiohttp.ClientSession, product: str) -> None:
        sync = self._syncs[product]
        try:
            raw, received_at = await self._get_book(session, product)
            seq, count = await asyncio.to_thread(_read_book, raw)
        except (RestCallFailed, MessageError) as e:
            sync.fetch_failed()
            log.warning("%s: level-3 book: %s; trying again later", product, e)
            return
        except Exception as e:  # whatever it is, this product tries again later; the others go on
            sync.fetch_failed()
            log.warning("%s: level-3 book: %s: %s; trying again later", product, type(e).__name__, e)
            return
        used = sync.book(RestBook(seq, raw, count, received_at), asyncio.get_running_loop().time())
        log.info(
            "%s: level-3 book at sequence %d (%d orders)%s",
            product,
            seq,
            count,
            "" if used else " is older than the gap it was fetched for; fetching another",
        )
        self._wake.set()

    async def _get_book(self, session: aiohttp.ClientSession, product: str) -> tuple[str, datetime]:
        """The text of a REST level-3 book and the moment its response was received (UTC)."""
        path = f"/products/{product}/book?level=3"
        url = self.options.rest_url.rstrip("/") + path
        problem = ""
        delays = _REST_RETRIES.delays(self._rng)
        for attempt in range(self.options.rest_retries + 1):
            if attempt:
                await asyncio.sleep(next(delays))
            c = self._credentials
            stamp = str(int(time.time()))
            headers = {
                "CB-ACCESS-KEY": c.key,
                "CB-ACCESS-SIGN": sign_request(c.secret, stamp, "GET", path),
                "CB-ACCESS-TIMESTAMP": stamp,
                "CB-ACCESS-PASSPHRASE": c.passphrase,
                "Accept": "application/json",
            }
            try:
                timeout = aiohttp.ClientTimeout(total=self.options.rest_timeout)
                async with session.get(url, headers=headers, timeout=timeout) as response:
                    body = await response.text()
                    if response.status == 200:
                        # When the book was received, on this machine's clock: the time of the
                        # L1 row the projector writes at it (stored in source_snapshots.received_at).
                        return body, datetime.now(UTC)
                    problem = f"HTTP {response.status}: {body[:200]}"
                    if response.status not in (408, 425, 429) and response.status < 500:
                        break  # not worth retrying
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                problem = f"{type(e).__name__}: {e}" if str(e) else f"no answer in {self.options.rest_timeout}s"
        raise RestCallFailed(f"GET {url} failed: {problem}")

    # -- committing ------------------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, received = self._seal()
            if not batch.empty:
                self._in_flight = sum(len(p.rows) for p in batch.streams)
                await asyncio.to_thread(self._store.commit, batch)
                self._in_flight = 0
                if self._on_commit is not None:
                    self._on_commit([p.stream_id for p in batch.streams if p.rows or p.books])
                committed = asyncio.get_running_loop().time()
                for product, times in received.items():
                    lags = [committed - t for t in times]
                    self._lags[product].add(lags)
                    self._all_lags.add(lags)
                self.summary.db_retries = self._store.retries
            if self._backlog() < self.options.max_pending:
                self._room.set()
            if self._closing and batch.empty:
                return
            if self._closing:
                self._wake.set()  # until nothing is left

    def _seal(self) -> tuple[CaptureBatch, dict[str, list[float]]]:
        now = asyncio.get_running_loop().time()
        batch = CaptureBatch()
        received: dict[str, list[float]] = {}
        for product, sync in self._syncs.items():
            rows, books, resolved = sync.take_ready()
            rejects, self._rejects[product] = self._rejects[product], []
            part = StreamBatch(self._stream_ids[product], stream_name(product), rejects=rejects, books=books)
            part.rows = [(seq, line) for seq, line, _ in rows]
            part.gaps = sorted(sync.tracker.gaps + resolved)
            if resolved or books:
                part.resolved_by = sync.latest_book
            last = self._counted_at.get(product, -1.0)
            if (self._closing and last != math.inf) or now - last >= 1.0:  # once a second, and at the end
                self._counted_at[product] = math.inf if self._closing else now
                c = sync.counts
                part.counts = (c.messages, c.stored, c.duplicates, self._reject_counts[product])
            received[product] = [t for _, _, t in rows]
            batch.streams.append(part)
        return batch, received

    # -- reporting -------------------------------------------------------------------------------

    async def _periodic_summary(self) -> None:
        while True:
            await asyncio.sleep(self.options.summary_every)
            self._fill_summary()
            if self._on_summary is not None:
                self._on_summary(self.summary)

    def _fill_summary(self) -> None:
        for part in self.summary.products:
            sync = self._syncs.get(part.product)
            if sync is None:
                continue
            c = sync.counts
            part.messages, part.events_stored, part.duplicates = c.messages, c.stored, c.duplicates
            part.dropped_before_start, part.resyncs, part.stale_books = c.dropped_before_start, c.resyncs, c.stale_books
            # Gaps are the gap rows this run created (what `ledger gaps --all` lists); a message
            # that came late and closed its jump before it was written is counted as late.
            part.gaps = self._store.gap_rows.get(self._stream_ids[part.product], 0)
            part.late = c.late
            part.open_gaps = len(sync.tracker.gaps)
            part.state = sync.state
            part.lag_ms_p50 = self._lags[part.product].percentile(0.50)
            part.lag_ms_p99 = self._lags[part.product].percentile(0.99)
            part.rejects = self._reject_counts[part.product]
            part.awaiting_book = sync.buffered
        self.summary.db_retries = self._store.retries
        self.summary.lag_ms_p50 = self._all_lags.percentile(0.50)
        self.summary.lag_ms_p99 = self._all_lags.percentile(0.99)


def _read_book(raw: str) -> tuple[int, int]:
    """The sequence and order count of a REST level-3 book; MessageError when it is not one."""
    seq, orders = rest_snapshot_rows(decode(raw))
    return seq, len(orders)
