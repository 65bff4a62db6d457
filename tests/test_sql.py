"""``ledger sql``, ``ledger psql`` and ``ledger db url --psql``: the README's SQL as printed,
read-only by default, exact numbers, streaming, one-line errors."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from ledger.cli import cli
from tests.conftest import V3, V31

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def _ledger(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_readme_sql_runs_through_ledger_sql_as_printed(db_env: dict[str, str], engine: Engine) -> None:
    _ledger("ingest", "csv", str(V31))
    _ledger("ingest", "csv", str(V3))
    _ledger("project", "--skip-gaps")
    blocks = re.findall(r"```sql\n(.*?)```", README, flags=re.S)
    assert len(blocks) >= 3
    for query in blocks:
        with engine.connect() as conn:
            expected = conn.execute(sa.text(query)).all()
        rows = list(csv.reader(io.StringIO(_ledger("sql", query, "--format", "csv"))))
        assert len(rows) == len(expected) + 1
        for got, want in zip(rows[1:], expected, strict=True):
            assert got == ["" if v is None else (v.isoformat() if hasattr(v, "isoformat") else str(v)) for v in want]


def test_read_only_unless_write(db_env: dict[str, str], engine: Engine) -> None:
    out = _ledger("sql", "INSERT INTO streams (name, source) VALUES ('x', 'csv')", code=1)
    assert "read-only" in out and "--write" in out and "Traceback" not in out
    _ledger("sql", "INSERT INTO streams (name, source) VALUES ('x', 'csv')", "--write")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM streams")).scalars().all() == ["x"]


def test_formats_keep_exact_values(db_env: dict[str, str]) -> None:
    query = "SELECT 1627942268920653172::int8 AS seq, 229.130000000000000001::numeric AS price, 'a,b' AS t"
    [row] = [json.loads(line) for line in _ledger("sql", query, "--format", "json").splitlines()]
    assert row["seq"] == 1627942268920653172 and row["t"] == "a,b"
    parsed = json.loads(_ledger("sql", query, "--format", "json"), parse_float=Decimal)
    assert parsed["price"] == Decimal("229.130000000000000001")
    assert list(csv.reader(io.StringIO(_ledger("sql", query, "--format", "csv")))) == [
        ["seq", "price", "t"],
        ["1627942268920653172", "229.130000000000000001", "a,b"],
    ]
    table = _ledger("sql", query).splitlines()
    assert table[0].split(" | ")[0].strip() == "seq" and table[-1] == "(1 row)"


def test_a_large_result_streams(db_env: dict[str, str]) -> None:
    out = _ledger("sql", "SELECT g, g * 2 AS twice FROM generate_series(1, 30000) g", "--format", "csv")
    lines = out.splitlines()
    assert len(lines) == 30_001 and lines[-1] == "30000,60000"


def test_a_bad_query_is_one_line(db_env: dict[str, str]) -> None:
    out = _ledger("sql", "SELEC 1", code=1)
    assert out.startswith("Error: the query failed: syntax error") and len(out.strip().splitlines()) == 1


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed on this machine")
def test_db_url_psql_is_a_url_psql_takes(db_env: dict[str, str]) -> None:
    url = _ledger("db", "url", "--psql").strip()
    assert url.startswith("postgresql://") and "+psycopg" not in url
    done = subprocess.run(["psql", url, "-Atc", "SELECT 41 + 1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "42", done.stderr
    run = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "psql", "-Atc", "SELECT count(*) FROM streams"],
        env=db_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0 and run.stdout.strip() == "0", run.stderr
