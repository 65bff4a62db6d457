"""Opening the database: the configured server or the embedded default, migrated to head.

    with open_database() as db:
        with db.engine.begin() as conn:
            ...

Driver errors met while connecting or migrating are mapped to :class:`DatabaseError` here,
with the URL shown password-hidden. Other modules talk to the database through the
``engine`` and the small storage interfaces in :mod:`ledger.storage`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection, Engine, make_url

from ledger.errors import DatabaseError
from ledger.settings import DATABASE_URL_EXAMPLE, Settings

__all__ = ["Database", "alembic_config", "current_revision", "head_revision", "open_database", "upgrade"]

log = logging.getLogger(__name__)

# pg_advisory_lock key held while migrating, so two ledger processes do not race.
_MIGRATION_LOCK = 0x1ED6E5


@dataclass
class Database:
    """An engine on a migrated database, and how to show where it is."""

    engine: Engine
    url: URL
    embedded: bool

    @property
    def display_url(self) -> str:
        return self.url.render_as_string(hide_password=True)


def alembic_config() -> Config:
    """An Alembic config on the migrations shipped with ledger (no URL in it)."""
    config = Config()
    config.set_main_option("script_location", str(Path(str(files("ledger.migrations")))))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate to ``revision``; return the revision it was at before, or None if it was there."""
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        before = current_revision(conn)
        target = head_revision() if revision == "head" else revision
        if before == target:
            return None
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    return before or "empty"


def downgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def create_engine(url: URL) -> Engine:
    return sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)


@contextmanager
def open_database(settings: Settings | None = None, *, migrate: bool = True) -> Iterator[Database]:
    """Yield a Database on the configured or embedded PostgreSQL, migrated to head when
    ``migrate`` (with one log line when it changed anything)."""
    settings = settings or Settings.from_env()
    embedded = None
    if settings.database_url is not None:
        url = settings.database_url
    else:
        from ledger.embedded import EmbeddedPostgres, default_home

        embedded = EmbeddedPostgres(settings.home or default_home())
        url = make_url(embedded.start())
    engine = create_engine(url)
    database = Database(engine=engine, url=url, embedded=embedded is not None)
    try:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            if migrate:
                before = upgrade(engine)
                if before is not None:
                    log.info("migrated the database from %s to revision %s", before, head_revision())
        except sa.exc.OperationalError as e:
            raise DatabaseError(
                f"cannot reach the database at {database.display_url}: {_first_line(e)}. "
                f"Check LEDGER_DATABASE_URL (for example {DATABASE_URL_EXAMPLE})"
            ) from e
        yield database
    finally:
        engine.dispose()
        if embedded is not None:
            embedded.stop()


def _first_line(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    return str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
