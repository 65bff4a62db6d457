"""A Coinbase stream in the log: the projector starts from the venue's REST book, crosses a
gap by resetting to a later REST book, and its book and ``ledger book`` equal the local
matching engine's own book, order by order."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ledger.domain.events import BUY, SELL
from ledger.services.project.batch import ProjectOptions, project
from ledger.services.read.book import book_at
from ledger.storage.log import EventLog, SourceSnapshots, Streams
from ledger.testing import MatchingEngine, RandomOrderFlow, fixed_clock
from ledger.venues.coinbase.codec import copy_row, to_row

STREAM = "coinbase:BTC-USD"


def _engine_book(engine: MatchingEngine, at: int | None = None) -> list[tuple[str, Decimal, Decimal, str]]:
    book = engine.book_level3(at_sequence=at)
    return [(BUY, Decimal(p), Decimal(s), o) for p, s, o in book["bids"]] + [
        (SELL, Decimal(p), Decimal(s), o) for p, s, o in book["asks"]
    ]


def _store(db: Engine, stream_id: int, messages: list[dict[str, Any]]) -> None:
    payload = b""
    for m in messages:
        row = to_row(m, json.dumps(m))
        if row is not None:
            payload += copy_row(row, stream_id)
    with db.begin() as conn:
        EventLog(conn).copy_text(payload)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_start_and_gap_resync_from_source_snapshots(engine: Engine, seed: int) -> None:
    exchange = MatchingEngine("BTC-USD", seed=seed, clock=fixed_clock(), zero_until_done=True)
    flow = RandomOrderFlow(exchange, random.Random(seed))
    messages = [m for batch in flow.steps(1500) for m in batch]
    seqs = [int(m["sequence"]) for m in messages]
    start = seqs[len(seqs) // 5]  # subscribed here: REST book at `start`, events after it
    gap_from, gap_to = seqs[len(seqs) // 2], seqs[len(seqs) // 2 + 40]  # lost messages
    resync = gap_to + 25  # the resync REST book comes a little after the gap
    with engine.begin() as conn:
        sid = Streams(conn).ensure(STREAM, "coinbase")
        for at in (start, resync):
            book = exchange.book_level3(at_sequence=at)
            SourceSnapshots(conn).save(sid, at, json.dumps(book), order_count=len(book["bids"]) + len(book["asks"]))
    stored = [m for m in messages if start < int(m["sequence"]) and not gap_from <= int(m["sequence"]) <= gap_to]
    _store(engine, sid, stored)

    [summary] = project(engine, options=ProjectOptions(snapshot_every=300))
    assert summary.status == "ok" and summary.last_seq == seqs[-1]
    view = book_at(engine, STREAM)
    assert [(o.side, Decimal(o.price), Decimal(o.size), o.order_id) for o in view.book.iter_orders()] == _engine_book(
        exchange
    )
    for at in (start + 1, gap_from - 1, resync, resync + 7, seqs[-30]):
        view = book_at(engine, STREAM, at_seq=at)
        got = [(o.side, Decimal(o.price), Decimal(o.size), o.order_id) for o in view.book.iter_orders()]
        assert got == _engine_book(exchange, at), at
    # L1 rows equal the engine's best bid/ask wherever the feed was complete.
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT seq, bid_price, bid_size, ask_price, ask_size FROM l1 ORDER BY seq")).all()
    expected, last = {}, None
    for bbo in exchange.bbo_history():
        if bbo.bid_price is None or bbo.ask_price is None:
            continue
        top = (bbo.bid_price, bbo.bid_size, bbo.ask_price, bbo.ask_size)
        if top != last:
            expected[bbo.sequence] = top
            last = top
    complete = [r for r in rows if start < r.seq < gap_from or r.seq > resync]
    assert complete and all(expected.get(r.seq) == tuple(r[1:]) for r in complete)
    # A restart from the projector's own snapshots, across the same resync, gives the same L1.
    before = rows
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM l1 WHERE seq > :s"), {"s": gap_from + 3})
        conn.execute(sa.text("UPDATE projector_positions SET last_seq = :s"), {"s": gap_from + 3})
        conn.execute(sa.text("DELETE FROM book_snapshots WHERE seq > :s"), {"s": gap_from + 3})
    project(engine)
    with engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT seq, bid_price, bid_size, ask_price, ask_size FROM l1 ORDER BY seq")).all()
            == before
        )
