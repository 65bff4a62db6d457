"""The one way ledger writes a time, and the one way it reads one (see docs/cli.md).

Rule, written: ISO 8601 in UTC with six fractional digits and the offset,
``2021-08-03T05:00:00.123456+00:00`` (what ``datetime.isoformat`` gives a UTC time, with
its microseconds always there). One width for every time, so that sorting the text sorts
the times; ``datetime.fromisoformat``, pandas, polars and PostgreSQL read it as it is. A
time without a zone (none of ledger's own: PostgreSQL's ``timestamp`` without a zone,
through ``ledger sql``) is written the same way without the offset.

Rule, read: an ISO 8601 date, or date and time (``T`` or a space between them, seconds and
a fraction optional), with ``Z``, `` UTC`` or an offset such as ``+02:00``; a time that
says no zone is UTC.

>>> from datetime import datetime, timedelta, timezone
>>> iso_time(datetime(2021, 8, 3, 7, 0, tzinfo=timezone(timedelta(hours=2))))
'2021-08-03T05:00:00.000000+00:00'
>>> iso_time(parse_time("2021-08-03 05:00:00.5"))
'2021-08-03T05:00:00.500000+00:00'
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["iso_time", "parse_time"]


def iso_time(value: datetime) -> str:
    """``value`` in the one written form (see the rule above)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def parse_time(text: str) -> datetime:
    """The aware datetime ``text`` gives (see the rule above); ValueError when it is none."""
    cleaned = text.strip()
    if cleaned.endswith(" UTC"):
        cleaned = cleaned[: -len(" UTC")] + "Z"
    when = datetime.fromisoformat(cleaned)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
