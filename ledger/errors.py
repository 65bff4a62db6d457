"""The one exception root of ledger.

Every error ledger raises on purpose derives from :class:`LedgerError`; driver errors
(psycopg, SQLAlchemy, aiohttp) are mapped to it at one boundary with ``raise X from e``.
The CLI turns a ``LedgerError`` into a one-line message and a non-zero exit code.

    LedgerError
    ├── ConfigError            a bad or missing LEDGER_* setting
    ├── EmbeddedServerError    the embedded PostgreSQL could not start or be reached
    ├── DatabaseError          the database refused or lost a connection
    │   └── SchemaError        the schema is missing, too old or too new
    ├── InputError             an input file or stream cannot be read at all
    │                          (missing, unreadable, wrong header, empty)
    ├── StreamError            a stream is unknown, busy, or cannot go on
    │   ├── GapError           the projector reached an open gap
    │   └── ErrorThresholdExceeded
    │                          a stream had more book anomalies than allowed
    └── SnapshotError          a book snapshot is unreadable or refused
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DatabaseError",
    "EmbeddedServerError",
    "ErrorThresholdExceeded",
    "GapError",
    "InputError",
    "LedgerError",
    "SchemaError",
    "SnapshotError",
    "StreamError",
]


class LedgerError(Exception):
    """Root of every error ledger raises on purpose."""


class ConfigError(LedgerError):
    """A LEDGER_* setting is missing or malformed; the message names the key."""


class EmbeddedServerError(LedgerError):
    """The embedded PostgreSQL could not be started, reused or reached."""


class DatabaseError(LedgerError):
    """The database refused a statement or the connection was lost."""


class SchemaError(DatabaseError):
    """The database schema is not at the revision this ledger expects."""


class InputError(LedgerError):
    """An input cannot be read at all (missing file, wrong header, empty input)."""


class StreamError(LedgerError):
    """A stream is unknown, held by another process, or cannot go on."""


class GapError(StreamError):
    """The projector reached seqs that are missing from the log."""


class ErrorThresholdExceeded(StreamError):
    """A stream had more book anomalies than ``--error-threshold`` allows."""


class SnapshotError(LedgerError):
    """A book snapshot has an unknown format version or a corrupt payload."""
