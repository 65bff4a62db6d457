"""Gaps that a venue's book (a Coinbase REST level-3 book) makes up for, as every reader sees
them: no book is shown for a seq between the gap and that book, a loss at the end of the log
(seen only by a heartbeat) still moves the projection to the book, and every L1 row written
at a venue book carries the time the book was received. Expectations come from the local
matching engine's own books, not from the projector."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from ledger.cli import cli
from ledger.domain.events import BUY, SELL
from ledger.errors import UnknowableBook
from ledger.services.project.batch import ProjectOptions, project
from ledger.services.read.book import book_at
from ledger.storage.log import SourceSnapshots, Streams
from ledger.testing import MatchingEngine, RandomOrderFlow, fixed_clock
from tests.test_source_snapshots import _engine_book
from tests.test_source_snapshots import _store as _store_events

STREAM = "coinbase:BTC-USD"
RECEIVED = [datetime(2026, 11, 30, 12, 0, i, tzinfo=UTC) for i in range(3)]


def _ours(view: Any) -> list[tuple[str, Decimal, Decimal, str]]:
    return [(o.side, Decimal(o.price), Decimal(o.size), o.order_id) for o in view.book.iter_orders()]


def _engine_top(exchange: MatchingEngine, at: int) -> tuple[object, ...]:
    """The engine's best bid and ask with their sizes at ``at``, from its own book."""
    levels: dict[str, dict[Decimal, Decimal]] = {BUY: {}, SELL: {}}
    for side, price, size, _ in _engine_book(exchange, at):
        levels[side][price] = levels[side].get(price, Decimal(0)) + size
    bids = {p: q for p, q in levels[BUY].items() if q}
    asks = {p: q for p, q in levels[SELL].items() if q}
    bid, ask = max(bids), min(asks)
    return bid, bids[bid], ask, asks[ask]


def _store_book(db: Engine, stream_id: int, exchange: MatchingEngine, at: int, received: datetime) -> None:
    book = exchange.book_level3(at_sequence=at)
    with db.begin() as conn:
        SourceSnapshots(conn).save(stream_id, at, json.dumps(book), order_count=len(book["bids"]) + len(book["asks"]))
        conn.execute(
            sa.text("UPDATE source_snapshots SET received_at = :t WHERE stream_id = :s AND seq = :q"),
            {"t": received, "s": stream_id, "q": at},
        )


def _record_gap(db: Engine, stream_id: int, first: int, last: int, book_seq: int) -> None:
    """The gap row the capture writes for a loss its REST book made up for."""
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO gaps (stream_id, first_seq, last_seq, status, resolved_by_seq, resolved_at)"
                " VALUES (:s, :f, :l, 'snapshot', :b, now())"
            ),
            {"s": stream_id, "f": first, "l": last, "b": book_seq},
        )


def _flow(seed: int, steps: int) -> tuple[MatchingEngine, list[dict[str, Any]], list[int]]:
    exchange = MatchingEngine("BTC-USD", seed=seed, clock=fixed_clock(), zero_until_done=True)
    flow = RandomOrderFlow(exchange, random.Random(seed), icebergs=0.2)
    messages = [m for batch in flow.steps(steps) for m in batch]
    return exchange, messages, [int(m["sequence"]) for m in messages]


@pytest.mark.parametrize("seed", [4, 5])
def test_no_book_between_a_gap_and_the_venue_book_that_ends_it(
    engine: Engine, db_env: dict[str, str], seed: int
) -> None:
    exchange, messages, seqs = _flow(seed, 800)
    start = seqs[len(seqs) // 5]
    gap_from, gap_to = seqs[len(seqs) // 2], seqs[len(seqs) // 2 + 30]
    resync = gap_to + 20  # events gap_to+1 .. resync arrive, but without the lost ones they lead nowhere
    with engine.begin() as conn:
        sid = Streams(conn).ensure(STREAM, "coinbase")
    _store_book(engine, sid, exchange, start, RECEIVED[0])
    _store_book(engine, sid, exchange, resync, RECEIVED[1])
    _store_events(
        engine,
        sid,
        [m for m in messages if start < int(m["sequence"]) and not gap_from <= int(m["sequence"]) <= gap_to],
    )
    [summary] = project(engine, options=ProjectOptions())
    assert summary.status == "ok" and summary.last_seq == seqs[-1]

    for at in (gap_from - 1, resync, resync + 1):
        assert _ours(book_at(engine, STREAM, at_seq=at)) == _engine_book(exchange, at), at
    for at in (gap_from, gap_to, gap_to + 1, resync - 1):
        with pytest.raises(UnknowableBook) as refused:
            book_at(engine, STREAM, at_seq=at)
        text = str(refused.value)
        assert f"seqs from {gap_from} are missing" in text and f"book at seq {resync}" in text, text
    # --at-time lands on a stored event between the gap and the book: refused the same way.
    when = next(m["time"] for m in messages if int(m["sequence"]) == gap_to + 5)
    with pytest.raises(UnknowableBook):
        book_at(engine, STREAM, at_time=datetime.fromisoformat(when.replace("Z", "+00:00")))
    # The command line: exit code 3 and the same message.
    out = CliRunner().invoke(cli, ["book", STREAM, "--at-seq", str(gap_to + 1)])
    assert out.exit_code == 3, out.output
    assert f"the venue's book at seq {resync}" in out.output
    ok = CliRunner().invoke(cli, ["book", STREAM, "--at-seq", str(resync)])
    assert ok.exit_code == 0 and f"after seq {resync}" in ok.output, ok.output

    # Every L1 row has a time; the rows at the venue's books carry when each was received.
    with engine.connect() as conn:
        rows = {r.seq: r.ts for r in conn.execute(sa.text("SELECT seq, ts FROM l1 ORDER BY seq"))}
    assert rows and all(ts is not None for ts in rows.values())
    assert rows.get(start) == RECEIVED[0]
    if resync in rows:
        assert rows[resync] == RECEIVED[1]
    export = CliRunner().invoke(cli, ["export", "l1", STREAM, "-o", "-"])
    assert export.exit_code == 0 and "\\N" not in export.output


def test_a_loss_only_a_heartbeat_showed_moves_the_projection_to_the_venue_book(
    engine: Engine, db_env: dict[str, str]
) -> None:
    """The last messages of a quiet feed are lost: no later event shows the gap, only the
    capture's gap row (resolved by the REST book it fetched) does."""
    exchange, messages, seqs = _flow(7, 600)
    start, quiet = seqs[0] - 1, seqs[len(seqs) // 2]
    book_seq = quiet + 12  # messages quiet+1 .. book_seq were lost; the heartbeat said so
    with engine.begin() as conn:
        sid = Streams(conn).ensure(STREAM, "coinbase")
    _store_book(engine, sid, exchange, start, RECEIVED[0])
    _store_events(engine, sid, [m for m in messages if int(m["sequence"]) <= quiet])
    [first] = project(engine, options=ProjectOptions())
    assert first.last_seq == quiet
    _store_book(engine, sid, exchange, book_seq, RECEIVED[2])
    _record_gap(engine, sid, quiet + 1, book_seq, book_seq)

    [summary] = project(engine, options=ProjectOptions())
    assert summary.status == "ok" and summary.last_seq == book_seq
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT last_seq FROM projector_positions")).scalar_one() == book_seq
        top_rows = conn.execute(sa.text("SELECT seq, ts FROM l1 WHERE seq > :q"), {"q": quiet}).all()
    # A row at the book, with the book's receipt time, exactly when the top moved across the loss.
    moved = _engine_top(exchange, book_seq) != _engine_top(exchange, quiet)
    assert top_rows == ([(book_seq, RECEIVED[2])] if moved else [])
    view = book_at(engine, STREAM)
    assert view.seq == book_seq and view.time == RECEIVED[2]
    assert _ours(view) == _engine_book(exchange, book_seq)
    with pytest.raises(UnknowableBook):
        book_at(engine, STREAM, at_seq=quiet + 3)

    # Run again: nothing more to do. Then the feed goes on after the book: the projection
    # follows on from it, and a restart from scratch gives the same book and L1 rows.
    [again] = project(engine, options=ProjectOptions())
    assert again.last_seq == book_seq and again.l1_rows == 0
    _store_events(engine, sid, [m for m in messages if int(m["sequence"]) > book_seq])
    [after] = project(engine, options=ProjectOptions(snapshot_every=None))
    assert after.status == "ok" and after.last_seq == seqs[-1]
    assert _ours(book_at(engine, STREAM)) == _engine_book(exchange)
    with engine.connect() as conn:
        before = conn.execute(
            sa.text("SELECT seq, ts, bid_price, bid_size, ask_price, ask_size FROM l1 ORDER BY seq")
        ).all()
    rebuilt = CliRunner().invoke(cli, ["project", "--stream", STREAM, "--rebuild"])
    assert rebuilt.exit_code == 0, rebuilt.output
    with engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT seq, ts, bid_price, bid_size, ask_price, ask_size FROM l1 ORDER BY seq")).all()
            == before
        )


def test_an_l1_row_without_a_time_is_exported_with_an_empty_time(engine: Engine, db_env: dict[str, str]) -> None:
    """Rows an older version wrote at a venue book had no time: never COPY's ``\\N`` in the CSV."""
    with engine.begin() as conn:
        sid = Streams(conn).ensure(STREAM, "coinbase")
        conn.execute(
            sa.text("INSERT INTO l1 VALUES (:s, 5, NULL, 1.5, 2, 1.75, 3), (:s, 6, :t, 1.5, 2, 1.8, 3)"),
            {"s": sid, "t": RECEIVED[0]},
        )
        conn.execute(
            sa.text("INSERT INTO projector_positions (stream_id, first_seq, last_seq) VALUES (:s, 5, 6)"), {"s": sid}
        )
    out = CliRunner().invoke(cli, ["export", "l1", STREAM, "-o", "-"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[1:] == [",1.5,1.75,2,3,5", "2026-11-30 12:00:00.000000 UTC,1.5,1.8,2,3,6"]
