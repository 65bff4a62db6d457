"""A scratch database for a benchmark: created on the server, migrated, dropped after.

The server: LEDGER_BENCH_DATABASE_URL (an admin URL on which a database may be created),
else PostgreSQL on 127.0.0.1 as postgres.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, make_url

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextmanager
def scratch_database() -> Iterator[tuple[URL, dict[str, str]]]:
    """A new, migrated database: its URL, and an environment whose LEDGER_DATABASE_URL names it."""
    server = make_url(os.environ.get("LEDGER_BENCH_DATABASE_URL") or DEFAULT_SERVER)
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"ledger_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = server.set(database=name)
    env = {**os.environ, "LEDGER_DATABASE_URL": url.render_as_string(hide_password=False)}
    try:
        subprocess.run([sys.executable, "-m", "ledger.cli", "db", "upgrade"], env=env, check=True, capture_output=True)
        yield url, env
    finally:
        with psycopg.connect(admin, autocommit=True) as conn, suppress(psycopg.Error):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def libpq(url: URL) -> str:
    """The URL as a libpq connection string (for psycopg.connect)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)
