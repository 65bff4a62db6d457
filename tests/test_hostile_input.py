"""Malformed and hostile input, and the failure paths the review found: each case must
leave the log consistent and the run able to go on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import URL, Engine

from ledger.cli import cli
from ledger.db import Database
from ledger.sources.csv_l3 import HEADER
from ledger.storage.log import GapStore

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
        assert conn.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")).scalar() == 0
    assert json.loads(run("ingest", "csv", str(path), "--json"))["events_stored"] == 1


def test_events_older_than_the_projection_ask_for_a_rebuild(db_env: dict[str, str], tmp_path: Path) -> None:
    run("ingest", "csv", str(write(tmp_path / "s.csv", [add(10, 1, "BUY", "10", "5"), add(11, 2, "SELL", "11", "5")])))
    run("project")
    later = write(tmp_path / "old.csv", [add(8, 3, "BUY", "10.5", "5"), add(9, 4, "SELL", "10.8", "5")])
    run("ingest", "csv", str(later), "--stream", "csv:s")
    out = CliRunner().invoke(cli, ["project"])
    assert out.exit_code == 3 and "run `ledger project --rebuild --stream csv:s`" in out.output
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
