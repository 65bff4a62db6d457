"""Parse the L3 CSV format into validated rows, one line at a time.

The format (see docs/venues/csv.md): a header line, then one event per line with exactly one of the
add, update, delete or trade groups filled::

    seq_num,add_order_id,add_side,add_price,add_qty,update_order_id,update_side,update_price,update_qty,delete_order_id,delete_side,trade_order_id,trade_side,trade_price,trade_qty,time
    1627942268920653172,7456389231055194163,BUY,218,300,,,,,,,,,,,2021-08-02 22:11:21.94404 UTC

:func:`parse_line` turns that second line into
``CsvRow(seq=1627942268920653172, kind='add', order_id='7456389231055194163', side='B',
price='218', size='300', time='2021-08-02 22:11:21.94404+00')`` or raises
:class:`~ledger.errors.RowError` (importable from here too) with the reason. Numbers
stay as validated text so the ingest path can hand them to PostgreSQL unchanged (exact, no
float); :func:`to_number` makes them exact Python numbers. seq_num and order ids must be
plain integers: a spreadsheet-damaged ``1.62794E+18`` is refused, never rounded.
"""

from __future__ import annotations

import csv
import re
from datetime import datetime
from functools import lru_cache
from typing import NamedTuple

from ledger.domain.events import Number
from ledger.errors import RowError
from ledger.storage.copy import NULL, event_row, join_cells
from ledger.venues._numbers import exact

__all__ = [
    "COPY_COLUMNS",
    "HEADER",
    "CsvRow",
    "RowError",
    "check_header",
    "csv_line",
    "fast_row",
    "parse_line",
    "row_of",
    "to_number",
]

HEADER = (
    "seq_num,add_order_id,add_side,add_price,add_qty,update_order_id,update_side,"
    "update_price,update_qty,delete_order_id,delete_side,trade_order_id,trade_side,"
    "trade_price,trade_qty,time"
)
_COLUMNS = 16
#: The event-log columns of the rows :func:`fast_row` makes (those of the event log after
#: the stream id: :data:`ledger.storage.copy.EVENT_COPY_COLUMNS`).
COPY_COLUMNS = ("seq", "kind", "order_id", "side", "price", "size", "ts", "raw")
_MAX_INT8 = 2**63 - 1
_SHOWN = 60  # characters of a cell a reason quotes
_SIDES = {"BUY": "B", "SELL": "S"}
# At most 20 integer and 18 fractional digits: exact in the projector's Decimal context and
# always within what PostgreSQL numeric accepts.
_DECIMAL = re.compile(r"-?[0-9]{1,20}(?:\.[0-9]{1,18})?")
# Timestamps in UTC: "2021-08-02 22:11:21.94404 UTC" (also ...Z, +00:00, or no zone).
_TIME = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?)"
    r"(?: ?UTC|Z|\+00:00|\+00)?"
)
# The whole of a well-formed line in one pattern: the fast path of parse_line. A line it
# does not match goes through the cell-by-cell checks, which say what is wrong.
_ID = r"([0-9]{1,19})"
_SIDE = r"(BUY|SELL)"
_PRICE = r"(-?[0-9]{1,20}(?:\.[0-9]{1,18})?)"
_QTY = r"([0-9]{1,20}(?:\.[0-9]{1,18})?)"
_FAST = re.compile(
    _ID
    + ",(?:"
    + "|".join(
        "," * before + ",".join(fields) + "," * after
        for before, fields, after in (
            (0, (_ID, _SIDE, _PRICE, _QTY), 10),
            (4, (_ID, _SIDE, _PRICE, _QTY), 6),
            (8, (_ID, _SIDE), 4),
            (10, (_ID, _SIDE, _PRICE, _QTY), 0),
        )
    )
    + "),"
    + _TIME.pattern
)
_FAST_GROUPS = (("add", 1), ("update", 5), ("delete", 9), ("trade", 11))
# (group name, first column, number of columns) in file order.
_GROUPS = (("add", 1, 4), ("update", 5, 4), ("delete", 9, 2), ("trade", 11, 4))


def _at_most(limit: int) -> bytes:
    """A pattern (no group) for the plain integers from 0 to ``limit``, written with at most
    as many digits as ``limit`` (leading zeros allowed): those of fewer digits, or of as many
    that do not exceed it digit by digit.

        >>> pattern = re.compile(_at_most(305))
        >>> [n for n in (b"0", b"99", b"299", b"300", b"305", b"306", b"310", b"999", b"1000") if pattern.fullmatch(n)]
        [b'0', b'99', b'299', b'300', b'305']
    """
    digits = str(limit)
    width = len(digits)
    branches = []
    for i, digit in enumerate(map(int, digits)):
        if digit:  # the same digits before i, a smaller one at i, any after
            rest = width - i - 1
            branches.append(
                digits[:i] + ("0" if digit == 1 else f"[0-{digit - 1}]") + (f"[0-9]{{{rest}}}" if rest else "")
            )
    branches.append(digits)
    if width > 1:
        branches.append(f"[0-9]{{1,{width - 1}}}")
    return ("(?:" + "|".join(branches) + ")").encode()


# The same checks on raw bytes in one pattern, the ingest hot path: it makes the event's
# row from slices of the line, decoding nothing. It refuses a seq or id above 2**63 - 1 and
# an add of size zero itself (an int() or a strip() per line cost more than the pattern
# does); one alternative per kind (groups 2-5 add, 6-9 update, 10-11 delete, 12-15 trade:
# order id, side's initial, price, size); then the time as the row stores it (16) and its
# date (17), which is checked against the calendar once per distinct date.
_B_INT = _at_most(_MAX_INT8)
_B_ID = b"(" + _B_INT + b")"
_B_SIDE = rb"(B|S)(?:UY|ELL)"
_B_PRICE = rb"(-?[0-9]{1,20}(?:\.[0-9]{1,18})?)"
_B_QTY = rb"([0-9]{1,20}(?:\.[0-9]{1,18})?)"
_B_NONZERO_QTY = rb"((?=[0-9.]*[1-9])[0-9]{1,20}(?:\.[0-9]{1,18})?)"  # the digits hold one that is not 0
_B_LINE = re.compile(
    b"("
    + _B_INT
    + b"),(?:"
    + (_B_ID + b"," + _B_SIDE + b"," + _B_PRICE + b"," + _B_NONZERO_QTY + b"," * 10)
    + (b"|" + b"," * 4 + _B_ID + b"," + _B_SIDE + b"," + _B_PRICE + b"," + _B_QTY + b"," * 6)
    + (b"|" + b"," * 8 + _B_ID + b"," + _B_SIDE + b"," * 4)
    + (b"|" + b"," * 10 + _B_ID + b"," + _B_SIDE + b"," + _B_PRICE + b"," + _B_QTY)
    + rb"),(([0-9]{4}-[0-9]{2}-[0-9]{2})[ T](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?)"
    rb"(?: ?UTC|Z|\+00:00|\+00)?\r?\n?"
)
# A line in canonical form, the line :func:`csv_line` (and SQL's ledger_csv_line) rebuilds
# from the stored values, is stored without raw. Its numbers are as PostgreSQL's numeric
# prints them (no leading zero, no negative zero, the scale kept); its time has a space
# before the clock and " UTC" after it, then a newline or nothing (no CR); and its fraction
# has no trailing zero (fast_row looks at the last digit: the pattern takes any fraction, so
# that a file of six-digit fractions costs one match a line, not two). The same pattern
# but for these; an atomic group, so that a line that fails at its time fails at once.
_B_CANONICAL_END = (b" UTC\n", b" UTC")
_C_PRICE = rb"((?!-0(?:\.0+)?,)-?(?:0|[1-9][0-9]{0,19})(?:\.[0-9]{1,18})?)"
_C_QTY = rb"((?:0|[1-9][0-9]{0,19})(?:\.[0-9]{1,18})?)"
_C_NONZERO_QTY = rb"((?=[0-9.]*[1-9])(?:0|[1-9][0-9]{0,19})(?:\.[0-9]{1,18})?)"
_B_CANONICAL = re.compile(
    b"(?>((?!0[0-9])"
    + _B_INT
    + b"),(?:"
    + (_B_ID + b"," + _B_SIDE + b"," + _C_PRICE + b"," + _C_NONZERO_QTY + b"," * 10)
    + (b"|" + b"," * 4 + _B_ID + b"," + _B_SIDE + b"," + _C_PRICE + b"," + _C_QTY + b"," * 6)
    + (b"|" + b"," * 8 + _B_ID + b"," + _B_SIDE + b"," * 4)
    + (b"|" + b"," * 10 + _B_ID + b"," + _B_SIDE + b"," + _C_PRICE + b"," + _C_QTY)
    + rb"),)(([0-9]{4}-[0-9]{2}-[0-9]{2}) (?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?) UTC\n?"
)
_B_NULL = NULL.encode()
_valid_dates: dict[bytes, bool] = {}


def fast_row(line: bytes) -> tuple[int, bytes] | None:
    """(seq, event-log row) for a well-formed line, else None (then :func:`parse_line` says
    what is wrong, or accepts an unusual but valid form such as quoted cells).

    The row holds the event's values in the order of :data:`COPY_COLUMNS` (seq, kind,
    order_id, side, price, size, time and the raw line), joined by storage's
    :data:`~ledger.storage.copy.join_cells`: the pattern admits none of the characters COPY
    text escapes, so the values are the line's own bytes. Rule: the row holds the values
    :func:`parse_line` and :func:`~ledger.storage.copy.event_row` make of the same line (a
    seq_num with leading zeros stays as written: the same bigint), but raw is NULL when the
    line is in canonical form (the line :func:`csv_line` rebuilds from those values, without
    a CR): see ``_B_CANONICAL``; tests/test_raw_rebuild.py holds the choice to
    :func:`csv_line`."""
    raw = _B_NULL
    match = _B_CANONICAL.fullmatch(line) if line.endswith(_B_CANONICAL_END) else None
    if match is None:
        match = _B_LINE.fullmatch(line)
        if match is None:
            return None
        raw = line.rstrip(b"\r\n")
    (seq, add, a_side, a_price, a_size, update, u_side, u_price, u_size, delete, d_side, trade, t_side, t_price, t_size,
     ts, day) = match.groups()  # fmt: skip
    valid = _valid_dates.get(day)
    if valid is None:
        if len(_valid_dates) > 10_000:
            _valid_dates.clear()
        valid = _valid_dates[day] = _valid_time(day.decode("ascii"))
    if not valid:
        return None
    if raw is _B_NULL and ts[-1] == 48 and len(ts) > 19:  # a fraction ending in 0 (48): not canonical
        raw = line.rstrip(b"\r\n")
    # The pattern leaves no tab, backslash, CR or NUL in the line (nor a newline but the one
    # stripped), so nothing in it needs escaping.
    ts += b"+00"
    if add is not None:
        return int(seq), join_cells((seq, b"add", add, a_side, a_price, a_size, ts, raw))
    if update is not None:
        return int(seq), join_cells((seq, b"update", update, u_side, u_price, u_size, ts, raw))
    if delete is not None:
        return int(seq), join_cells((seq, b"delete", delete, d_side, _B_NULL, _B_NULL, ts, raw))
    return int(seq), join_cells((seq, b"trade", trade, t_side, t_price, t_size, ts, raw))


def row_of(row: CsvRow, text: str, line: bytes) -> bytes:
    """The event-log row of a line :func:`parse_line` accepted (the careful path's, for a
    line :func:`fast_row` refused): ``text`` is the line without its line end, ``line`` as
    read. raw is NULL when the line is :func:`csv_line` of the row without a CR at its end,
    as on the fast path; else ``text``."""
    canonical = text == csv_line(row.kind, row.order_id, row.side, row.price, row.size, row.time, row.seq)
    raw = None if canonical and not line.rstrip(b"\n").endswith(b"\r") else text
    return event_row(row.seq, row.kind, row.order_id, row.side, row.price, row.size, row.time, raw)


_SIDE_WORDS = {"B": "BUY", "S": "SELL"}
# The empty cells before and after each kind's group.
_AROUND = {"add": ("", ",," * 5), "update": (",,,,", ",,," * 2), "delete": (",," * 4, ",,,,"), "trade": (",," * 5, "")}


def csv_line(kind: str, order_id: str, side: str, price: str | None, size: str | None, ts: str, seq: int) -> str:
    """The canonical CSV line (no line end) of an event from its values as stored: those of
    a :class:`CsvRow` (``ts`` timestamptz text in UTC such as ``2021-08-02 22:11:21.94404+00``).
    SQL's ``ledger_csv_line(kind, order_id, side, price, size, ts, seq)`` (migration 0004)
    makes the same text from the columns; where the input line equals it, the ingest stores
    no raw.

        >>> csv_line("add", "745638923", "B", "218", "300", "2021-08-02 22:11:21.944040+00", 1627942268920653172)
        '1627942268920653172,745638923,BUY,218,300,,,,,,,,,,,2021-08-02 22:11:21.94404 UTC'
        >>> csv_line("trade", "42", "S", "-007.50", "0", "2021-08-02T22:11:21+00", 9)
        '9,,,,,,,,,,,42,SELL,-7.50,0,2021-08-02 22:11:21 UTC'
    """
    before, after = _AROUND[kind]
    group = f"{order_id},{_SIDE_WORDS[side]}"
    if kind != "delete":
        group += f",{_numeric(price)},{_numeric(size)}"
    stamp = ts.removesuffix("+00")
    clock, _, fraction = stamp[11:].partition(".")
    fraction = fraction.rstrip("0")
    return f"{seq},{before}{group},{after}{stamp[:10]} {clock}{'.' if fraction else ''}{fraction} UTC"


def _numeric(text: str | None) -> str:
    """A validated decimal as PostgreSQL's numeric prints it: no leading zeros, no negative
    zero, its fractional digits kept."""
    if text is None:
        raise ValueError("this kind of event needs a price and a size")
    whole, dot, fraction = text.lstrip("-").partition(".")
    whole = whole.lstrip("0") or "0"
    sign = "-" if text.startswith("-") and (whole != "0" or fraction.strip("0")) else ""
    return f"{sign}{whole}{dot}{fraction}"


class CsvRow(NamedTuple):
    """One validated event line. price and size are None where the kind has none."""

    seq: int
    kind: str
    order_id: str
    side: str
    price: str | None
    size: str | None
    time: str


def check_header(line: str) -> None:
    """Raise RowError unless ``line`` is the L3 header (a BOM and spaces are allowed)."""
    got = ",".join(cell.strip() for cell in line.lstrip("\ufeff").rstrip("\r\n").split(","))
    if got != HEADER:
        raise RowError(f"expected the header {HEADER!r}, found {line.strip()[:200]!r}")


def _shown(text: str) -> str:
    """A cell as a reason quotes it: in full when short, else its start and its length."""
    if len(text) <= _SHOWN:
        return repr(text)
    return f"{text[:_SHOWN]!r}... ({len(text):,} characters)"


def _integer(text: str, column: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise RowError(f"{column} is not a plain integer: {_shown(text)}")
    # Rule: judge the size by the digits before int() sees them. int() refuses more than
    # 4,300 digits with a ValueError (not a RowError: it would end the run), and no number
    # of more than 19 significant digits fits in 64 bits anyway.
    digits = text.lstrip("0") or "0"
    if len(digits) > 19 or int(digits) > _MAX_INT8:
        raise RowError(f"{column} is larger than a 64-bit integer: {_shown(text)}")
    return int(digits)


def _decimal(text: str, column: str, *, signed: bool) -> str:
    if _DECIMAL.fullmatch(text) is None:
        raise RowError(f"{column} is not a plain decimal number: {_shown(text)}")
    if not signed and text.startswith("-"):
        raise RowError(f"{column} is negative: {_shown(text)}")
    return text


def parse_line(line: str) -> CsvRow:
    """Validate one data line (without its newline) and return its event."""
    match = _FAST.fullmatch(line)
    if match is not None:
        g = match.groups()
        seq = int(g[0])
        stamp = g[15]
        if seq <= _MAX_INT8 and _valid_time(stamp):
            for kind, i in _FAST_GROUPS:
                order_id = g[i]
                if order_id is not None and int(order_id) <= _MAX_INT8:
                    side = _SIDES[g[i + 1]]
                    if kind == "delete":
                        return CsvRow(seq, kind, order_id, side, None, None, stamp + "+00")
                    if kind != "add" or g[i + 3].strip("0."):
                        return CsvRow(seq, kind, order_id, side, g[i + 2], g[i + 3], stamp + "+00")
    return _parse_slowly(line)


@lru_cache(maxsize=4096)
def _valid_time(stamp: str) -> bool:
    try:
        datetime.fromisoformat(stamp)
    except ValueError:
        return False
    return True


def _parse_slowly(line: str) -> CsvRow:
    try:
        cells = next(csv.reader([line])) if '"' in line else line.split(",")
    except csv.Error as e:
        raise RowError(f"not a CSV line: {e}") from None
    if len(cells) != _COLUMNS:
        raise RowError(f"expected {_COLUMNS} columns, found {len(cells)}")
    seq = _integer(cells[0], "seq_num")
    filled = [group for group in _GROUPS if any(cells[group[1] : group[1] + group[2]])]
    if len(filled) != 1:
        names = ", ".join(g[0] for g in filled) or "none"
        raise RowError(f"expected exactly one of add/update/delete/trade filled, found {names}")
    kind, first, width = filled[0]
    group = cells[first : first + width]
    if not all(group):
        raise RowError(f"the {kind} group has an empty cell")
    order_id = group[0]
    _integer(order_id, f"{kind}_order_id")
    side = _SIDES.get(group[1])
    if side is None:
        raise RowError(f"{kind}_side is not BUY or SELL: {_shown(group[1])}")
    price = size = None
    if width == 4:
        price = _decimal(group[2], f"{kind}_price", signed=True)
        size = _decimal(group[3], f"{kind}_qty", signed=False)
        if kind == "add" and not size.strip("0."):
            raise RowError(f"add_qty is zero: {_shown(size)} (an order needs a size)")
    match = _TIME.fullmatch(cells[15])
    if match is None:
        raise RowError(f"time is not a UTC timestamp like '2021-08-03 01:00:01.107502 UTC': {_shown(cells[15])}")
    stamp = match.group(1)
    if not _valid_time(stamp):
        raise RowError(f"time is not a valid date and time: {_shown(cells[15])}")
    return CsvRow(seq, kind, order_id, side, price, size, stamp + "+00")


def to_number(text: str) -> Number:
    """Exact number from validated text: int when integral in form, else Decimal."""
    return exact(text)
