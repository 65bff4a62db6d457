"""Opening the database: the configured server or the embedded default, migrated to head.

    with open_database() as db:
        with db.engine.begin() as conn:
            ...

This module is the one boundary where driver errors become ledger's: every engine made
here maps the psycopg and SQLAlchemy errors of its statements (and of its connections) with
:func:`database_error`, and storage's own direct driver calls (COPY, LISTEN) do the same
inside :func:`driver_errors`. Above storage, code catches :class:`~ledger.errors.DatabaseError`
and its subclasses (:class:`~ledger.errors.ConnectionLost`, ...), never a driver's class. A
database that cannot be reached on opening is named with its URL, password hidden. Other
modules talk to the database through the ``engine`` and the small storage interfaces in
:mod:`ledger.storage`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

from ledger.errors import ConnectionLost, ConstraintViolation, DatabaseError, SchemaMismatch, first_line
from ledger.settings import DATABASE_URL_EXAMPLE, Settings

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "HEAD_REVISION",
    "Database",
    "alembic_config",
    "current_revision",
    "database_error",
    "driver_errors",
    "drop_connection",
    "head_revision",
    "open_database",
    "upgrade",
]

#: The newest migration in migrations/versions (tests/test_schema.py checks it), so that a
#: command on an up-to-date database need not load Alembic at all.
HEAD_REVISION = "0005"

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
        """The URL with any password hidden, also one given as a query parameter."""
        from ledger.embedded import redact_url

        return redact_url(self.url.render_as_string(hide_password=True))


def alembic_config() -> Config:
    """An Alembic config on the migrations shipped with ledger (no URL in it)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(str(files("ledger.migrations")))))
    return config


def head_revision() -> str:
    """The head revision as Alembic reads it from the migration scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at, or None for an empty database."""
    if conn.execute(sa.text("SELECT to_regclass('alembic_version')")).scalar() is None:
        return None
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate to ``revision``; return the revision it was at before, or None if it was there."""
    if revision == "head":
        with engine.connect() as conn:
            if current_revision(conn) == HEAD_REVISION:
                return None
    from alembic import command

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
    from alembic import command

    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def database_error(error: BaseException, *, disconnected: bool = False) -> DatabaseError:
    """The ledger error for a driver error (psycopg's, or SQLAlchemy's DBAPIError around
    one), its message the driver's first line; ``disconnected``: SQLAlchemy found the
    connection gone.

    The rule: the connection or the server gone (an operational or interface error of the
    driver) is :class:`~ledger.errors.ConnectionLost`, so that a new connection may be
    tried; a constraint broken (SQLSTATE class 23) a :class:`~ledger.errors.ConstraintViolation`;
    SQL that does not fit this database (class 42 but a missing privilege, 42501) or the
    driver refusing how it is called, a :class:`~ledger.errors.SchemaMismatch`; anything
    else a plain :class:`~ledger.errors.DatabaseError` (a missing privilege, a full disk, a
    setting: an administrator may mend it)."""
    if isinstance(error, sa.exc.DBAPIError):
        disconnected = disconnected or error.connection_invalidated
    original = getattr(error, "orig", None) or error
    state = getattr(original, "sqlstate", None)
    kind: type[DatabaseError] = DatabaseError
    if disconnected or isinstance(original, psycopg.OperationalError | psycopg.InterfaceError):
        kind = ConnectionLost
    elif isinstance(original, psycopg.IntegrityError) or (state or "").startswith("23"):
        kind = ConstraintViolation
    elif isinstance(original, psycopg.Error) and (
        (state is None and isinstance(original, psycopg.ProgrammingError | psycopg.NotSupportedError))
        or (state is not None and state.startswith("42") and state != "42501")
    ):
        kind = SchemaMismatch
    mapped = kind(f"database error: {first_line(original)}")
    mapped.orig, mapped.sqlstate = original, state
    return mapped


@contextlib.contextmanager
def driver_errors() -> Iterator[None]:
    """Map the errors of storage's direct driver calls (COPY, LISTEN), which SQLAlchemy
    does not see, as the engine maps all others."""
    try:
        yield
    except psycopg.Error as e:
        raise database_error(e) from e


def _map_error(context: sa.engine.ExceptionContext) -> BaseException | None:
    """The engine's ``handle_error`` hook: the ledger error that replaces a driver error."""
    if context.is_pre_ping or not isinstance(context.original_exception, psycopg.Error):
        return None  # a failed ping: the pool connects anew by itself; not a driver error: as it is
    return database_error(
        context.sqlalchemy_exception or context.original_exception, disconnected=context.is_disconnect
    )


def drop_connection(conn: Connection) -> None:
    """Invalidate and close ``conn``, whatever state it is in: its session ends on the
    server (and every lock it held with it), and the pool never hands it out again."""
    with contextlib.suppress(DatabaseError, sa.exc.SQLAlchemyError, psycopg.Error):
        conn.invalidate()
    with contextlib.suppress(DatabaseError, sa.exc.SQLAlchemyError, psycopg.Error):
        conn.close()


def create_engine(url: URL) -> Engine:
    """An engine on ``url`` whose errors are ledger's (see the module's text)."""
    engine = sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4, connect_args=_keepalives(url))
    sa.event.listen(engine, "handle_error", _map_error)
    return engine


def _keepalives(url: URL) -> dict[str, str | int]:
    """TCP keepalives on both ends, so that a connection whose peer vanished (a dropped
    network, a dead client) is noticed within about a minute: by the client, and by the
    server, which then ends the session and drops its advisory locks (a stream's writer lock
    would otherwise outlive a dead writer for the server's default two hours). Settings the
    URL gives itself win; Unix-socket connections ignore all of them."""
    query = url.query
    client = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
    args: dict[str, str | int] = {key: value for key, value in client.items() if key not in query}
    options = query.get("options", "")
    options = options if isinstance(options, str) else " ".join(options)
    if "tcp_keepalives" not in options:
        server = "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3"
        args["options"] = f"{options} {server}".strip()
    return args


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
                    log.info("migrated the database from %s to revision %s", before, HEAD_REVISION)
        except ConnectionLost as e:
            raise DatabaseError(
                f"cannot reach the database at {database.display_url}: {first_line(e)}. "
                f"Check LEDGER_DATABASE_URL (for example {DATABASE_URL_EXAMPLE})"
            ) from e
        yield database
    finally:
        engine.dispose()
        if embedded is not None:
            embedded.stop()
