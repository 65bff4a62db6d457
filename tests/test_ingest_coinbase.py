"""``ledger ingest coinbase`` against the local exchange, fault by fault.

Each scenario captures a seeded random order flow from :class:`LocalExchange` (which can
drop, duplicate, reorder and garble frames, cut the connection, fail or delay REST calls
and serve stale books), projects the captured streams, and checks that the projected
book of every product equals the exchange's own book order by order at the projector's
last sequence, and that the L1 rows equal the exchange's best bid/ask history wherever
the feed was complete (outside the gaps and the stretch up to the book that resolved
each one).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ledger.cli.ingest import capture_report
from ledger.domain.events import BUY, SELL
from ledger.services.compact import PeriodicCompaction
from ledger.services.project.batch import project
from ledger.services.read.book import book_at
from ledger.services.read.status import stream_status
from ledger.testing import Faults, LocalExchange
from ledger.venues.coinbase.capture import (
    ApiCredentials,
    Capture,
    CaptureSummary,
    CoinbaseOptions,
    stream_name,
)
from ledger.venues.coinbase.capture_store import CaptureBatch, CaptureStore, StreamBatch
from ledger.venues.coinbase.sync import RestBook, SyncTiming

BOTH = ("BTC-USD", "ETH-USD")
TIMING = SyncTiming(grace=0.15, backoff_base=0.05, backoff_cap=0.5)


def _options(ex: LocalExchange, products: tuple[str, ...], **kw: Any) -> CoinbaseOptions:
    defaults: dict[str, Any] = dict(
        ws_url=ex.ws_url,
        rest_url=ex.rest_url,
        idle_timeout=2.0,
        reconnect_base=0.05,
        reconnect_cap=0.3,
        rest_timeout=2.0,
        timing=TIMING,
    )
    return CoinbaseOptions(products=products, **(defaults | kw))


def _credentials(ex: LocalExchange) -> ApiCredentials:
    c = ex.credentials
    return ApiCredentials(c.key, c.secret, c.passphrase)


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _caught_up(cap: Capture, ex: LocalExchange) -> bool:
    """Every product's stream holds or has a book for the exchange's last sequence, with no
    gap left open and nothing waiting to be committed."""
    for product, sync in cap._syncs.items():
        high = sync.tracker.high if sync.tracker.high is not None else -1
        if not sync.live or sync.tracker.gaps or max(high, sync.latest_book) < ex.sequence(product):
            return False
    return cap._backlog() == 0 and not cap._wake.is_set()


async def _capture(
    engine: Engine,
    products: tuple[str, ...],
    *,
    seed: int,
    faults: Faults | None = None,
    orders: int = 400,
    rate: float = 2000,
    options: dict[str, Any] | None = None,
    during: Callable[[LocalExchange, Capture], Awaitable[None]] | None = None,
    on_summary: Callable[[CaptureSummary], None] | None = None,
    before: Callable[[LocalExchange], Awaitable[None]] | None = None,
    exchange: dict[str, Any] | None = None,
    store: Callable[[Capture], None] | None = None,
) -> tuple[CaptureSummary, LocalExchange]:
    async with LocalExchange(products, seed=seed, faults=faults, heartbeat_interval=0.1, **(exchange or {})) as ex:
        if before is not None:
            await before(ex)  # before the capture connects: what it does reaches the capture by a REST book only
        cap = Capture(engine, _options(ex, products, **(options or {})), _credentials(ex), on_summary=on_summary)
        if store is not None:
            store(cap)
        task = asyncio.create_task(cap.run())
        await _until(lambda: cap._subscribed or task.done(), 10, "the subscription")
        if before is not None:  # the first REST books show what `before` did: the flow waits for them
            books = lambda: all(s.live or s._first_book is not None for s in cap._syncs.values())  # noqa: E731
            await _until(lambda: books() or task.done(), 10, "the first books")
        await ex.run_random_flow(orders, rate=rate)
        if during is not None:
            await during(ex, cap)
        await _until(lambda: _caught_up(cap, ex) or task.done(), 30, "the capture to catch up")
        cap.stop()
        summary = await task
    return summary, ex


def _engine_orders(ex: LocalExchange, product: str, at: int) -> list[tuple[str, Decimal, Decimal, str]]:
    book = ex.book_level3(product, at_sequence=at)
    return [(BUY, Decimal(p), Decimal(s), o) for p, s, o in book["bids"]] + [
        (SELL, Decimal(p), Decimal(s), o) for p, s, o in book["asks"]
    ]


def _check_projection(engine: Engine, ex: LocalExchange, products: tuple[str, ...]) -> None:
    summaries = {s.stream: s for s in project(engine)}
    with engine.connect() as conn:
        query = "SELECT s.name, count(*) FROM events e JOIN streams s ON s.id = e.stream_id GROUP BY 1"
        counts = {name: n for name, n in conn.execute(sa.text(query))}
        for status in stream_status(conn):  # gaps made up for by a REST book are not counted as events
            assert status.events == counts[status.stream] and status.last_ingest is not None, status
            assert status.lag_events == 0 and status.lag_seconds == 0, status
    for product in products:
        name = stream_name(product)
        summary = summaries[name]
        assert summary.status == "ok", (name, summary)
        view = book_at(engine, name)
        got = [(o.side, Decimal(o.price), Decimal(o.size), o.order_id) for o in view.book.iter_orders()]
        assert got == _engine_orders(ex, product, summary.last_seq), name
        _check_l1(engine, ex, product)


def _check_l1(engine: Engine, ex: LocalExchange, product: str) -> None:
    with engine.connect() as conn:
        sid = conn.execute(sa.text("SELECT id FROM streams WHERE name = :n"), {"n": stream_name(product)}).scalar_one()
        rows = conn.execute(
            sa.text("SELECT seq, bid_price, bid_size, ask_price, ask_size FROM l1 WHERE stream_id = :s ORDER BY seq"),
            {"s": sid},
        ).all()
        windows = conn.execute(
            sa.text("SELECT first_seq, coalesce(resolved_by_seq, last_seq) FROM gaps WHERE stream_id = :s"), {"s": sid}
        ).all()
        start = conn.execute(sa.text("SELECT min(seq) FROM source_snapshots WHERE stream_id = :s"), {"s": sid}).scalar()
    expected, last = {}, None
    for bbo in ex.bbo_history(product):
        if bbo.bid_price is None or bbo.ask_price is None:
            continue
        top = (bbo.bid_price, bbo.bid_size, bbo.ask_price, bbo.ask_size)
        if top != last:
            expected[bbo.sequence] = top
            last = top
    complete = [r for r in rows if r.seq > start and not any(a <= r.seq <= b for a, b in windows)]
    assert complete, "no L1 row where the feed was complete"
    wrong = [r for r in complete if expected.get(r.seq) != tuple(r[1:])]
    assert not wrong, wrong[:5]
    # and every change the exchange made where the feed was complete is there
    seen = {r.seq for r in rows}
    lo, hi = min(r.seq for r in complete), max(r.seq for r in complete)
    missed = [s for s in expected if lo <= s <= hi and not any(a <= s <= b for a, b in windows) and s not in seen]
    assert not missed, missed[:5]


def _events(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT stream_id, seq, raw FROM events ORDER BY 1, 2")).all()


def test_clean_feed_two_products(engine: Engine) -> None:
    rounds: list[int] = []
    summary, ex = asyncio.run(
        _capture(engine, BOTH, seed=1, options={"summary_every": 0.1}, on_summary=lambda s: rounds.append(s.frames))
    )
    assert len(rounds) >= 2 and rounds == sorted(rounds)  # the periodic summary of long runs
    for part in summary.products:
        assert part.gaps == 0 and part.rejects == 0 and part.resyncs == 1, part
        assert part.events_stored == ex.sequence(part.product) - min(_first_seqs(engine)[part.stream]) + 1
        assert part.lag_ms_p50 is not None and part.lag_ms_p99 is not None
    assert summary.reconnects == 0 and summary.stopped_by == "requested"
    _check_projection(engine, ex, BOTH)


def _first_seqs(engine: Engine) -> dict[str, list[int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT s.name, e.seq FROM events e JOIN streams s ON s.id = e.stream_id ORDER BY 1, 2")
        ).all()
    out: dict[str, list[int]] = {}
    for name, seq in rows:
        out.setdefault(name, []).append(seq)
    return out


@pytest.mark.parametrize(
    ("name", "faults"),
    [
        ("drop", Faults(drop=0.02)),
        ("duplicate", Faults(duplicate=0.05)),
        ("reorder", Faults(reorder=0.05)),
        ("malformed", Faults(malformed=0.02)),
        ("disconnect", Faults(disconnect_after=300, disconnects=2)),
        ("slow and failing REST", Faults(rest_delay=0.3, rest_failures=2)),
        ("stale book", Faults(stale_snapshot_by=5, drop=0.01)),
        ("everything", Faults(drop=0.01, duplicate=0.02, reorder=0.02, malformed=0.01, disconnect_after=500)),
    ],
)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_faults(engine: Engine, name: str, faults: Faults, seed: int) -> None:
    summary, ex = asyncio.run(_capture(engine, BOTH, seed=seed, faults=faults, orders=600))
    stats = ex.connections
    if faults.drop:
        assert sum(s.dropped for s in stats) > 0 and sum(p.resyncs for p in summary.products) > 2
    if faults.duplicate:
        # A copy due just as the disconnect fault cuts the connection is not sent; a copy of a
        # message older than the stream's first book is dropped as such, not counted twice.
        sent_twice = sum(s.duplicated for s in stats) - sum(s.disconnected for s in stats)
        assert sum(p.duplicates + p.dropped_before_start for p in summary.products) >= sent_twice > 0
    if faults.malformed:
        assert summary.rejects == sum(s.malformed for s in stats) > 0
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM rejects")).scalar() == summary.rejects
    if faults.disconnect_after is not None:
        assert summary.reconnects >= 1 and summary.connections >= 2
    if faults.reorder and not faults.drop:
        assert all(p.resyncs == 1 for p in summary.products), summary.products  # late, not lost: no resync
    _check_projection(engine, ex, BOTH)


# -- a loss seen only by a heartbeat (#10.3), REST book times (#10.4), late is not lost (#10.5) --


def _gap_rows(engine: Engine, stream: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT g.first_seq, g.last_seq, g.status, g.resolved_by_seq FROM gaps g"
                    " JOIN streams s ON s.id = g.stream_id WHERE s.name = :n ORDER BY g.first_seq, g.id"
                ),
                {"n": stream},
            )
        ]


def _lose_the_tail(lost: list[int]) -> Callable[[LocalExchange, Capture], Awaitable[None]]:
    """Once the capture has caught up, the exchange publishes one more order whose messages
    all go lost (published by the engine, never sent): only the next heartbeat shows it."""

    async def during(ex: LocalExchange, cap: Capture) -> None:
        await _until(lambda: _caught_up(cap, ex), 30, "the capture to catch up")
        before = ex.sequence("BTC-USD")
        messages = ex.engine("BTC-USD").place_limit("buy", "2500.00", "1")
        lost[:] = [before + 1, before + len(messages)]

    return during


def test_a_lost_tail_seen_only_by_a_heartbeat_is_a_gap_row_resolved_by_the_book(engine: Engine) -> None:
    lost: list[int] = []
    summary, ex = asyncio.run(_capture(engine, ("BTC-USD",), seed=4, orders=150, during=_lose_the_tail(lost)))
    [part] = summary.products
    first, last = lost
    assert last == ex.sequence("BTC-USD")  # nothing followed the loss
    assert part.gaps == 1 and part.resyncs == 2, part  # the stream's first book, then the one for the loss
    assert _gap_rows(engine, "coinbase:BTC-USD") == [(first, last, "snapshot", last)]
    with engine.connect() as conn:
        books = conn.execute(sa.text("SELECT seq FROM source_snapshots ORDER BY seq")).scalars().all()
        stored = conn.execute(sa.text("SELECT max(seq) FROM events")).scalar_one()
    assert books[-1] == last and stored == first - 1


def test_the_projector_reaches_the_book_after_a_lost_tail(engine: Engine) -> None:
    lost: list[int] = []
    _, ex = asyncio.run(_capture(engine, ("BTC-USD",), seed=4, orders=150, during=_lose_the_tail(lost)))
    [summary] = project(engine)
    assert summary.status == "ok" and summary.last_seq == lost[1] == ex.sequence("BTC-USD"), summary
    view = book_at(engine, "coinbase:BTC-USD")
    got = [(o.side, Decimal(o.price), Decimal(o.size), o.order_id) for o in view.book.iter_orders()]
    assert got == _engine_orders(ex, "BTC-USD", lost[1])


def test_rest_books_are_stored_with_the_time_their_response_was_received(engine: Engine) -> None:
    committed: list[tuple[int, datetime]] = []

    def spy(cap: Capture) -> None:
        commit = cap._store.commit

        def recording(batch: CaptureBatch) -> None:
            commit(batch)
            committed.extend((b.seq, b.received_at) for part in batch.streams for b in part.books)  # type: ignore[misc]

        cap._store.commit = recording  # type: ignore[method-assign]

    started = datetime.now(UTC)
    summary, ex = asyncio.run(
        _capture(engine, BOTH, seed=5, orders=300, faults=Faults(drop=0.01, rest_delay=0.05), store=spy)
    )
    ended = datetime.now(UTC)
    with engine.connect() as conn:
        stored: dict[int, datetime] = dict(conn.execute(sa.text("SELECT seq, received_at FROM source_snapshots")).all())
    assert len(committed) == sum(p.resyncs for p in summary.products) > 2
    for seq, received_at in committed:
        assert received_at is not None and received_at.utcoffset() == timedelta(0)
        assert started < received_at < ended
        assert stored[seq] == received_at  # the moment of receipt, not the moment of the insert
    _check_projection(engine, ex, BOTH)


def test_the_store_keeps_a_books_receipt_time(engine: Engine) -> None:
    store = CaptureStore(engine, ["coinbase:BTC-USD"])
    received = datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    try:
        store.open()
        sid = store.ids["coinbase:BTC-USD"]
        book = RestBook(41, '{"sequence": 41, "bids": [], "asks": []}', 0, received)
        store.commit(CaptureBatch([StreamBatch(sid, "coinbase:BTC-USD", books=[book])]))
    finally:
        store.close()
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT received_at FROM source_snapshots WHERE seq = 41")).scalar_one()
    assert stored == received


def test_the_store_counts_the_gap_rows_it_creates(engine: Engine) -> None:
    name = "coinbase:BTC-USD"
    store = CaptureStore(engine, [name])
    try:
        store.open()
        sid = store.ids[name]
        for gaps in ([(3, 9)], [(3, 4), (6, 9)], [(3, 4)], []):  # found, split by a late one, filled
            store.commit(CaptureBatch([StreamBatch(sid, name, gaps=gaps, counts=(0, 0, 0, 0))]))
    finally:
        store.close()
    assert store.gap_rows == {sid: len(_gap_rows(engine, name))} == {sid: 2}


@pytest.mark.parametrize(
    "faults", [Faults(reorder=0.05), Faults(reorder=0.05, drop=0.01)], ids=["reorder", "reorder and drop"]
)
@pytest.mark.parametrize("seed", [1, 2])
def test_the_summary_counts_the_gaps_ledger_gaps_lists_and_late_messages_apart(
    engine: Engine, faults: Faults, seed: int
) -> None:
    summary, ex = asyncio.run(_capture(engine, BOTH, seed=seed, faults=faults, orders=600))
    assert sum(s.reordered for s in ex.connections) > 0
    for part in summary.products:
        assert part.gaps == len(_gap_rows(engine, part.stream)), part
    assert sum(p.late for p in summary.products) > 0
    if faults.drop:
        assert sum(p.gaps for p in summary.products) > 0
    data = json.loads(json.dumps(summary.as_dict()))  # as `--json` prints it
    assert [p["late"] for p in data["products"]] == [p.late for p in summary.products]
    table = capture_report(summary).splitlines()
    assert table[1].split()[:7] == ["product", "messages", "stored", "dups", "gaps", "late", "resyncs"]
    for line, part in zip(table[2:], summary.products, strict=True):
        assert line.split()[4:6] == [f"{part.gaps:,}", f"{part.late:,}"]
    _check_projection(engine, ex, BOTH)


# -- orders matched to 0 rest until their done (#10.1) ---------------------------------------


def _match_to_zero(ex: LocalExchange, product: str, offset: str) -> str:
    """A maker taken whole by a market order: it rests at size 0 until the product's next
    request (or settle) publishes its done."""
    best = ex.engine(product).best_ask()
    price = (best[0] if best is not None else Decimal("2600")) + Decimal(offset)
    maker = ex.place(product, "sell", price, "0.7", profile_id="zero-maker")
    engine = ex.engine(product)
    # Limit buys at the maker's price take what is cheaper first (icebergs show more as
    # they are taken), then the maker whole; they never reach beyond it.
    while (order := engine.order(maker)) is not None and order.size:
        ahead = sum((e.size for e in engine.book().asks if e.price <= price), Decimal(0))
        ex.place(product, "buy", price, ahead, profile_id="zero-taker")
    assert maker in engine.pending
    return maker


async def _zero_orders_first(ex: LocalExchange) -> None:
    await ex.run_random_flow(150)  # a book that no one captured
    for product in ex.products:
        _match_to_zero(ex, product, "0.05")  # the capture's first REST book lists it at size 0


@pytest.mark.parametrize("faults", [None, Faults(drop=0.02)], ids=["clean", "drop"])
def test_orders_matched_to_zero_rest_until_their_done_order_by_order(engine: Engine, faults: Faults | None) -> None:
    left_at_zero: dict[str, str] = {}

    async def end_at_zero(ex: LocalExchange, cap: Capture) -> None:
        for product in ex.products:  # the projection ends with an order at 0 whose done has not come
            left_at_zero[product] = _match_to_zero(ex, product, "0.10")

    _, ex = asyncio.run(
        _capture(
            engine,
            BOTH,
            seed=12,
            faults=faults,
            orders=500,
            exchange={"zero_until_done": True, "icebergs": 0.3},
            before=_zero_orders_first,
            during=end_at_zero,
        )
    )
    with engine.connect() as conn:
        first_books = dict(
            conn.execute(
                sa.text(
                    "SELECT DISTINCT ON (s.name) s.name, b.raw FROM source_snapshots b"
                    " JOIN streams s ON s.id = b.stream_id ORDER BY s.name, b.seq"
                )
            ).all()
        )
    for product in BOTH:
        first = json.loads(first_books[stream_name(product)])
        zero = [o for o in first["bids"] + first["asks"] if Decimal(o[1]) == 0]
        assert zero, "the first REST book lists an order matched to 0 whose done had not come"
        refreshes = [
            m
            for m in ex.messages(product)
            if m["type"] == "change" and m["old_size"] == "0.00000000" and int(m["sequence"]) > first["sequence"]
        ]
        assert refreshes, "the feed carried iceberg refreshes from size 0"
        book = ex.book_level3(product)
        assert ["0.00000000", left_at_zero[product]] in [row[1:] for row in book["asks"]]
    _check_projection(engine, ex, BOTH)  # order by order, the orders at size 0 included
    for product in BOTH:
        view = book_at(engine, stream_name(product))
        zero = {o.order_id for o in view.book.iter_orders() if o.size == 0}
        assert left_at_zero[product] in zero


def test_trades_of_a_captured_feed_carry_the_taker_of_each_match(engine: Engine) -> None:
    """The trades output names each execution's taker: read from the stored ``match``
    message (the stored columns keep only the maker), checked against the JSON itself."""
    from ledger.services.read.trades import trades_batches

    asyncio.run(_capture(engine, ("BTC-USD",), seed=5, orders=300))
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text(
                "SELECT seq, raw FROM events WHERE kind = 'match' AND stream_id = (SELECT id FROM streams "
                "WHERE name = 'coinbase:BTC-USD')"
            )
        ).all()
    want = {seq: (json.loads(raw)["maker_order_id"], json.loads(raw)["taker_order_id"]) for seq, raw in stored}
    _, batches = trades_batches(engine, "coinbase:BTC-USD", chunk=7)
    got = {row["seq"]: (row["maker_id"], row["taker_id"]) for batch in batches for row in batch.to_pylist()}
    assert len(want) > 20, "the flow should have traded"
    assert got == want


def test_a_capture_folded_into_blocks_as_it_goes_projects_to_the_exchange_book(engine: Engine) -> None:
    """--compact-every: folds every 50 ms beside the capture (no projection yet: up to the
    highest seq); the streams then project from blocks and rows to the engine's book and
    its BBO history, and no event is lost or doubled."""
    folds = PeriodicCompaction(engine, [stream_name(p) for p in BOTH], every=0.05)
    with folds:
        summary, ex = asyncio.run(_capture(engine, BOTH, seed=5, orders=1500, rate=3000))
    assert folds.failures == 0 and folds.folded > 0
    folds.run_once()  # what came after the last round
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM event_rows")).scalar_one() == 0
        blocks = conn.execute(sa.text("SELECT count(*) FROM event_blocks")).scalar_one()
    assert blocks > 2  # several rounds, each folding what had come since
    for part in summary.products:
        assert part.gaps == 0 and part.rejects == 0, part
        assert part.events_stored == ex.sequence(part.product) - min(_first_seqs(engine)[part.stream]) + 1
    _check_projection(engine, ex, BOTH)
