"""The one exception root of ledger.

Every error ledger raises on purpose derives from :class:`LedgerError`; driver errors
(psycopg, SQLAlchemy, aiohttp) are mapped to it at one boundary with ``raise X from e``.
The CLI turns a ``LedgerError`` into a one-line message and a non-zero exit code.

    LedgerError
    ├── ConfigError            a bad or missing LEDGER_* setting
    ├── EmbeddedServerError    the embedded PostgreSQL could not start or be reached
    ├── DatabaseError          the database refused a statement or lost the connection
    ├── InputError             an input file or stream cannot be read at all
    │                          (missing, unreadable, wrong header, empty)
    ├── RecordError            one input record cannot be stored as an event (it becomes
    │                          a reject); also a ValueError
    ├── StreamError            a stream is unknown, busy, or cannot go on
    │   ├── UnknowableBook     a book asked for at a seq the log cannot know (in a gap)
    │   └── LockLost           a projector lost its hold on a stream: it writes no more
    └── SnapshotError          a book snapshot is unreadable or refused

A stream that stops at a gap or at its error threshold is not an error: it is a status
the projector reports (and the CLI turns into exit code 3). An error's ``exit_code`` is the
CLI's exit code for it: 1, or 3 for a stream that cannot answer at that point.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DatabaseError",
    "EmbeddedServerError",
    "InputError",
    "LedgerError",
    "LockLost",
    "RecordError",
    "SnapshotError",
    "StreamError",
    "UnknowableBook",
    "first_line",
]


class LedgerError(Exception):
    """Root of every error ledger raises on purpose."""

    #: The command line's exit code for this error.
    exit_code: int = 1


class ConfigError(LedgerError):
    """A LEDGER_* setting is missing or malformed; the message names the key."""


class EmbeddedServerError(LedgerError):
    """The embedded PostgreSQL could not be started, reused or reached."""


class DatabaseError(LedgerError):
    """The database refused a statement or the connection was lost."""


class InputError(LedgerError):
    """An input cannot be read at all (missing file, wrong header, empty input)."""


class RecordError(LedgerError, ValueError):
    """One input record (a line, a message) cannot be stored as an event; ``str(err)`` is
    the reason its reject carries."""


class StreamError(LedgerError):
    """A stream is unknown, held by another process, or cannot go on."""


class UnknowableBook(StreamError):
    """A book was asked for at a seq inside a gap: the events that lead there are missing
    from the log, so no book can be shown for it (the message names the gap and the seqs
    that can be asked for)."""

    exit_code = 3


class LockLost(StreamError):
    """The process no longer holds a stream's projector lock (its lock connection was lost),
    or another projector has written the stream's position: nothing more is written for it."""


class SnapshotError(LedgerError):
    """A book snapshot has an unknown format version or a corrupt payload."""


def first_line(error: BaseException) -> str:
    """The first line of a (driver) error's message, for one-line reports."""
    original = getattr(error, "orig", None) or error
    text = str(original).strip()
    return text.splitlines()[0] if text else type(original).__name__
