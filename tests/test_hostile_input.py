"""Malformed and hostile input, and the failure paths the review found: each case must
leave the log consistent and the run able to go on."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import URL, Engine

from ledger.cli import cli
from ledger.errors import DatabaseError
from ledger.services.ingest import csv_file as ingest_module
from ledger.services.ingest.csv_file import IngestSummary, ingest_csv
from ledger.storage.database import Database
from ledger.storage.log import Checkpoints, GapStore
from ledger.venues.csv.format import HEADER

T = "2021-08-03 01:00:01.5 UTC"


def run(*args: str, code: int = 0, input: bytes | None = None) -> str:
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def write(path: Path, rows: list[str]) -> Path:
    path.write_text("\ufeff" + HEADER + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def add(seq: int, oid: int, side: str, price: str, qty: str) -> str:
    return f"{seq},{oid},{side},{price},{qty},,,,,,,,,,,{T}"


def test_lines_that_break_csv_or_numeric_limits_are_rejects(db_env: dict[str, str], tmp_path: Path) -> None:
    rows = [
        add(1, 1, "BUY", "10", "5"),
        '2,"2",B\rUY,10,5,,,,,,,,,,,' + T,  # csv.Error: new-line character seen in unquoted field
        add(3, 3, "BUY", "1" * 30, "5"),  # more integer digits than allowed
        add(4, 4, "BUY", "10." + "1" * 40, "5"),  # more fractional digits than allowed
        add(5, 5, "BUY", "10", "0"),  # an order without size
        add(6, 6, "SELL", "11", "5"),
    ]
    summary = json.loads(run("ingest", "csv", str(write(tmp_path / "h.csv", rows)), "--json"))
    assert summary["events_stored"] == 2 and summary["rejects"] == 4
    reasons = {r["line_no"]: r["reason"] for r in json.loads(run("rejects", "csv:h", "--json"))}
    assert reasons[3].startswith("not a CSV line"), reasons[3]
    assert "add_price is not a plain decimal number" in reasons[4]
    assert "add_price is not a plain decimal number" in reasons[5]
    assert reasons[6].startswith("add_qty is zero")
    run("project", "--skip-gaps", "--snapshot-every", "1")
    run("project", "--rebuild", "--skip-gaps", "--snapshot-every", "1")
    assert "position 6" in run("project", "--rebuild", "--skip-gaps")


def test_sizes_add_up_exactly_beyond_28_digits(db_env: dict[str, str], tmp_path: Path) -> None:
    big, tiny = "10000000000000000000", "0.000000000000000001"
    rows = [add(1, 1, "BUY", "10", big), add(2, 2, "BUY", "10", tiny), add(3, 3, "SELL", "11", "1")]
    run("ingest", "csv", str(write(tmp_path / "x.csv", rows)))
    run("project")
    out = run("export", "l1", "csv:x", "-o", "-")
    assert out.splitlines()[-1].endswith(",10,11,10000000000000000000.000000000000000001,1,3")


def test_a_password_in_the_query_string_is_hidden() -> None:
    url = sa.engine.make_url("postgresql+psycopg://u:pw1@h/db?password=pw2&sslmode=require")
    shown = Database(engine=None, url=url, embedded=False).display_url  # type: ignore[arg-type]
    assert "pw1" not in shown and "pw2" not in shown and "sslmode=require" in shown


def test_an_ingest_that_fails_on_start_leaves_no_lock(
    db_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: Engine
) -> None:
    path = write(tmp_path / "l.csv", [add(1, 1, "BUY", "10", "5")])

    def broken(self: GapStore, stream_id: int) -> dict[tuple[int, int], int]:
        raise sa.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))

    with monkeypatch.context() as m:
        m.setattr(GapStore, "open_gaps", broken)
        result = CliRunner().invoke(cli, ["ingest", "csv", str(path)])
        assert result.exit_code == 1 and "database error" in result.output
    with engine.connect() as conn:
        mine = "database = (SELECT oid FROM pg_database WHERE datname = current_database())"  # not other runs'
        locks = f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND {mine}"
        assert conn.execute(sa.text(locks)).scalar() == 0
    assert json.loads(run("ingest", "csv", str(path), "--json"))["events_stored"] == 1


def test_events_older_than_the_projection_ask_for_a_rebuild(db_env: dict[str, str], tmp_path: Path) -> None:
    run("ingest", "csv", str(write(tmp_path / "s.csv", [add(10, 1, "BUY", "10", "5"), add(11, 2, "SELL", "11", "5")])))
    run("project")
    later = write(tmp_path / "old.csv", [add(8, 3, "BUY", "10.5", "5"), add(9, 4, "SELL", "10.8", "5")])
    run("ingest", "csv", str(later), "--stream", "csv:s")
    out = CliRunner().invoke(cli, ["project"])
    assert out.exit_code == 3 and "run `ledger project --rebuild csv:s`" in out.output
    run("project", "--rebuild")
    assert run("export", "l1", "csv:s", "-o", "-").splitlines()[-1].endswith(",10.5,10.8,5,5,9")


def test_a_skipped_gap_filled_later_is_reported(db_env: dict[str, str], tmp_path: Path, engine: Engine) -> None:
    first = [add(1, 1, "BUY", "10", "5"), add(2, 2, "SELL", "11", "5"), add(4, 4, "SELL", "12", "5")]
    run("ingest", "csv", str(write(tmp_path / "g.csv", first)))
    run("project", "--skip-gaps")
    run("ingest", "csv", str(write(tmp_path / "late.csv", [add(3, 3, "BUY", "10.5", "1")])), "--stream", "csv:g")
    [status] = json.loads(run("status", "--json"))
    assert status["skipped_then_filled"] == 1 and status["open_gaps"] == 0
    assert "gaps the projector skipped have been filled since" in run("status")
    with engine.begin() as conn:  # a gap filled just before the projector marks it is marked all the same
        sid = conn.execute(sa.text("SELECT id FROM streams")).scalar_one()
        conn.execute(sa.text("UPDATE gaps SET projector_skipped_at = NULL"))
        GapStore(conn).mark_skipped(sid, 3, 3)
        assert conn.execute(sa.text("SELECT projector_skipped_at IS NOT NULL FROM gaps")).scalar_one()


def test_many_gaps_in_one_batch(db_env: dict[str, str], tmp_path: Path) -> None:
    rows = [add(2 * i, i, "BUY" if i % 2 else "SELL", "10" if i % 2 else "11", "1") for i in range(1, 20001)]
    summary = json.loads(run("ingest", "csv", str(write(tmp_path / "m.csv", rows)), "--json"))
    assert summary["open_gaps"] == 19999 and summary["missing_seqs"] == 19999
    fill = [add(2 * i + 1, 100000 + i, "BUY", "9", "1") for i in range(1, 20000, 2)]
    summary = json.loads(run("ingest", "csv", str(write(tmp_path / "f.csv", fill)), "--stream", "csv:m", "--json"))
    assert summary["open_gaps"] == 19999 - 10000


def test_a_huge_line_on_stdin_is_a_reject_and_the_stream_goes_on(database_url: URL, engine: Engine) -> None:
    import os

    data = ("\ufeff" + HEADER + "\n" + add(1, 1, "BUY", "10", "5") + "\n" + "9" * 3_000_000 + "\n"
            + add(2, 2, "SELL", "11", "5") + "\n").encode()  # fmt: skip
    env = {**os.environ, "LEDGER_DATABASE_URL": database_url.render_as_string(hide_password=False)}
    proc = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "ingest", "csv", "-", "--stream", "csv:huge", "--flush-interval", "0.2",
         "--json"],
        input=data, env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    summary = json.loads(proc.stdout)
    assert summary["events_stored"] == 2 and summary["rejects"] == 1
    with engine.connect() as conn:
        raw, reason = conn.execute(sa.text("SELECT raw, reason FROM rejects")).one()
    assert len(raw) == 65536 and "a line of 3,000,001 bytes" in reason


def unescape_reject(raw: str) -> bytes:
    """The bytes of a line from a reject's raw in its escaped form (\\\\ for a backslash,
    \\xHH for one byte), decoded here independently of ledger."""
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == "\\":
            if raw[i + 1] == "\\":
                out += b"\\"
                i += 2
            else:
                assert raw[i + 1] == "x", raw[i : i + 4]
                out.append(int(raw[i + 2 : i + 4], 16))
                i += 4
        else:
            out += raw[i].encode("utf-8")
            i += 1
    return bytes(out)


def test_integers_beyond_python_s_digit_limit_are_rejects(db_env: dict[str, str], tmp_path: Path) -> None:
    # int() refuses more than 4,300 digits with a ValueError: each such line is a reject
    # with its line number, and the good lines after it are stored.
    huge = "7" * 5_000
    rows = [
        add(1, 1, "BUY", "10", "5"),
        f"{huge},2,BUY,10,5,,,,,,,,,,,{T}",
        f"3,{huge},BUY,10,5,,,,,,,,,,,{T}",
        f"4,,,,,,,,,{huge},SELL,,,,,{T}",
        f"5,{'0' * 5_000}5,BUY,10,5,,,,,,,,,,,{T}",  # leading zeros: still the integer 5
        add(6, 6, "SELL", "11", "5"),
    ]
    summary = json.loads(run("ingest", "csv", str(write(tmp_path / "big.csv", rows)), "--json"))
    assert summary["events_stored"] == 3 and summary["rejects"] == 3
    rejects = json.loads(run("rejects", "csv:big", "--json"))
    assert [r["line_no"] for r in rejects] == [3, 4, 5]
    assert rejects[0]["reason"].startswith("seq_num is larger than a 64-bit integer")
    assert rejects[1]["reason"].startswith("add_order_id is larger than a 64-bit integer")
    assert rejects[2]["reason"].startswith("delete_order_id is larger than a 64-bit integer")
    assert all(len(r["reason"]) < 200 for r in rejects)  # the reason shows an excerpt, not 5,000 digits
    assert [r["raw"] for r in rejects] == rows[1:4]


def test_invalid_utf8_with_a_nul_is_a_reject_stored_losslessly(
    db_env: dict[str, str], tmp_path: Path, engine: Engine
) -> None:
    # PostgreSQL text holds neither NUL nor invalid UTF-8: such a line is stored escaped
    # (\\xHH, and \\\\ for a backslash), which gives back its exact bytes.
    bad = [
        b"2,\xff\x00,BUY,10,5,,,,,,,,,,," + T.encode(),  # invalid UTF-8 and a NUL
        b"3,3,BUY,10\x00,5,,,,,,,,,,," + T.encode() + b" \\x00 \\",  # a NUL and backslashes
        b"4,4,BUY,10,5,,,,,,,,,,," + T.encode() + b"\xe2\x82",  # a character cut short
        "5,5,BUY,10,5,,,,,,,,,,,{T} \\xff é".encode(),  # valid UTF-8: stored as it is
    ]
    data = (
        ("\ufeff" + HEADER + "\n" + add(1, 1, "BUY", "10", "5") + "\n").encode()
        + b"".join(line + b"\n" for line in bad)
        + (add(6, 6, "SELL", "11", "5") + "\r\n").encode()
    )
    path = tmp_path / "nul.csv"
    path.write_bytes(data)
    for _ in range(2):  # the second run stores nothing twice
        summary = json.loads(run("ingest", "csv", str(path), "--json"))
        assert summary["rejects"] == 4 or summary["duplicates"] == 2
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT line_no, raw, reason FROM rejects ORDER BY line_no")).all()
        stored = conn.execute(sa.text("SELECT seq FROM events ORDER BY seq")).scalars().all()
    assert stored == [1, 6]
    assert [r.line_no for r in rows] == [3, 4, 5, 6]
    for (line_no, raw, reason), original in zip(rows[:3], bad[:3], strict=True):
        assert "escaped" in reason, (line_no, reason)
        assert unescape_reject(raw) == original, line_no
    assert rows[0].reason.startswith("not UTF-8 text")
    assert rows[1].reason.startswith("contains a NUL byte")
    assert rows[3].raw == bad[3].decode() and "escaped" not in rows[3].reason


def ingest_traced(engine: Engine, path: Path, stream: str, **options: object) -> tuple[IngestSummary, int]:
    """Ingest ``path`` in this process; the summary and the peak of Python's allocations."""
    tracemalloc.start()
    try:
        with path.open("rb") as fp:
            summary = ingest_csv(engine, fp, stream=stream, source=str(path), **options)  # type: ignore[arg-type]
        return summary, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def state(engine: Engine, stream: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with engine.connect() as conn:
        sid = conn.execute(sa.text("SELECT id FROM streams WHERE name = :n"), {"n": stream}).scalar_one()
        events = conn.execute(
            sa.text("SELECT seq, ledger_raw(events) FROM events WHERE stream_id = :s ORDER BY seq"), {"s": sid}
        )
        rejects = conn.execute(
            sa.text("SELECT line_no, raw, reason FROM rejects WHERE stream_id = :s ORDER BY line_no"), {"s": sid}
        )
        return [tuple(r) for r in events], [tuple(r) for r in rejects]


MiB = 1 << 20


@pytest.mark.parametrize("flush_interval", [None, 0.5])
def test_an_over_long_line_is_read_in_bounded_memory(
    engine: Engine, tmp_path: Path, flush_interval: float | None
) -> None:
    # A line longer than any event is skipped to its newline, keeping its first 64 KiB:
    # memory does not grow with it, and the checkpoint counts every byte of it.
    path = tmp_path / "long.csv"
    with path.open("wb") as out:
        out.write(("\ufeff" + HEADER + "\n" + add(1, 1, "BUY", "10", "5") + "\n").encode())
        out.write(b"12345," * (40 * MiB // 6) + b"\n")
        out.write((add(3, 3, "SELL", "11", "5") + "\r\n").encode())
        out.write(b"9" * (20 * MiB))  # the last line, without a newline
    summary, peak = ingest_traced(engine, path, "csv:long", flush_interval=flush_interval)
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert (summary.lines, summary.events_stored, summary.rejects) == (4, 2, 2)
    events, rejects = state(engine, "csv:long")
    assert [seq for seq, _ in events] == [1, 3]
    assert [(n, len(raw)) for n, raw, _ in rejects] == [(3, 65536), (5, 65536)]
    assert rejects[0][1] == ("12345," * 11000)[:65536] and rejects[1][1] == "9" * 65536
    assert f"a line of {40 * MiB // 6 * 6 + 1:,} bytes" in str(rejects[0][2])
    assert f"a line of {20 * MiB:,} bytes" in str(rejects[1][2])
    with engine.connect() as conn:
        checkpoint = Checkpoints(conn).get(1, str(path))
    assert checkpoint is not None and checkpoint.complete
    assert (checkpoint.lines_done, checkpoint.bytes_done) == (5, path.stat().st_size)


def test_a_batch_of_long_rejected_lines_stays_in_bounded_memory(engine: Engine, tmp_path: Path) -> None:
    # 600 rejected lines of 60,000 bytes each (36 MB) in what would be one batch: the batch
    # is committed early once its rejects hold a few MiB, so they never pile up.
    path = tmp_path / "wide.csv"
    with path.open("wb") as out:
        out.write(("\ufeff" + HEADER + "\n" + add(1, 1, "BUY", "10", "5") + "\n").encode())
        for i in range(600):
            out.write(str(i % 10).encode() * 60_000 + b"\n")
        out.write((add(2, 2, "SELL", "11", "5") + "\n").encode())
    summary, peak = ingest_traced(engine, path, "csv:wide")
    assert peak < 24 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert (summary.lines, summary.events_stored, summary.rejects) == (602, 2, 600)
    events, rejects = state(engine, "csv:wide")
    assert [seq for seq, _ in events] == [1, 2]
    assert [(n, raw) for n, raw, _ in rejects] == [(i + 3, str(i % 10) * 60_000) for i in range(600)]


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4, 5])
def test_a_run_that_stops_after_a_long_line_resumes_at_the_right_byte(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    path = tmp_path / "resume.csv"
    with path.open("wb") as out:
        out.write(("\ufeff" + HEADER + "\n").encode())
        out.write((add(1, 1, "BUY", "10", "5") + "\n" + add(2, 2, "BUY", "10", "5") + "\n").encode())
        out.write(b"7" * 300_000 + b"\n")  # longer than a read block
        out.write((add(4, 4, "SELL", "11", "5") + "\r\n").encode())
        out.write("\u00e9x".encode() * 30_000 + b"\n")  # 90 KB, not cut inside a character
        out.write((add(6, 6, "SELL", "12", "5") + "\n" + add(7, 7, "BUY", "9", "5") + "\n").encode())
        out.write(b"8" * 100_000 + b"\n")
        out.write((add(9, 9, "SELL", "13", "5") + "\n").encode())
        out.write(b"6" * 200_000)
    ingest_traced(engine, path, "csv:calm", batch_size=2)
    commit = ingest_module._Run.commit
    calls = []

    def failing(self: ingest_module._Run, batch: ingest_module._Batch) -> None:
        calls.append(batch.line_no)
        if len(calls) == fail_at:
            raise DatabaseError("the database went away")
        commit(self, batch)

    with monkeypatch.context() as m:
        m.setattr(ingest_module._Run, "commit", failing)
        with pytest.raises(DatabaseError):
            ingest_traced(engine, path, "csv:killed", batch_size=2)
    summary, _ = ingest_traced(engine, path, "csv:killed", batch_size=2)
    assert summary.resumed_from_line == (None if fail_at == 1 else calls[-2] + 1)
    assert state(engine, "csv:killed") == state(engine, "csv:calm")
    events, rejects = state(engine, "csv:calm")
    assert [seq for seq, _ in events] == [1, 2, 4, 6, 7, 9]
    assert [n for n, _, _ in rejects] == [4, 6, 9, 11]
    assert rejects[1][1] == "\u00e9x" * 21845  # 65,535 bytes: the character cut at 64 KiB is left out


def test_a_binary_file_is_named_in_a_short_message(db_env: dict[str, str], tmp_path: Path) -> None:
    rng = random.Random(14)
    for name, content in [
        ("x.parquet", b"PAR1\x15\x04\x15\x80\x01" + bytes(rng.randrange(256) for _ in range(100_000))),
        ("x.png", b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(100_000))),
        ("u16.csv", ("\ufeff" + HEADER + "\n").encode("utf-16-le")),
        ("zeros.csv", bytes(1_000_000)),
    ]:
        path = tmp_path / name
        path.write_bytes(content)
        result = CliRunner().invoke(cli, ["ingest", "csv", str(path)])
        assert result.exit_code == 1, result.output
        assert f"{path}: not a text CSV file (starts with bytes " in result.output, result.output
        assert repr(content[:4])[:-1] in result.output  # an escaped excerpt of its first bytes
        assert len(result.output) < len(str(path)) + 120, result.output


@pytest.mark.parametrize("block", [7, 1000, 1 << 18])
def test_lines_are_split_as_a_plain_split_does_and_every_byte_is_counted(
    monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    # The bounded reader against bytes.split(b"\n"), with read blocks smaller and larger
    # than lines: same lines, long ones cut to their first 64 KiB but counted whole (the
    # checkpoint's byte offset is the sum).
    import io

    monkeypatch.setattr(ingest_module, "_BLOCK", block)
    for seed in range(40):
        rng = random.Random(seed)
        sizes = [0, 1, 5, 100, 65535, 65536, 65537, 70000, 300000]
        data = b"".join(
            bytes([rng.randrange(32, 127)]) * rng.choice(sizes) + rng.choice([b"\n", b"\r\n", b""])
            for _ in range(rng.randint(0, 12))
        )
        *whole, last = data.split(b"\n")
        expected = [line + b"\n" for line in whole] + ([last] if last else [])
        got = [line for chunk in ingest_module._lines(io.BytesIO(data).read) for line in chunk]
        assert len(got) == len(expected), seed
        for line, want in zip(got, expected, strict=True):
            if type(line) is ingest_module._LongLine:
                assert (line.size, bytes(line)) == (len(want), want[:65536]) and len(want) > 65536, seed
            else:
                assert line == want, seed
