"""Human output never passes terminal control characters through: rejected lines, stream
and file names, and error messages quoting them show C0/C1 controls and DEL as visible
escapes (``\\x1b``), tab and newline inside a value too, and keep printable non-ASCII
text (accented letters) as it is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ledger.cli._app import printable, printable_text

S = 1627942268920653171
T = "2021-08-03 01:00:01.5 UTC"
#: A stream name that would retitle the terminal, with a tab, a C1 CSI and an accent: refused
#: as a stream name since issue #14 (item 6), but a database written before may hold one.
NAME = "csv:évil\x1b]0;pwned\x07\t\x9b31m"
#: The stream the test writes: an accent, which stays as it is.
GOOD = "csv:évil"
#: Any control character a terminal acts on: C0 but the line feed, DEL, C1.
_RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _ledger(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "ledger.cli", *args], env=env, capture_output=True, timeout=120)


def _assert_no_raw_controls(proc: subprocess.CompletedProcess[bytes], what: str) -> str:
    for stream, data in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        text = data.decode("utf-8")
        found = _RAW_CONTROL.search(text)
        assert found is None, f"{what}: raw {found.group()!r} on {stream}: {text!r}"
    return proc.stdout.decode() + proc.stderr.decode()


def test_the_helper_escapes_controls_and_keeps_printable_text() -> None:
    assert printable("a\x1b]0;x\x07b") == "a\\x1b]0;x\\x07b"
    assert printable("tab\there\nnew\rline") == "tab\\there\\nnew\\rline"
    assert printable("del\x7f c1\x9b nul\x00") == "del\\x7f c1\\x9b nul\\x00"
    assert printable("ls\u2028 rlo\u202e") == "ls\\u2028 rlo\\u202e"
    assert printable("café ÉTÉ 価格 €") == "café ÉTÉ 価格 €"
    assert printable(Path("/tmp/x\x1b")) == "/tmp/x\\x1b"
    assert printable_text("line one\x1b\nline two\t") == "line one\\x1b\nline two\\t"


def test_human_output_of_every_command_escapes_control_characters(
    db_env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    header = (
        "seq_num,add_order_id,add_side,add_price,add_qty,update_order_id,update_side,update_price,"
        "update_qty,delete_order_id,delete_side,trade_order_id,trade_side,trade_price,trade_qty,time"
    )
    lines = [
        f"{S},7000000000000000001,BUY,228,5,,,,,,,,,,,{T}",
        f"{S + 1},7000000000000000002,SELL,230,3,,,,,,,,,,,{T}",
        # seq S+2 missing: a gap
        f"{S + 3},\x1b]0;pwned\x07,BUY,1,1,,,,,,,,,,,{T}",  # retitles a terminal
        f"{S + 4},1\t2\x7f\x9bé,SELL,1,1,,,,,,,,,,,{T}",  # tab, DEL, a C1 CSI, an accent
        f"{S + 5},7000000000000000003,BUY,229,2,,,,,,,,,,,{T}",
    ]
    path = tmp_path / "l3\x1b[2Jfile.csv"  # a file name that clears the screen
    path.write_text("\ufeff" + header + "\n" + "\n".join(lines) + "\n", encoding="utf-8")

    refused = _ledger(db_env, "ingest", "csv", str(path), "--stream", NAME)
    assert refused.returncode == 2
    assert "csv:évil\\x1b]0;pwned\\x07\\t\\x9b31m" in _assert_no_raw_controls(refused, "a refused stream name")
    out = _assert_no_raw_controls(_ledger(db_env, "ingest", "csv", str(path), "--stream", GOOD), "ingest")
    assert "csv:évil" in out and "l3\\x1b[2Jfile.csv" in out
    with engine.begin() as conn:  # a name with controls, stored before names were checked
        conn.execute(sa.text("INSERT INTO streams (name, source) VALUES (:n, 'csv')"), {"n": NAME})
    out = _assert_no_raw_controls(_ledger(db_env, "rejects", GOOD), "rejects")
    assert "\\x1b]0;pwned\\x07,BUY" in out and "1\\t2\\x7f\\x9bé,SELL" in out
    assert "évil\\x1b]0;pwned" in _assert_no_raw_controls(_ledger(db_env, "status"), "status")
    _assert_no_raw_controls(_ledger(db_env, "status", GOOD), "status STREAM")
    _assert_no_raw_controls(_ledger(db_env, "gaps", GOOD, "--all"), "gaps")
    project = _ledger(db_env, "project")
    assert project.returncode == 3  # stopped at the gap
    _assert_no_raw_controls(project, "project")
    _assert_no_raw_controls(_ledger(db_env, "project", "--skip-gaps"), "project --skip-gaps")
    rebuild = _ledger(db_env, "project", "--rebuild", "--skip-gaps")
    assert "dropped the projection of csv:évil, csv:évil\\x1b" in _assert_no_raw_controls(rebuild, "project --rebuild")
    _assert_no_raw_controls(_ledger(db_env, "book", GOOD), "book")
    _assert_no_raw_controls(_ledger(db_env, "book", GOOD, "--orders"), "book --orders")
    _assert_no_raw_controls(_ledger(db_env, "snapshots", "list", GOOD), "snapshots list")
    _assert_no_raw_controls(_ledger(db_env, "snapshots", "prune", "--keep", "1"), "snapshots prune")
    target = tmp_path / "l1\x07.csv"
    _assert_no_raw_controls(_ledger(db_env, "export", "l1", GOOD, "-o", str(target)), "export l1")
    assert target.exists()
    # Error messages that quote input: a name that is no stream name, an unknown stream (the
    # message lists the known ones), a file that is not there.
    bad = _ledger(db_env, "gaps", "csv:nope\x1b]0;x\x07")
    assert bad.returncode == 2 and "csv:nope\\x1b]0;x\\x07" in _assert_no_raw_controls(bad, "a bad stream name")
    unknown = _ledger(db_env, "gaps", "csv:nope")
    assert unknown.returncode == 1 and "csv:évil\\x1b" in _assert_no_raw_controls(unknown, "an unknown stream")
    missing = _ledger(db_env, "ingest", "csv", str(tmp_path / "gone\x1b]0;x\x07.csv"))
    assert missing.returncode == 1 and "gone\\x1b]0;x\\x07.csv" in _assert_no_raw_controls(missing, "a missing file")
    # JSON output escapes by itself: unchanged.
    assert b"\\u001b]0;pwned\\u0007,BUY" in _ledger(db_env, "rejects", GOOD, "--json").stdout
