"""PostgreSQL's COPY text format: the one encoder of the rows ledger appends with COPY.

A row is its values separated by tabs and ended by a newline; NULL is ``\\N``; inside a
value, backslash, tab, newline and carriage return are escaped with a backslash (``\\\\``,
``\\t``, ``\\n``, ``\\r``); the payload is UTF-8, and PostgreSQL text holds no NUL.

Venues decode their input into values; this module encodes them:

- :func:`event_row` turns the text values of one event (a parsed CSV line, a Coinbase
  message) into its row after the stream id, escaped and encoded, or refuses a value
  PostgreSQL cannot hold;
- :func:`events_payload` (:func:`events_chunks`) makes the COPY text of one stream's rows,
  columns :data:`EVENT_COPY_COLUMNS` (:meth:`ledger.storage.log.EventLog.append` sends it);
- :func:`venue_event_line` makes, in one formatted string, the row of a venue whose values
  never need escaping (Databento's: numbers, fixed words, hex), with the venue fields
  (:data:`VENUE_FIELDS`) after ``raw``, its time made by :class:`TimestampText`;
- :func:`l1_payload` does the same for L1 rows, whose values are numbers and times.

    >>> events_payload(3, [event_row(7, "add", "42", "B", "10.5", "3", None, "a\\tb")])
    b'3\\t7\\tadd\\t42\\tB\\t10.5\\t3\\t\\\\N\\ta\\\\tb\\n'

The CSV ingest's fast path (:func:`ledger.venues.csv.format.fast_row`) makes the row of a
well-formed line from its bytes with :data:`join_cells`, without :func:`escape`: its
pattern admits no byte of :data:`SPECIAL_BYTES` and no NUL, so escaping would change
nothing, and the line costs no more than a slice per value and one join. Every other value
goes through :func:`escape`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from ledger.domain.events import Number
from ledger.errors import RecordError

__all__ = [
    "EVENT_COPY_COLUMNS",
    "L1_COPY_COLUMNS",
    "NULL",
    "SPECIAL_BYTES",
    "TIME_TEXT",
    "VENUE_FIELDS",
    "L1Row",
    "TimestampText",
    "escape",
    "event_row",
    "events_chunks",
    "events_payload",
    "join_cells",
    "l1_payload",
    "venue_event_line",
]

#: The columns of the event rows :func:`events_payload` makes, in order.
EVENT_COPY_COLUMNS = ("stream_id", "seq", "kind", "order_id", "side", "price", "size", "ts", "raw")
#: The fields some venues give beyond the common columns (Databento MBO), in the order
#: rows that carry them have them after ``raw``.
VENUE_FIELDS = ("flags", "ts_event", "ts_recv", "sequence", "channel")
#: The columns of the L1 rows :func:`l1_payload` makes, in order.
L1_COPY_COLUMNS = ("stream_id", "seq", "ts", "bid_price", "bid_size", "ask_price", "ask_size", "maybe_bad")
#: NULL, as COPY text spells it.
NULL = "\\N"
_NULL_BYTES = NULL.encode()
#: The characters a value escapes (a value holding none of them goes as it is).
SPECIAL_BYTES = b"\\\t\n\r"
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})

#: One event's row after its stream id from its cells (seq, kind, order_id, side, price,
#: size, ts, raw), each already a COPY text value. A bound C method: the CSV ingest's hot
#: loop pays no Python call for it.
join_cells: Callable[[Iterable[bytes]], bytes] = b"\t".join
#: seq, ts (a datetime or timestamptz text, None for none), bid, bid size, ask, ask size.
#: A seventh element, True, marks a row where the venue said the book may be wrong.
L1Row = (
    tuple[int, datetime | str | None, Number, Number, Number, Number]
    | tuple[int, datetime | str | None, Number, Number, Number, Number, bool]
)


def escape(text: str) -> str:
    """``text`` as a COPY text value (its special characters escaped)."""
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.translate(_ESCAPES)
    return text


def _cell(seq: int, value: str | None) -> bytes:
    if value is None:
        return _NULL_BYTES
    if "\x00" in value:
        raise RecordError(f"row at sequence {seq}: contains a NUL character, which PostgreSQL text cannot hold")
    try:
        return escape(value).encode("utf-8")
    except UnicodeEncodeError as e:
        raise RecordError(f"row at sequence {seq}: not valid Unicode text ({e.reason})") from e


def event_row(
    seq: int,
    kind: str,
    order_id: str | None,
    side: str | None,
    price: str | None,
    size: str | None,
    ts: str | None,
    raw: str | None,
) -> bytes:
    """One event's row after its stream id (None: NULL; a NULL raw is a CSV line that
    ``ledger_raw`` rebuilds from the columns). :class:`~ledger.errors.RecordError`
    for a value PostgreSQL text cannot hold (a NUL, a lone surrogate) or a seq that is not
    an int."""
    if type(seq) is not int:
        raise RecordError(f"seq must be an integer, not {seq!r}")
    values = (kind, order_id, side, price, size, ts, raw)
    return join_cells([str(seq).encode(), *(_cell(seq, value) for value in values)])


#: A time's timestamptz COPY text from :meth:`TimestampText.second`'s text of its second and
#: its microseconds within it: ``TIME_TEXT % (second_text, microseconds)`` (a %-format: a
#: hot loop's cheapest way to pad the microseconds).
TIME_TEXT = "%s%06d+00"


class TimestampText:
    """A time in microseconds since the epoch as timestamptz COPY text,
    ``YYYY-MM-DD HH:MM:SS.ffffff+00``; the text of the ``kept`` seconds last seen is kept, so
    memory stays flat however long the input.

        >>> TimestampText()(1703462400123456)
        '2023-12-25 00:00:00.123456+00'
        >>> TIME_TEXT % (TimestampText().second(1703462400), 123456)
        '2023-12-25 00:00:00.123456+00'
    """

    __slots__ = ("_kept", "_seconds")

    def __init__(self, kept: int = 4096) -> None:
        self._kept = kept
        self._seconds: dict[int, str] = {}

    def __call__(self, us: int) -> str:
        second = us // 1_000_000
        return TIME_TEXT % (self.second(second), us - second * 1_000_000)

    def second(self, second: int) -> str:
        """The text of a whole second since the epoch up to its fraction,
        ``YYYY-MM-DD HH:MM:SS.``: with the six digits of the microseconds and ``+00`` after
        it, the time's COPY text (a hot loop that sees the same second many times in a row
        keeps it and formats only the microseconds)."""
        text = self._seconds.get(second)
        if text is None:
            if len(self._seconds) >= self._kept:
                self._seconds.clear()
            text = self._seconds[second] = time.strftime("%Y-%m-%d %H:%M:%S.", time.gmtime(second))
        return text


def venue_event_line(
    seq: int | str,
    kind: str,
    order_id: object,
    side: str | None,
    price: str | None,
    size: int,
    ts: str,
    raw_hex: str,
    flags: int,
    ts_event: object,
    ts_recv: int | str,
    sequence: int,
    channel: int,
) -> bytes:
    """One event's row after its stream id, columns :data:`EVENT_COPY_COLUMNS` from ``seq``
    then :data:`VENUE_FIELDS`, from values that need no escaping (``order_id``, ``side``,
    ``price`` and ``ts_event`` may be None: NULL). The caller vouches for them: numbers,
    fixed words, hex.

        >>> ts = "2023-12-25 00:00:00.000001+00"
        >>> venue_event_line(7, "add", 42, "B", "4799.25", 2, ts, "a0ff", 130, None, 1, 2, 3)
        b'7\\tadd\\t42\\tB\\t4799.25\\t2\\t2023-12-25 00:00:00.000001+00\\ta0ff\\t130\\t\\\\N\\t1\\t2\\t3'
        >>> venue_event_line(7, "trade", None, None, None, 2, ts, "a0ff", 0, 5, 1, 2, 3)
        b'7\\ttrade\\t\\\\N\\t\\\\N\\t\\\\N\\t2\\t2023-12-25 00:00:00.000001+00\\ta0ff\\t0\\t5\\t1\\t2\\t3'
    """
    return (
        f"{seq}\t{kind}\t{NULL if order_id is None else order_id}\t{NULL if side is None else side}"
        f"\t{NULL if price is None else price}\t{size}\t{ts}\t{raw_hex}\t{flags}"
        f"\t{NULL if ts_event is None else ts_event}\t{ts_recv}\t{sequence}\t{channel}"
    ).encode()


def events_chunks(stream_id: int, rows: Sequence[bytes]) -> list[bytes]:
    """The COPY text of one stream's event rows (:func:`event_row`), columns
    :data:`EVENT_COPY_COLUMNS`, in pieces to be sent one after the other: the stream id
    begins the first row and follows each newline, so the rows are joined once and never
    copied again."""
    if type(stream_id) is not int:
        raise RecordError(f"stream id must be an integer, not {stream_id!r}")
    if not rows:
        return []
    head = b"%d\t" % stream_id
    return [head, (b"\n" + head).join(rows), b"\n"]


def events_payload(stream_id: int, rows: Sequence[bytes]) -> bytes:
    """:func:`events_chunks` in one piece."""
    return b"".join(events_chunks(stream_id, rows))


def l1_payload(stream_id: int, rows: Iterable[L1Row]) -> bytes:
    """The COPY text of one stream's L1 rows (columns :data:`L1_COPY_COLUMNS`). Numbers and
    times hold no special character, so nothing is escaped. ``maybe_bad`` is true for a
    row marked so (a seventh element), NULL otherwise.

        >>> l1_payload(3, [(7, None, 10, 1, 11, 2), (8, None, 10, 1, 12, 2, True)])
        b'3\\t7\\t\\\\N\\t10\\t1\\t11\\t2\\t\\\\N\\n3\\t8\\t\\\\N\\t10\\t1\\t12\\t2\\tt\\n'
    """
    prefix = f"{stream_id}\t"
    listed: list[Any] = rows if isinstance(rows, list) else list(rows)
    # The text of an int size, made once per chunk: a book's sizes repeat. Keyed by ints
    # only (a Decimal is looked up in it never: Decimal('2.0') == 2, and its text differs).
    ints: dict[int, str] = {}
    known = ints.get

    def text(size: int) -> str:
        made = ints[size] = str(size)
        return made

    try:
        # !s: str() is much cheaper than format() (what a bare {} calls) on a Decimal.
        return "".join(
            [
                f"{prefix}{seq}\t{NULL if ts is None else ts}\t{bid!s}"
                f"\t{(known(bid_size) or text(bid_size)) if bid_size.__class__ is int else str(bid_size)}\t{ask!s}"
                f"\t{(known(ask_size) or text(ask_size)) if ask_size.__class__ is int else str(ask_size)}\t\\N\n"
                for seq, ts, bid, bid_size, ask, ask_size in listed
            ]
        ).encode("ascii")
    except ValueError:  # a row of seven: a venue's warning on some rows, the slow way
        pass
    return "".join(
        f"{prefix}{row[0]}\t{NULL if row[1] is None else row[1]}\t{row[2]!s}\t{row[3]!s}\t{row[4]!s}"
        f"\t{row[5]!s}\t{'t' if len(row) > 6 and row[6] else NULL}\n"
        for row in listed
    ).encode("ascii")
