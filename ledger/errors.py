"""The one exception tree of ledger.

Every error ledger raises on purpose derives from :class:`LedgerError`. Driver errors
(psycopg, SQLAlchemy's DBAPIError) are mapped to :class:`DatabaseError` or one of its
subclasses at one boundary, :func:`ledger.storage.database.database_error`: the engine's
``handle_error`` hook maps those of every statement, and storage maps those of its few
direct driver calls (COPY, LISTEN) with the same function. The code above storage catches
only these classes, and adds what it knows (file, line, stream, seq) with ``raise X from e``.
The CLI turns a ``LedgerError`` into a one-line message and a non-zero exit code.

    LedgerError
    ├── ConfigError              a bad or missing LEDGER_* setting
    ├── EmbeddedServerError      the embedded PostgreSQL could not start or be reached
    ├── DatabaseError            the database refused a statement (.sqlstate, .orig: the
    │   │                        driver's error)
    │   ├── ConnectionLost       the connection or the server went away, or could not be
    │   │                        reached: a new connection may work
    │   ├── ConstraintViolation  a statement broke a constraint (a key already stored)
    │   └── SchemaMismatch       SQL that does not fit this database (an unknown column, a
    │                            syntax error) or a misused driver: no wait mends it
    ├── InputError               an input file or stream cannot be read at all
    │                            (missing, unreadable, wrong header, empty)
    ├── RecordError              one input record cannot be stored as an event (it becomes
    │   │                        a reject); also a ValueError
    │   ├── RowError             a line of the L3 CSV (ledger.venues.csv.format)
    │   └── MessageError         a Coinbase frame, message or REST payload
    │                            (ledger.venues.coinbase.codec; .field, .product_id, .sequence)
    ├── StreamError              a stream is unknown, busy, or cannot go on
    │   ├── UnknowableBook       a book asked for at a seq the log cannot know (in a gap)
    │   └── LockLost             a projector lost its hold on a stream: it writes no more
    │       └── StaleProjection  the stream's projection is marked needs_rebuild (events
    │                            were stored behind it): `ledger project --rebuild`
    ├── SnapshotError            a book snapshot is unreadable or refused
    └── VenueError               a live venue refused or could not be reached
        ├── SubscriptionRefused  the exchange refused the subscription (credentials, product)
        ├── FeedUnreachable      nothing was ever received from the feed
        └── RestCallFailed       a REST call failed after its retries (the capture tries
                                 again later)

A stream that stops at a gap or at its error threshold is not an error: it is a status
the projector reports (and the CLI turns into exit code 3). An error's ``exit_code`` is the
CLI's exit code for it: 1, or 3 for a stream that cannot answer at that point. The local
exchange of the tests (:mod:`ledger.testing`) keeps errors of its own, outside this tree.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConnectionLost",
    "ConstraintViolation",
    "DatabaseError",
    "EmbeddedServerError",
    "FeedUnreachable",
    "InputError",
    "LedgerError",
    "LockLost",
    "MessageError",
    "RecordError",
    "RestCallFailed",
    "RowError",
    "SchemaMismatch",
    "SnapshotError",
    "StaleProjection",
    "StreamError",
    "SubscriptionRefused",
    "UnknowableBook",
    "VenueError",
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
    """The database refused a statement or the connection was lost. One mapped from a
    driver error keeps it in ``orig`` (what :func:`first_line` quotes) and its SQLSTATE in
    ``sqlstate``; one raised with context (a file and line, a stream and seq) has neither."""

    orig: BaseException | None = None
    sqlstate: str | None = None


class ConnectionLost(DatabaseError):
    """The connection or the server went away (or could not be reached): trying again on a
    new connection may work."""


class ConstraintViolation(DatabaseError):
    """A statement broke a constraint of the schema (SQLSTATE class 23): a key already
    stored, say."""


class SchemaMismatch(DatabaseError):
    """SQL that does not fit this database (SQLSTATE class 42 but a missing privilege: an
    unknown table or column, a syntax error), or the driver refusing how it is called: a bug
    or a schema of another version, which no wait mends."""


class InputError(LedgerError):
    """An input cannot be read at all (missing file, wrong header, empty input)."""


class RecordError(LedgerError, ValueError):
    """One input record (a line, a message) cannot be stored as an event; ``str(err)`` is
    the reason its reject carries."""


class RowError(RecordError):
    """A line of the L3 CSV that cannot be an event; ``str(err)`` is the reason, for the
    rejects table."""


class MessageError(RecordError):
    """A Coinbase frame, message or payload that cannot be read or stored; ``str(err)`` is
    the reason. ``field``, ``product_id`` and ``sequence`` say where, when they are known
    (and valid)."""

    def __init__(
        self,
        reason: str,
        *,
        field: str | None = None,
        product_id: str | None = None,
        sequence: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.field = field
        self.product_id = product_id
        self.sequence = sequence


class StreamError(LedgerError):
    """A stream is unknown, held by another process, or cannot go on."""


class UnknowableBook(StreamError):
    """A book was asked for at a seq inside a gap: the events that lead there are missing
    from the log, so no book can be shown for it (the message names the gap and the seqs
    that can be asked for)."""

    exit_code = 3


class LockLost(StreamError):
    """The process no longer holds a stream's lock (its lock connection was lost): the
    projector's, or another projector has written the stream's position; or the CSV
    ingest's writer lock. Nothing more is written for the stream."""


class StaleProjection(LockLost):
    """A stream's projection is marked ``needs_rebuild``: events were stored behind it (below
    the seq it had applied) after it read past them, so its book and L1 rows lack them. The
    projector writes nothing more for the stream until ``ledger project --rebuild STREAM``
    replays it; the message says why and names that command."""

    exit_code = 3


class SnapshotError(LedgerError):
    """A book snapshot has an unknown format version or a corrupt payload."""


class VenueError(LedgerError):
    """A live venue refused what ledger asked, or could not be reached."""


class SubscriptionRefused(VenueError):
    """The exchange refused the feed's subscription (bad credentials, an unknown product),
    or its schema message cannot be read; the message quotes the exchange."""


class FeedUnreachable(VenueError):
    """Nothing was ever received from the feed; the message gives the last connection error."""


class RestCallFailed(VenueError):
    """A REST call failed after its retries, or with an answer not worth retrying."""


def first_line(error: BaseException) -> str:
    """The first line of a (driver) error's message, for one-line reports."""
    original = getattr(error, "orig", None) or error
    text = str(original).strip()
    return text.splitlines()[0] if text else type(original).__name__
