"""The CSV pipeline end to end through the CLI: ingest, project, export, reports."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from ledger.cli import cli
from ledger.venues.csv.format import HEADER
from tests.children import track
from tests.conftest import V3, V31, V31_AS_FOUND, V31_EXPECTED, V31_EXPECTED_SHA256


def run(*args: str, input: bytes | None = None, code: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def run_json(*args: str) -> object:
    out = run(*args, "--json")
    return json.loads(out[out.index("{") if out.lstrip().startswith("{") else out.index("[") :])


def table(engine: Engine, query: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(query))]


def test_v31_l1_export_is_byte_identical_to_the_reference(db_env: dict[str, str], tmp_path: Path) -> None:
    summary = run_json("ingest", "csv", str(V31))
    assert summary["events_stored"] == 34247 and summary["rejects"] == 0 and summary["open_gaps"] == 0
    run("project")
    out = tmp_path / "l1.csv"
    assert "wrote 19290 L1 rows" in run("export", "l1", "csv:l3_data_v3.1", "-o", str(out))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == V31_EXPECTED_SHA256
    assert out.read_bytes() == V31_EXPECTED.read_bytes()


def test_every_raw_line_is_kept(db_env: dict[str, str], engine: Engine) -> None:
    run("ingest", "csv", str(V31))
    lines = V31.read_text(encoding="utf-8-sig").splitlines()[1:]
    stored = [r[0] for r in table(engine, "SELECT ledger_raw(events) FROM events ORDER BY seq")]
    assert sorted(stored) == sorted(lines)


def test_reingest_stores_nothing_and_counts_duplicates(db_env: dict[str, str], engine: Engine) -> None:
    run("ingest", "csv", str(V31))
    before = table(engine, "SELECT * FROM events ORDER BY seq")
    again = run_json("ingest", "csv", str(V31))
    assert again["events_stored"] == 0 and again["duplicates"] == 34247
    assert table(engine, "SELECT * FROM events ORDER BY seq") == before
    [status] = run_json("status")
    assert status["duplicates"] == 34247 and status["events"] == 34247


def test_v3_reports_the_duplicate_and_the_gaps(db_env: dict[str, str], tmp_path: Path) -> None:
    summary = run_json("ingest", "csv", str(V3))
    # v3 repeats seq ...171 with a different order, and 18 seqs are missing in 9 runs.
    assert summary["duplicates"] == 1 and summary["conflicting_duplicates"] == 1
    assert summary["open_gaps"] == 9 and summary["missing_seqs"] == 18
    gaps = run_json("gaps", "csv:l3_data_v3")
    assert [(g["first_seq"] - 1627942268920653000, g["last_seq"] - 1627942268920653000) for g in gaps] == [
        (172, 175), (12845, 12845), (12847, 12848), (19129, 19130), (19133, 19134),
        (19769, 19770), (26780, 26781), (34242, 34242), (34429, 34430),
    ]  # fmt: skip
    # The projector stops at the first gap, and names it...
    out = run("project", code=3)
    assert "1627942268920653172..1627942268920653175" in out
    # ...and goes across with --skip-gaps, recording that it did.
    run("project", "--skip-gaps")
    assert all(g["projector_skipped_at"] for g in run_json("gaps", "csv:l3_data_v3"))
    out = tmp_path / "v3.csv"
    run("export", "l1", "csv:l3_data_v3", "-o", str(out))
    assert len(out.read_text(encoding="utf-8-sig").splitlines()) == 19291


def test_as_found_file_rejects_six_damaged_rows_with_line_numbers(db_env: dict[str, str]) -> None:
    summary = run_json("ingest", "csv", str(V31_AS_FOUND), "--stream", "csv:as-found")
    assert summary["rejects"] == 6
    rejects = run_json("rejects", "csv:as-found")
    assert [(r["line_no"], r["reason"]) for r in rejects] == [
        (12, "delete_order_id is not a plain integer: '7.45797E+18'"),
        (6831, "seq_num is not a plain integer: '1.62794E+18'"),
        (16831, "seq_num is not a plain integer: '1.62794E+18'"),
        (17659, "add_order_id is not a plain integer: '7.45797E+18'"),
        (17669, "delete_order_id is not a plain integer: '7.45797E+18'"),
        (26831, "seq_num is not a plain integer: '1.62794E+18'"),
    ]
    assert all(r["source"].endswith("as-found-duongbaochan/l3_data_v3.1.csv") for r in rejects)
    # The rows the damage took away leave one-seq gaps where the seq is known.
    gaps = [(g["first_seq"], g["last_seq"]) for g in run_json("gaps", "csv:as-found")]
    assert gaps == [
        (1627942268920653182, 1627942268920653182),
        (1627942268920660000, 1627942268920660000),
        (1627942268920670000, 1627942268920670000),
        (1627942268920670828, 1627942268920670828),
        (1627942268920670837, 1627942268920670837),
        (1627942268920680000, 1627942268920680000),
    ]


def events_of(engine: Engine, stream: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT seq, kind, order_id, side, price, size, ts, ledger_raw(events) FROM events"
                " WHERE stream_id = (SELECT id FROM streams WHERE name = :name) ORDER BY seq"
            ),
            {"name": stream},
        )
        return [tuple(r) for r in rows]


def _write(path: Path, rows: list[str], *, header: str = HEADER) -> Path:
    path.write_text("\ufeff" + header + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def test_bad_rows_are_rejected_with_reasons_and_the_run_goes_on(db_env: dict[str, str], tmp_path: Path) -> None:
    good = "100,1,BUY,10.5,3,,,,,,,,,,,2021-08-03 01:00:01.1 UTC"
    rows = [
        good,
        "101,2,SELL,11,4,,,,,,,,,,2021-08-03 01:00:01 UTC",  # 15 columns
        "102,3,HOLD,11,4,,,,,,,,,,,2021-08-03 01:00:01 UTC",
        "103,4,SELL,11,-4,,,,,,,,,,,2021-08-03 01:00:01 UTC",
        "104,5,SELL,1.1E+2,4,,,,,,,,,,,2021-08-03 01:00:01 UTC",
        "105,6,SELL,11,4,,,,,,,,,,,yesterday",
        "106,7,SELL,11,4,,,,,,,,,,,2021-02-30 01:00:01 UTC",
        "107,8,SELL,11,4,9,SELL,11,4,,,,,,,2021-08-03 01:00:01 UTC",
        "99999999999999999999,8,SELL,11,4,,,,,,,,,,,2021-08-03 01:00:01 UTC",
        "108,,,,,,,,,9,SELL,,,,,2021-08-03 01:00:01.123456 UTC",
    ]
    path = _write(tmp_path / "bad.csv", rows)
    summary = run_json("ingest", "csv", str(path))
    assert summary["events_stored"] == 2 and summary["rejects"] == 8
    reasons = {r["line_no"]: r["reason"] for r in run_json("rejects", "csv:bad")}
    assert reasons == {
        3: "expected 16 columns, found 15",
        4: "add_side is not BUY or SELL: 'HOLD'",
        5: "add_qty is negative: '-4'",
        6: "add_price is not a plain decimal number: '1.1E+2'",
        7: "time is not a UTC timestamp like '2021-08-03 01:00:01.107502 UTC': 'yesterday'",
        8: "time is not a valid date and time: '2021-02-30 01:00:01 UTC'",
        9: "expected exactly one of add/update/delete/trade filled, found add, update",
        10: "seq_num is larger than a 64-bit integer: '99999999999999999999'",
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the input is empty"),
        (b"a,b,c\n1,2,3\n", "line 1: expected the header"),
    ],
)
def test_unusable_files_are_clear_errors(db_env: dict[str, str], tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    result = CliRunner().invoke(cli, ["ingest", "csv", str(path)])
    assert result.exit_code == 1
    assert message in result.output and str(path) in result.output


def test_missing_file_is_a_clear_error(db_env: dict[str, str], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["ingest", "csv", str(tmp_path / "nope.csv")])
    assert result.exit_code == 1
    assert "cannot read" in result.output and "nope.csv" in result.output


def test_gaps_close_when_the_missing_rows_arrive_from_another_file(
    db_env: dict[str, str], tmp_path: Path, engine: Engine
) -> None:
    lines = V31.read_text(encoding="utf-8-sig").splitlines()[1:2001]
    first = _write(tmp_path / "part1.csv", lines[:500] + lines[700:])
    second = _write(tmp_path / "part2.csv", lines[500:700])
    s1 = run_json("ingest", "csv", str(first), "--stream", "csv:parts")
    assert s1["open_gaps"] == 1
    s2 = run_json("ingest", "csv", str(second), "--stream", "csv:parts")
    assert s2["open_gaps"] == 0 and s2["events_stored"] == 200
    statuses = table(engine, "SELECT status, resolved_at IS NOT NULL FROM gaps")
    assert statuses == [("filled", True)]
    whole = _write(tmp_path / "whole.csv", lines)
    run("ingest", "csv", str(whole), "--stream", "csv:whole")
    assert events_of(engine, "csv:parts") == events_of(engine, "csv:whole")


def test_project_twice_writes_nothing_twice(db_env: dict[str, str], engine: Engine) -> None:
    lines = V31.read_text(encoding="utf-8-sig").splitlines()[1:]
    proc_input = ("\ufeff" + HEADER + "\n" + "\n".join(lines[:20000]) + "\n").encode()
    run("ingest", "csv", "-", "--stream", "csv:s", input=proc_input)
    run("project")
    rest = ("\ufeff" + HEADER + "\n" + "\n".join(lines[20000:]) + "\n").encode()
    run("ingest", "csv", "-", "--stream", "csv:s", input=rest)
    run("project")
    run("project")
    out = io.BytesIO()
    from ledger.storage.projection import L1Rows

    with engine.connect() as conn:
        L1Rows(conn).export_csv(1, out)
    assert hashlib.sha256(out.getvalue()).hexdigest() == V31_EXPECTED_SHA256


def test_stdin_rows_become_visible_within_the_flush_interval(database_url: object, engine: Engine) -> None:
    env = {"LEDGER_DATABASE_URL": database_url.render_as_string(hide_password=False)}  # type: ignore[attr-defined]
    import os

    proc = track(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ledger.cli",
                "ingest",
                "csv",
                "-",
                "--stream",
                "csv:live",
                "--flush-interval",
                "0.2",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **env},
        )
    )
    assert proc.stdin is not None
    lines = V31.read_text(encoding="utf-8-sig").splitlines()[1:]
    proc.stdin.write(("\ufeff" + HEADER + "\n").encode())
    proc.stdin.write(("\n".join(lines[:3]) + "\n").encode())
    proc.stdin.flush()
    deadline = time.monotonic() + 15
    count = 0
    while time.monotonic() < deadline:
        count = table(engine, "SELECT count(*) FROM events")[0][0]  # type: ignore[assignment]
        if count == 3:
            break
        time.sleep(0.05)
    assert count == 3, "three rows written to stdin did not reach the log while the pipe stayed open"
    proc.stdin.write(("\n".join(lines[3:10]) + "\n").encode())
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    assert table(engine, "SELECT count(*) FROM events")[0][0] == 10
