"""Book snapshots in use: restart from a snapshot, rebuild, bad snapshots, pruning, and
the book at any past seq or time."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from ledger.cli import cli
from ledger.domain.book import Book
from ledger.services.project.replay import restore_latest
from ledger.storage.log import Streams
from ledger.storage.projection import L1Rows
from ledger.venues.csv.format import parse_line, to_number
from tests.conftest import V31, V31_EXPECTED_SHA256

STREAM = "csv:l3_data_v3.1"


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def export(engine: Engine, stream: str = STREAM) -> bytes:
    out = io.BytesIO()
    with engine.connect() as conn:
        L1Rows(conn).export_csv(Streams(conn).get(stream), out)
    return out.getvalue()


def snapshot_seqs(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.text("SELECT seq FROM book_snapshots ORDER BY seq"))]


def test_snapshots_are_taken_every_n_events_with_the_position(db_env: dict[str, str], engine: Engine) -> None:
    run("ingest", "csv", str(V31))
    run("project", "--snapshot-every", "5000")
    seqs = snapshot_seqs(engine)
    first = 1627942268920653171
    assert seqs[:6] == [first + 5000 * k - 1 for k in range(1, 7)]
    assert len(seqs) == 34247 // 5000


def test_restart_from_a_snapshot_matches_a_full_run(db_env: dict[str, str], engine: Engine, caplog) -> None:  # type: ignore[no-untyped-def]
    lines = V31.read_text(encoding="utf-8-sig").splitlines()
    head = lines[0]
    # Ingest and project the file in three parts, restarting the projector in between.
    for part in (lines[1:12000], lines[12000:25000], lines[25000:]):
        data = ("\ufeff" + head + "\n" + "\n".join(part) + "\n").encode()
        CliRunner().invoke(cli, ["ingest", "csv", "-", "--stream", STREAM], input=data, catch_exceptions=False)
        summary = json.loads(run("project", "--snapshot-every", "3000", "--json"))
    assert summary[0]["from_snapshot"] is not None
    assert hashlib.sha256(export(engine)).hexdigest() == V31_EXPECTED_SHA256


def test_rebuild_gives_the_same_l1_as_the_incremental_runs(db_env: dict[str, str], engine: Engine) -> None:
    run("ingest", "csv", str(V31))
    run("project", "--snapshot-every", "4000")
    incremental = export(engine)
    run("project", "--rebuild", "--stream", STREAM)
    assert export(engine) == incremental
    assert hashlib.sha256(incremental).hexdigest() == V31_EXPECTED_SHA256


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE book_snapshots SET payload = substring(payload from 1 for 20) WHERE seq = :seq",
        "UPDATE book_snapshots SET format_version = 99 WHERE seq = :seq",
        "UPDATE book_snapshots SET payload = payload || '\\x00'::bytea, checksum = 'x' WHERE seq = :seq",
    ],
)
def test_a_bad_snapshot_is_refused_and_an_earlier_one_used(
    db_env: dict[str, str], engine: Engine, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    run("ingest", "csv", str(V31))
    run("project", "--snapshot-every", "5000")
    seqs = snapshot_seqs(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(damage), {"seq": seqs[-1]})
        # As if the projector had been killed 7 events after taking that snapshot.
        conn.execute(sa.text("DELETE FROM l1 WHERE seq > :seq"), {"seq": seqs[-1] + 7})
        conn.execute(sa.text("UPDATE projector_positions SET last_seq = :s"), {"s": seqs[-1] + 7})
    with caplog.at_level(logging.WARNING, logger="ledger"):
        summary = json.loads(run("project", "--json"))
    assert summary[0]["from_snapshot"] == seqs[-2]
    assert f"stream '{STREAM}', book snapshot at seq {seqs[-1]}" in caplog.text
    assert hashlib.sha256(export(engine)).hexdigest() == V31_EXPECTED_SHA256


def test_a_snapshot_beyond_the_log_is_refused(db_env: dict[str, str], engine: Engine, caplog) -> None:  # type: ignore[no-untyped-def]
    run("ingest", "csv", str(V31))
    run("project", "--snapshot-every", "5000")
    seqs = snapshot_seqs(engine)
    with engine.begin() as conn:  # the log lost its tail (restored from an older backup, say)
        conn.execute(sa.text("DELETE FROM event_rows WHERE seq > :seq"), {"seq": seqs[-1] - 1})
        stream_id = Streams(conn).get(STREAM)
    with caplog.at_level(logging.WARNING, logger="ledger"):
        restored = restore_latest(engine, stream_id, STREAM, at_or_before=seqs[-1])
        summary = json.loads(run("project", "--json"))
    assert restored is not None and restored[1] == seqs[-2]
    assert f"book snapshot at seq {seqs[-1]}: refused, the log ends at seq {seqs[-1] - 1}" in caplog.text
    assert summary[0]["events_applied"] == 0
    assert f"the projector position {summary[0]['last_seq']} is beyond the end of the log" in caplog.text


def test_prune_keeps_the_newest_and_every_mth_older(db_env: dict[str, str], engine: Engine) -> None:
    run("ingest", "csv", str(V31))
    run("project", "--snapshot-every", "1000")
    seqs = snapshot_seqs(engine)
    assert len(seqs) == 34
    run("snapshots", "prune", "--keep", "3", "--keep-every", "10")
    older = list(reversed(seqs[:-3]))
    assert snapshot_seqs(engine) == sorted([*seqs[-3:], older[9], older[19], older[29]])
    run("snapshots", "prune", "--keep", "2")
    assert snapshot_seqs(engine) == seqs[-2:]


def _reference_book(upto_seq: int) -> Book:
    """An independent replay of the CSV, in seq order, up to a seq."""
    rows = sorted(
        (parse_line(line) for line in V31.read_text(encoding="utf-8-sig").splitlines()[1:]), key=lambda r: r.seq
    )
    book = Book()
    for r in rows:
        if r.seq > upto_seq:
            break
        if r.kind == "add":
            book.add(r.side, r.order_id, to_number(r.price), to_number(r.size))  # type: ignore[arg-type]
        elif r.kind == "update":
            book.update(r.side, r.order_id, to_number(r.price), to_number(r.size))  # type: ignore[arg-type]
        elif r.kind == "delete":
            book.delete(r.side, r.order_id)  # type: ignore[arg-type]
        else:
            book.trade(r.side, r.order_id, to_number(r.size))  # type: ignore[arg-type]
    return book


@pytest.mark.parametrize("offset", [0, 2999, 3000, 17001, 34246])
def test_book_at_seq_equals_an_independent_replay(db_env: dict[str, str], offset: int) -> None:
    run("ingest", "csv", str(V31))
    run("project", "--snapshot-every", "3000")
    seq = 1627942268920653171 + offset
    data = json.loads(run("book", STREAM, "--at-seq", str(seq), "--orders", "--json"))
    ref = _reference_book(seq)
    assert data["seq"] == seq
    assert [(o["side"], o["order_id"], Decimal(o["price"]), Decimal(o["size"])) for o in data["orders"]] == [
        (o.side, o.order_id, o.price, o.size) for o in ref.iter_orders()
    ]
    levels = json.loads(run("book", STREAM, "--at-seq", str(seq), "--depth", "3", "--json"))
    assert [[Decimal(lv["price"]), Decimal(lv["size"]), lv["orders"]] for lv in levels["bids"]] == [
        list(v) for v in ref.levels("B", 3)
    ]


def test_book_at_time_is_the_book_after_the_last_event_by_then(db_env: dict[str, str]) -> None:
    run("ingest", "csv", str(V31))
    with V31.open(encoding="utf-8-sig") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["seq_num"]))
    before = [r for r in rows if r["time"] <= "2021-08-03 05:00:00"]
    data = json.loads(run("book", STREAM, "--at-time", "2021-08-03 05:00:00", "--json"))
    assert data["seq"] == int(before[-1]["seq_num"])
    assert data["bids"] == [
        {"price": str(v.price), "size": str(v.size), "orders": v.orders}
        for v in _reference_book(data["seq"]).levels("B", 10)
    ]
    out = CliRunner().invoke(cli, ["book", STREAM, "--at-time", "2020-01-01"])
    assert out.exit_code == 1 and "before the stream's first event" in out.output


def test_book_output_for_people(db_env: dict[str, str], tmp_path: Path) -> None:
    run("ingest", "csv", str(V31))
    out = run("book", STREAM, "--depth", "2")
    assert "after seq 1627942268920687417" in out and "bid" in out and "ask" in out
