"""PostgreSQL restarted while ingest and projection run: each exits non-zero with a clear
message (or finishes), and re-running completes with nothing lost or doubled.

Restarts the server the test suite uses, so it runs only where it can: with
LEDGER_TEST_PG_RESTART set to the command that restarts it, or on a machine with a local
Debian cluster (pg_ctlcluster). Deselect with -m 'not pgrestart'."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from benchmarks.generate_l3 import generate
from tests.children import track
from tests.test_snapshots import export


def _restart_command(url: URL) -> list[str] | None:
    if os.environ.get("LEDGER_TEST_PG_RESTART"):
        return shlex.split(os.environ["LEDGER_TEST_PG_RESTART"])
    versions = sorted(Path("/etc/postgresql").glob("*/main")) if Path("/etc/postgresql").exists() else []
    if url.host in ("127.0.0.1", "localhost") and shutil.which("pg_ctlcluster") and versions:
        return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].parent.name, "main", "restart"]
    return None


def _ledger(url: URL, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LEDGER_DATABASE_URL": url.render_as_string(hide_password=False)}
    return track(
        subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    )


def _wait_for_server(engine: Engine) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return
        except sa.exc.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.pgrestart
@pytest.mark.slow
def test_server_restart_under_load_loses_and_doubles_nothing(database_url: URL, engine: Engine, tmp_path: Path) -> None:
    restart = _restart_command(database_url)
    if restart is None:
        pytest.skip("cannot restart this PostgreSQL here: set LEDGER_TEST_PG_RESTART to the command that does")
    path = tmp_path / "l3.csv"
    with path.open("w", encoding="utf-8", newline="\n") as out:
        generate(400_000, 5, out)

    # Undisturbed reference.
    for args in (("ingest", "csv", str(path), "--stream", "csv:calm"), ("project", "--stream", "csv:calm")):
        assert _ledger(database_url, *args).wait(timeout=600) == 0

    for args in (
        ("ingest", "csv", str(path), "--stream", "csv:hit"),
        ("project", "--stream", "csv:hit", "--snapshot-every", "50000"),
    ):
        proc = _ledger(database_url, *args)
        time.sleep(1.0)
        subprocess.run(restart, check=True, capture_output=True, timeout=120)
        code = proc.wait(timeout=600)
        err = proc.stderr.read().decode() if proc.stderr else ""
        if code != 0:  # a clear message that says what to do, and no traceback
            assert "Run the same command again" in err, err
            assert "Traceback" not in err, err
        _wait_for_server(engine)
        again = _ledger(database_url, *args)
        assert again.wait(timeout=600) == 0, again.stderr.read() if again.stderr else ""

    queries = {
        "events": "SELECT seq, kind, order_id, side, price, size, ts, raw FROM events"
        " WHERE stream_id = :s ORDER BY seq",
        "gaps": "SELECT first_seq, last_seq, status FROM gaps WHERE stream_id = :s ORDER BY first_seq",
    }
    with engine.connect() as conn:
        ids = dict(conn.execute(sa.text("SELECT name, id FROM streams")).all())
        for query in queries.values():
            calm = conn.execute(sa.text(query), {"s": ids["csv:calm"]}).all()
            hit = conn.execute(sa.text(query), {"s": ids["csv:hit"]}).all()
            assert hit == calm
    assert export(engine, "csv:hit") == export(engine, "csv:calm")
