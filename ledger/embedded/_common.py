"""Names shared by the embedded PostgreSQL modules: the public constants, where its home is,
URL redaction, and the fixed settings of the server (port, socket path limits, log size)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import platformdirs

DATABASE_NAME = "ledger"
"""The database :meth:`EmbeddedPostgres.start` creates and hands out."""
DB_ROLE = "ledger"
"""The PostgreSQL superuser role of the embedded cluster."""
SERVER_USER = "ledger"
"""The system user the server runs as when ledger runs as root."""
ROOT_HOME = Path("/var/lib/ledger")
"""The default home for root (root's own home is private, and PostgreSQL cannot run as root)."""
DATABASE_URL_HINT = (
    "To use a PostgreSQL server of your own instead, set LEDGER_DATABASE_URL, for example "
    "LEDGER_DATABASE_URL=postgresql+psycopg://user:pass@localhost:5432/ledger"
)

_PORT = 5432
_SOCKET_NAME = f".s.PGSQL.{_PORT}"
_SOCKET_PATH_MAX = 103 if sys.platform == "darwin" else 107
_SAFE_PATH = re.compile(r"[A-Za-z0-9._/+-]+")
_SHELL_UNSAFE = re.compile(r'["$`\\\n]')
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_DSN_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"((?:^|&)password=)[^&]*", re.IGNORECASE)


def default_home() -> Path:
    """Where the embedded PostgreSQL keeps its data.

    LEDGER_HOME when set; else ``/var/lib/ledger`` for root (root's home is private and the
    server has to run as another user); else the platform's per-user data folder
    (``~/.local/share/ledger`` on Linux).
    """
    raw = os.environ.get("LEDGER_HOME", "").strip()
    if raw:
        return Path(os.path.abspath(os.path.expanduser(raw)))
    if os.geteuid() == 0:
        return ROOT_HOME
    return Path(platformdirs.user_data_dir("ledger", appauthor=False))


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (URL user-info, a ``password=`` query
    parameter, or a ``password=`` keyword of a libpq connection string)."""
    if "://" not in url:
        return _DSN_PASSWORD.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return _DSN_PASSWORD.sub(r"\1***", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        if colon:
            netloc = f"{user}:***@{hostport}"
    query = _QUERY_PASSWORD.sub(r"\1***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
