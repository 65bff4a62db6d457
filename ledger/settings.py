"""Settings, built once from the environment (``LEDGER_`` prefix) into a frozen dataclass.

| variable               | meaning                                                        |
| ---------------------- | -------------------------------------------------------------- |
| LEDGER_DATABASE_URL    | SQLAlchemy URL of the PostgreSQL to use, for example            |
|                        | ``postgresql+psycopg://ledger:secret@localhost:5432/ledger``.   |
|                        | Unset: ledger runs its own embedded PostgreSQL.                 |
| LEDGER_HOME            | where the embedded PostgreSQL keeps its data (default: the      |
|                        | platform's user data folder; /var/lib/ledger for root).         |

A malformed value is a :class:`~ledger.errors.ConfigError` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ledger.errors import ConfigError

__all__ = ["DATABASE_URL_EXAMPLE", "Settings"]

DATABASE_URL_EXAMPLE = "postgresql+psycopg://ledger:secret@localhost:5432/ledger"
_ACCEPTED_DRIVERS = {"postgresql", "postgresql+psycopg", "postgres"}


@dataclass(frozen=True)
class Settings:
    """Everything ledger reads from its environment."""

    database_url: URL | None
    home: Path | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        raw_url = env.get("LEDGER_DATABASE_URL", "").strip()
        raw_home = env.get("LEDGER_HOME", "").strip()
        return cls(
            database_url=parse_database_url(raw_url) if raw_url else None,
            home=Path(raw_home).expanduser() if raw_home else None,
        )


def parse_database_url(raw: str) -> URL:
    """Parse LEDGER_DATABASE_URL; ``postgresql://`` is taken to mean psycopg 3."""
    hint = f"set it like LEDGER_DATABASE_URL={DATABASE_URL_EXAMPLE}"
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise ConfigError(f"LEDGER_DATABASE_URL is not a database URL; {hint}") from None
    if url.drivername not in _ACCEPTED_DRIVERS:
        raise ConfigError(
            f"LEDGER_DATABASE_URL uses the driver {url.drivername!r}; ledger needs PostgreSQL through psycopg 3: {hint}"
        )
    if not url.database:
        raise ConfigError(f"LEDGER_DATABASE_URL names no database; {hint}")
    if url.port is not None and not 0 < url.port < 65536:
        raise ConfigError(f"LEDGER_DATABASE_URL has an impossible port {url.port}; {hint}")
    return url.set(drivername="postgresql+psycopg")
