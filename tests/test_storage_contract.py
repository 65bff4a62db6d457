"""The contract of the storage interfaces (``ledger.storage``), against the real PostgreSQL.

Each test drives one interface through its public methods and checks what the tables
hold afterwards, so that the services above can rely on what the methods promise: the
event log, gaps, checkpoints, source snapshots, streams, rejects, advisory locks and the
projector's fence, positions, L1 rows and book snapshots, and the COPY encoding.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ledger.errors import (
    ConnectionLost,
    ConstraintViolation,
    DatabaseError,
    LockLost,
    RecordError,
    SchemaMismatch,
    SnapshotError,
    StreamError,
)
from ledger.storage.copy import escape, event_row, events_payload, l1_payload
from ledger.storage.database import create_engine
from ledger.storage.locks import (
    MEMBER_LOCK_CLASS,
    PROJECT_LOCK_CLASS,
    WRITER_LOCK_CLASS,
    Locks,
    fence_projector,
    member_lock,
    projector_lock,
    writer_lock,
)
from ledger.storage.log import (
    Checkpoint,
    Checkpoints,
    EventLog,
    GapStore,
    Reject,
    Rejects,
    SourceSnapshots,
    Streams,
)
from ledger.storage.projection import L1Rows, Position, Positions, Snapshots
from ledger.venues.csv.format import fast_row, parse_line, row_of
from tests.conftest import V31

T0 = datetime(2021, 8, 2, 22, 11, 21, 944040, tzinfo=UTC)


def _stream(engine: Engine, name: str = "csv:contract", source: str = "csv") -> int:
    with engine.begin() as conn:
        return Streams(conn).ensure(name, source)


def _append(engine: Engine, stream_id: int, seqs: list[int], *, raw: str = "line {seq}") -> None:
    rows = [
        event_row(
            seq, "add", str(seq), "B", "10.5", "3", (T0 + timedelta(seconds=seq)).isoformat(), raw.format(seq=seq)
        )
        for seq in seqs
    ]
    with engine.begin() as conn:
        EventLog(conn).append(stream_id, rows)


def _table(engine: Engine, query: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(query), params)]


# -- the COPY encoding ---------------------------------------------------------------------------


def test_values_are_escaped_and_refused_as_copy_text_requires() -> None:
    assert escape("a\\b\tc\nd\re") == "a\\\\b\\tc\\nd\\re" and escape("plain") == "plain"
    row = event_row(7, "add", None, "B", "1.5", None, None, "x\ty")
    assert row == b"7\tadd\t\\N\tB\t1.5\t\\N\t\\N\tx\\ty"
    assert events_payload(3, [row, row]) == b"3\t" + row + b"\n3\t" + row + b"\n"
    assert events_payload(3, []) == b""
    with pytest.raises(RecordError, match="NUL"):
        event_row(1, "add", "a\x00b", "B", "1", "1", None, "raw")
    with pytest.raises(RecordError, match="Unicode"):
        event_row(1, "add", "1", "B", "1", "1", None, "\ud800")
    with pytest.raises(RecordError, match="integer"):
        event_row("1", "add", "1", "B", "1", "1", None, "raw")  # type: ignore[arg-type]
    with pytest.raises(RecordError, match="integer"):
        events_payload("3", [row])  # type: ignore[arg-type]
    # maybe_bad: NULL, or true on a row the venue marked (a seventh element)
    assert l1_payload(4, [(9, None, 1, Decimal("2.50"), 3, 4)]) == b"4\t9\t\\N\t1\t2.50\t3\t4\t\\N\n"
    marked = l1_payload(4, [(9, None, 1, 2, 3, 4), (10, None, 1, 2, 3, 5, True)])
    assert marked == b"4\t9\t\\N\t1\t2\t3\t4\t\\N\n4\t10\t\\N\t1\t2\t3\t5\tt\n"


def test_the_csv_fast_path_makes_the_rows_the_encoder_makes() -> None:
    lines = V31.read_bytes().splitlines(keepends=True)[1:2000]
    lines += [b"5,1,BUY,1,1,,,,,,,,,,,2021-08-02 22:11:21.94404 UTC\r\n", b"6,,,,,,,,,7,SELL,,,,,2021-08-02 22:11:21Z"]
    for line in lines:
        fast = fast_row(line)
        assert fast is not None, line
        text = line.decode().rstrip("\r\n")
        row = parse_line(text)
        assert fast == (row.seq, row_of(row, text, line))  # event_row's, raw NULL where canonical


def test_what_is_appended_reads_back_exactly(engine: Engine) -> None:
    sid = _stream(engine)
    hostile = "tab\there, back\\slash, new\nline, cr\r, \\N and ünïcødé"
    with engine.begin() as conn:
        EventLog(conn).append(sid, [event_row(5, "delete", "o\t1", "S", None, None, None, hostile)])
    assert _table(engine, "SELECT seq, kind, order_id, side, price, size, ts, raw FROM events") == [
        (5, "delete", "o\t1", "S", None, None, None, hostile)
    ]


# -- streams -------------------------------------------------------------------------------------


def test_streams_are_created_once_and_keep_their_source(engine: Engine) -> None:
    with engine.begin() as conn:
        streams = Streams(conn)
        first = streams.ensure("csv:a", "csv")
        assert streams.ensure("csv:a", "csv") == first
        second = streams.ensure("coinbase:BTC-USD", "coinbase")
        with pytest.raises(StreamError, match="holds csv events"):
            streams.ensure("csv:a", "coinbase")
        assert streams.get("csv:a") == first and streams.source(second) == "coinbase"
        assert streams.names() == ["coinbase:BTC-USD", "csv:a"]
        assert streams.all() == [(second, "coinbase:BTC-USD", "coinbase"), (first, "csv:a", "csv")]
        with pytest.raises(StreamError, match=r"no stream named 'nope' \(known streams: coinbase:BTC-USD, csv:a\)"):
            streams.get("nope")
        with pytest.raises(StreamError, match="no stream with id"):
            streams.source(first + second + 100)
    assert _table(engine, "SELECT name, source FROM streams ORDER BY id") == [
        ("csv:a", "csv"),
        ("coinbase:BTC-USD", "coinbase"),
    ]


# -- the event log -------------------------------------------------------------------------------


def test_the_event_log_appends_and_reads_in_seq_order(engine: Engine) -> None:
    sid = _stream(engine)
    other = _stream(engine, "csv:other")
    _append(engine, sid, [3, 1, 2, 7, 8])
    _append(engine, other, [1, 2])
    with engine.connect() as conn:
        log = EventLog(conn)
        assert log.seq_range(sid) == (1, 8) and log.seq_range(_stream(engine, "csv:empty")) == (None, None)
        rows = list(log.read(sid))
        assert [r[0] for r in rows] == [1, 2, 3, 7, 8]
        assert tuple(rows[0][:6]) == (1, "add", "1", "B", "10.5", "3")
        assert rows[0][6].startswith("2021-08-02 22:11:22.94404")  # ISO text with its offset
        assert [r[0] for r in log.read(sid, after=2, upto=7)] == [3, 7]
        chunks = list(log.read_chunks(sid, chunk=2, with_time=False))
        assert [[r[0] for r in c] for c in chunks] == [[1, 2], [3, 7], [8]]
        assert all(r[6] is None for c in chunks for r in c)
        assert log.raw_of(sid, [2, 7, 99]) == {2: "line 2", 7: "line 7"}
        assert log.any_between(sid, first=4, last=7) and not log.any_between(sid, first=4, last=6)
        assert log.nearest(sid, at_or_after=4) == (7, T0 + timedelta(seconds=7))
        assert log.nearest(sid, at_or_before=6) == (3, T0 + timedelta(seconds=3))
        with pytest.raises(sa.exc.NoResultFound):
            log.nearest(sid, at_or_after=9)
        with pytest.raises(TypeError):
            log.nearest(sid)
    with engine.begin() as conn, pytest.raises(ConstraintViolation):  # a seq is stored once
        EventLog(conn).append(sid, [event_row(1, "add", "1", "B", "1", "1", None, "again")])
    assert _table(engine, "SELECT count(*) FROM events WHERE stream_id = :s", s=sid) == [(5,)]


def test_copy_text_takes_rows_already_encoded(engine: Engine) -> None:
    sid = _stream(engine)
    with engine.begin() as conn:
        EventLog(conn).copy_text(events_payload(sid, [event_row(1, "add", "1", "B", "1", "1", None, "r")]))
    assert _table(engine, "SELECT seq, raw FROM events") == [(1, "r")]


# -- gaps ----------------------------------------------------------------------------------------


def _gaps(engine: Engine, sid: int) -> list[tuple[Any, ...]]:
    return _table(
        engine,
        "SELECT id, first_seq, last_seq, status, resolved_by_seq, projector_skipped_at IS NOT NULL"
        " FROM gaps WHERE stream_id = :s ORDER BY id",
        s=sid,
    )


def test_gap_rows_follow_the_tracker(engine: Engine) -> None:
    sid = _stream(engine)
    with engine.begin() as conn:
        store = GapStore(conn)
        stored = store.reconcile(sid, {}, [(2, 4), (10, 20)])
        assert stored == store.open_gaps(sid) and set(stored) == {(2, 4), (10, 20)}
        # late events fill 2..4 and split 10..20 in two; the first piece keeps the row
        stored = store.reconcile(sid, stored, [(10, 12), (15, 20)])
        assert set(stored) == {(10, 12), (15, 20)}
    rows = _gaps(engine, sid)
    assert [(r[1], r[2], r[3]) for r in rows] == [(2, 4, "filled"), (10, 12, "open"), (15, 20, "open")]
    with engine.connect() as conn:
        detected = dict(
            conn.execute(sa.text("SELECT first_seq, detected_at FROM gaps WHERE stream_id = :s"), {"s": sid}).all()
        )
    assert detected[15] == detected[10]  # a piece of a split gap keeps its detection time
    with engine.begin() as conn:
        store = GapStore(conn)
        assert store.resolve_by_snapshot(sid, 13) == 1  # 10..12 lies wholly at or below the book
        assert store.open_gaps(sid) == {(15, 20): stored[(15, 20)]}
        assert store.tail_resolved(sid, 10) == 13 and store.tail_resolved(sid, 15) is None
        assert store.highest_seq(sid) == 20 and store.highest_seq(_stream(engine, "csv:none")) is None
        store.mark_skipped(sid, 11, 16)  # touches every row it overlaps, whatever its status
    assert [(r[1], r[3], r[4], r[5]) for r in _gaps(engine, sid)] == [
        (2, "filled", None, False),
        (10, "snapshot", 13, True),
        (15, "open", None, True),
    ]
    with engine.begin() as conn:
        GapStore(conn).clear_skipped(sid)
        listed = GapStore(conn).rows(sid)
        everything = GapStore(conn).rows(sid, include_closed=True)
    assert not any(r[5] for r in _gaps(engine, sid))
    assert [(g["first_seq"], g["last_seq"], g["missing"], g["status"]) for g in listed] == [(15, 20, 6, "open")]
    assert [g["status"] for g in everything] == ["filled", "snapshot", "open"]
    assert isinstance(everything[0]["detected_at"], str) and everything[0]["resolved_at"] is not None


def test_the_age_of_a_gap_is_that_of_its_oldest_open_row(engine: Engine) -> None:
    sid = _stream(engine)
    with engine.begin() as conn:
        GapStore(conn).reconcile(sid, {}, [(5, 6), (9, 9)])
        conn.execute(
            sa.text(
                "UPDATE gaps SET detected_at = now() - interval '30 seconds' WHERE first_seq = 9 AND stream_id = :s"
            ),
            {"s": sid},
        )
    with engine.connect() as conn:
        store = GapStore(conn)
        assert 29 < store.age(sid, first=1, last=100) < 60
        assert 0 <= store.age(sid, first=5, last=5) < 29
        assert store.age(sid, first=7, last=8) == float("inf")


# -- checkpoints, rejects, source snapshots ------------------------------------------------------


def test_checkpoints_are_one_row_per_stream_and_source(engine: Engine) -> None:
    sid = _stream(engine)
    with engine.begin() as conn:
        checkpoints = Checkpoints(conn)
        assert checkpoints.get(sid, "/data/a.csv") is None
        checkpoints.put(sid, "/data/a.csv", Checkpoint(10, 500, "f1", False, 8, 1, 1))
        checkpoints.put(sid, "/data/a.csv", Checkpoint(20, 900, "f2", True, 17, 2, 1))
        checkpoints.put(sid, "stdin", Checkpoint(3, 0, "", False))
        assert checkpoints.get(sid, "/data/a.csv") == Checkpoint(20, 900, "f2", True, 17, 2, 1)
        assert checkpoints.get(sid, "stdin") == Checkpoint(3, 0, "", False, 0, 0, 0)
    assert _table(engine, "SELECT source, lines_done FROM ingest_checkpoints ORDER BY source") == [
        ("/data/a.csv", 20),
        ("stdin", 3),
    ]


def test_rejects_are_kept_once(engine: Engine) -> None:
    sid = _stream(engine)
    items = [Reject(4, "bad,line", "expected 16 columns, found 2"), Reject(2, "x", "why")]
    with engine.begin() as conn:
        Rejects(conn).add(sid, "/a.csv", items)
        Rejects(conn).add(sid, "/a.csv", items[:1])  # the same line again: kept once
        Rejects(conn).add(sid, "/b.csv", [])
        assert Rejects(conn).count(sid) == 2
        assert Rejects(conn).rows(sid) == [
            {"source": "/a.csv", "line_no": 2, "reason": "why", "raw": "x"},
            {"source": "/a.csv", "line_no": 4, "reason": "expected 16 columns, found 2", "raw": "bad,line"},
        ]
        assert len(Rejects(conn).rows(sid, limit=1)) == 1


def test_source_snapshots_are_stored_once_with_their_receipt_time(engine: Engine) -> None:
    sid = _stream(engine, "coinbase:BTC-USD", "coinbase")
    with engine.begin() as conn:
        books = SourceSnapshots(conn)
        assert books.latest_seq(sid) is None
        assert books.save(sid, 100, '{"sequence": 100}', order_count=3, received_at=T0)
        assert not books.save(sid, 100, "again", order_count=0)
        assert books.save(sid, 200, '{"sequence": 200}', order_count=5)
        with pytest.raises(ValueError, match="naive received_at"):
            books.save(sid, 300, "{}", order_count=0, received_at=T0.replace(tzinfo=None))
        assert books.latest_seq(sid) == 200
        found = books.first_from(sid, 50)
        assert found is not None and (found.seq, found.raw, found.received_at) == (100, '{"sequence": 100}', T0)
        assert books.first_from(sid, 101, upto=150) is None
        later = books.first_from(sid, 101)
        assert later is not None and later.seq == 200 and later.received_at > T0
    assert _table(engine, "SELECT seq, order_count FROM source_snapshots ORDER BY seq") == [(100, 3), (200, 5)]


# -- locks and the fence -------------------------------------------------------------------------


def _held(engine: Engine) -> set[tuple[int, int, int]]:
    return set(
        _table(
            engine,
            "SELECT pid, classid::int, objid::int FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
    )


def test_advisory_locks_are_exclusive_per_session_and_seen_in_pg_locks(engine: Engine) -> None:
    with engine.connect() as one, engine.connect() as two:
        a, b = Locks(one), Locks(two)
        pid_a, pid_b = a.backend_pid(), b.backend_pid()
        assert pid_a != pid_b
        assert a.try_take(writer_lock(7)) and a.try_take(projector_lock(7))
        assert not b.try_take(writer_lock(7)) and b.try_take(writer_lock(8))
        b.take(member_lock(pid_b))
        assert {
            (pid_a, WRITER_LOCK_CLASS, 7),
            (pid_a, PROJECT_LOCK_CLASS, 7),
            (pid_b, MEMBER_LOCK_CLASS, pid_b),
        } <= _held(engine)
        assert a.holds(writer_lock(7), pid=pid_a) and not b.holds(writer_lock(7), pid=pid_b)
        assert b.holders(lock_class=MEMBER_LOCK_CLASS) == 1 and b.holders(lock_class=WRITER_LOCK_CLASS) == 2
        a.release(writer_lock(7))
        assert b.try_take(writer_lock(7))
        a.release_all()
        assert not a.holds(projector_lock(7), pid=pid_a)
        b.give_back()  # everything of that session
        assert not {lock for lock in _held(engine) if lock[0] in (pid_a, pid_b)}
        # a transaction lock lasts until the transaction ends
        one.commit()
        with one.begin():
            assert a.try_take_for_transaction(projector_lock(9))
            assert not b.try_take(projector_lock(9))
        assert b.try_take(projector_lock(9))
        b.give_back(projector_lock(9))
        assert not b.holds(projector_lock(9), pid=pid_b)


def test_a_lost_session_lets_go_of_its_locks_and_give_back_copes(engine: Engine) -> None:
    conn = engine.connect()
    locks = Locks(conn)
    pid = locks.backend_pid()
    assert locks.try_take(writer_lock(3))
    conn.commit()
    with engine.connect() as admin:
        admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    locks.give_back(writer_lock(3))  # the connection is gone: dropped, no error
    assert conn.invalidated or conn.closed
    with engine.connect() as other:
        assert Locks(other).try_take(writer_lock(3))
        Locks(other).give_back()


def test_the_fence_lets_only_the_lock_holder_write_on_from_its_own_position(engine: Engine) -> None:
    sid = _stream(engine)
    holder = engine.connect()
    try:
        owner = Locks(holder).backend_pid()
        assert Locks(holder).try_take(projector_lock(sid))
        holder.commit()
        with engine.begin() as conn:
            fence_projector(conn, sid, owner=owner, expected=None)  # the stream's first write
            Positions(conn).put(sid, Position(first_seq=1, last_seq=5))
        with engine.begin() as conn:
            fence_projector(conn, sid, owner=owner, expected=5)
            fence_projector(conn, sid, owner=None, expected=5)
        with engine.begin() as conn, pytest.raises(LockLost, match="its projector position is 5, not 3"):
            fence_projector(conn, sid, owner=owner, expected=3)
        Locks(holder).give_back(projector_lock(sid))
        with engine.begin() as conn, pytest.raises(LockLost, match="lost its lock"):
            fence_projector(conn, sid, owner=owner, expected=5)
    finally:
        holder.close()


# -- what the projector writes -------------------------------------------------------------------


def test_positions_l1_rows_and_their_export(engine: Engine) -> None:
    sid = _stream(engine)
    with engine.begin() as conn:
        positions = Positions(conn)
        assert positions.get(sid) is None
        positions.put(
            sid, Position(first_seq=1, last_seq=3, events_applied=3, l1_rows=2, anomalies={"unknown_order": 1})
        )
        L1Rows(conn).copy(sid, [(1, T0, 218, 300, Decimal("218.50"), 5), (3, None, 218, 100, 219, 5)])
        positions.put(sid, Position(first_seq=1, last_seq=9, status="stopped_at_gap", message="seqs 4..5 missing"))
        assert positions.get(sid) == Position(1, 9, 0, 0, {}, 0, "stopped_at_gap", "seqs 4..5 missing")
        assert L1Rows(conn).count(sid) == 2
        out = io.BytesIO()
        assert L1Rows(conn).export_csv(sid, out) == 2
    assert out.getvalue().decode("utf-8") == (
        "\ufefftime,bid_price,ask_price,bid_size,ask_size,seq_num\n"
        "2021-08-02 22:11:21.944040 UTC,218,218.5,300,5,1\n"
        ",218,219,100,5,3\n"
    )
    with engine.begin() as conn:
        L1Rows(conn).delete(sid)
        Positions(conn).delete(sid)
        assert L1Rows(conn).count(sid) == 0 and Positions(conn).get(sid) is None


def test_book_snapshots_are_checked_listed_and_pruned(engine: Engine) -> None:
    sid = _stream(engine)
    with engine.begin() as conn:
        snapshots = Snapshots(conn)
        for seq in (10, 20, 30, 40, 50):
            snapshots.save(sid, seq, f"book {seq}".encode(), format_version=1, order_count=seq)
        snapshots.save(sid, 50, b"not again", format_version=1, order_count=0)  # kept once
        assert [i.seq for i in snapshots.infos(sid)] == [50, 40, 30, 20, 10]
        assert [i.seq for i in snapshots.infos(sid, at_or_before=35)] == [30, 20, 10]
        info = snapshots.infos(sid)[0]
        assert (info.format_version, info.order_count, info.size) == (1, 50, len(b"book 50"))
        assert snapshots.load(sid, 50) == (1, b"book 50")
        conn.execute(sa.text("UPDATE book_snapshots SET payload = 'x' WHERE seq = 40 AND stream_id = :s"), {"s": sid})
        with pytest.raises(SnapshotError, match="does not match its checksum"):
            snapshots.load(sid, 40)
        assert snapshots.prune(sid, keep=1, keep_every=2) == 2  # of 40, 30, 20, 10: 30 and 10 stay
        assert [i.seq for i in snapshots.infos(sid)] == [50, 30, 10]
        assert snapshots.delete_all(sid) == 3
    assert _table(engine, "SELECT count(*) FROM book_snapshots") == [(0,)]


# -- driver errors -------------------------------------------------------------------------------


def test_driver_errors_become_ledger_errors_at_the_engine(engine: Engine) -> None:
    sid = _stream(engine)
    with engine.begin() as conn, pytest.raises(ConstraintViolation) as broken:
        conn.execute(sa.text("INSERT INTO streams (id, name, source) VALUES (:i, 'again', 'csv')"), {"i": sid})
    assert broken.value.sqlstate == "23505" and isinstance(broken.value.orig, psycopg.errors.UniqueViolation)
    assert str(broken.value).startswith("database error: duplicate key value violates unique constraint")
    with engine.connect() as conn, pytest.raises(SchemaMismatch, match="no_such_column"):
        conn.execute(sa.text("SELECT no_such_column FROM streams"))
    with engine.connect() as conn, pytest.raises(DatabaseError) as refused:
        conn.execute(sa.text("SELECT 1 / 0"))
    assert type(refused.value) is DatabaseError and refused.value.sqlstate == "22012"
    with engine.connect() as conn, pytest.raises(sa.exc.NoResultFound):  # not a driver error: as it is
        conn.execute(sa.text("SELECT 1 WHERE false")).one()


def test_a_lost_connection_is_connection_lost_and_the_pool_recovers(engine: Engine) -> None:
    with engine.connect() as conn:
        pid = Locks(conn).backend_pid()
        with engine.connect() as admin:
            admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        with pytest.raises(ConnectionLost):
            conn.execute(sa.text("SELECT 1"))
    with engine.connect() as conn:  # a pooled connection whose server went: the ping replaces it
        pid = Locks(conn).backend_pid()
    with engine.connect() as admin:
        admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    unreachable = create_engine(engine.url.set(host="127.0.0.1", port=1))
    try:
        with pytest.raises(ConnectionLost, match="database error: "):
            unreachable.connect()
    finally:
        unreachable.dispose()


def test_copy_errors_are_mapped_as_well(engine: Engine) -> None:
    sid = _stream(engine)
    _append(engine, sid, [1])
    with engine.begin() as conn, pytest.raises(ConstraintViolation) as broken:
        EventLog(conn).append(sid, [event_row(1, "add", "1", "B", "1", "1", None, "again")])
    assert broken.value.sqlstate == "23505"
    with engine.begin() as conn, pytest.raises(DatabaseError, match="invalid input syntax"):
        EventLog(conn).append(sid, [event_row(2, "add", "1", "B", "not a number", "1", None, "bad")])
