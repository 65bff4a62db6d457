"""Test fixtures: a real PostgreSQL for every storage test, never a skip.

Where the server comes from, in order:
1. ``LEDGER_TEST_DATABASE_URL`` when set (CI sets it to the machine's PostgreSQL);
2. a testcontainers PostgreSQL when a Docker engine answers;
3. the embedded PostgreSQL ledger itself ships (``ledger.embedded``).

Each test session creates a database with a random name on that server, migrates it with
the project's Alembic migrations, and drops it at the end. Tests clean their own rows:
the ``engine`` fixture empties every table after each test that used it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import URL, Engine, make_url

from ledger.settings import parse_database_url
from ledger.storage.database import create_engine, upgrade

DATA = Path(__file__).parent / "data"
L3 = DATA / "l3-l1"
V31 = L3 / "v3.1" / "l3_data_v3.1.csv"
V31_EXPECTED = L3 / "v3.1" / "expected_l1_data_v3.1.csv"
V31_AS_FOUND = L3 / "v3.1" / "as-found-duongbaochan" / "l3_data_v3.1.csv"
V3 = L3 / "v3" / "l3_data_v3.csv"
V31_EXPECTED_SHA256 = "fdd57de15d5ded6fb8175cfa5359619b4e47fc31c169a1a11538746850b3f34f"

# Child processes a test starts (registered with tests.children.track) are stopped when it ends.
pytest_plugins = ["tests.children"]

_TABLES = (
    "l1, projector_positions, book_snapshots, source_snapshots, ingest_checkpoints, rejects, gaps, event_blocks,"
    " event_rows, streams"
)


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:  # any failure means: no usable Docker engine here
        return False


@contextlib.contextmanager
def _server_url() -> Iterator[tuple[URL, str]]:
    """An admin URL on some PostgreSQL server, and where it came from."""
    raw = os.environ.get("LEDGER_TEST_DATABASE_URL", "").strip()
    if raw:
        yield parse_database_url(raw), "LEDGER_TEST_DATABASE_URL"
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver="psycopg") as container:
            yield make_url(container.get_connection_url()), "testcontainers"
        return
    from ledger.embedded import EmbeddedPostgres

    # Under the temp folder: reachable by the unprivileged user the server runs as under root.
    home = Path(os.environ.get("LEDGER_TEST_HOME", Path(tempfile.gettempdir()) / f"ledger-test-{os.getuid()}"))
    server = EmbeddedPostgres(home)
    try:
        url = server.start()
    except Exception as e:
        pytest.exit(
            "no PostgreSQL for the tests: set LEDGER_TEST_DATABASE_URL, start Docker, or fix the "
            f"embedded server ({e})",
            returncode=2,
        )
    try:
        yield make_url(url), "embedded"
    finally:
        server.stop()


def _libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_url() -> Iterator[URL]:
    """A fresh, migrated database with a random name; dropped after the session."""
    with _server_url() as (server, _origin):
        name = f"ledger_test_{secrets.token_hex(4)}"
        with psycopg.connect(_libpq(server), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = server.set(database=name)
        engine = create_engine(url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        try:
            yield url
        finally:
            with psycopg.connect(_libpq(server), autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def _session_engine(database_url: URL) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(_session_engine: Engine) -> Iterator[Engine]:
    """The session's engine; every table is emptied after the test."""
    yield _session_engine
    with _session_engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {_TABLES} RESTART IDENTITY"))


@pytest.fixture
def scratch_engine(database_url: URL) -> Iterator[Engine]:
    """A second, empty database for migration tests (the session one stays at head)."""
    name = f"{database_url.database}_mig"
    admin = _libpq(database_url.set(database="postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    engine = create_engine(database_url.set(database=name))
    yield engine
    engine.dispose()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def db_env(database_url: URL, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for running the ledger CLI against the test database."""
    env = dict(os.environ)
    env["LEDGER_DATABASE_URL"] = database_url.render_as_string(hide_password=False)
    monkeypatch.setenv("LEDGER_DATABASE_URL", env["LEDGER_DATABASE_URL"])
    return env
