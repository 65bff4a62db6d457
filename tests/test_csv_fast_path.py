"""The CSV ingest's fast path (one pattern per line, format.fast_row) against the careful
path (format.parse_line, then format.row_of): on any line, the fast path either
steps aside (None) or makes the row the careful path makes (byte for byte, but for a
seq_num written with leading zeros, which both store as the same bigint). Lines are the
sample's, damaged where the fast path's own checks sit: integers at and past 2**63 - 1,
leading zeros, zero and odd sizes, calendar edges (29 February of leap and common years,
the 31st of short months, year 0), times, zones, line ends, and cells moved between groups.
"""

from __future__ import annotations

from datetime import datetime

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ledger.errors import RowError
from ledger.venues.csv.format import _at_most, fast_row, parse_line, row_of
from tests.conftest import V31

_SAMPLE = V31.read_bytes().splitlines()[1:400]
_MAX = 2**63 - 1
_INTS = st.sampled_from(
    ["0", "1", "007", str(_MAX), str(_MAX + 1), str(_MAX - 1), "9" * 19, "1" * 20, "0" * 18 + "1", "0" * 19 + "1",
     "9223372036854775799", "9223372036854775817", "9300000000000000000", "-1", "1.0", "1.62794E+18", ""]
)  # fmt: skip
_DECIMALS = st.sampled_from(
    ["0", "0.0", "00", "0.", ".5", "0.5", "-0", "-1.25", "1" * 20, "1" * 21, "1." + "1" * 18, "1." + "1" * 19, "10",
     "3.000", "+1", "1e3", ""]
)  # fmt: skip
_DATES = st.sampled_from(
    ["2021-08-03", "2024-02-29", "2023-02-29", "2000-02-29", "1900-02-29", "2100-02-29", "2400-02-29", "0004-02-29",
     "0000-01-01", "0001-01-01", "9999-12-31", "2021-04-31", "2021-06-30", "2021-13-01", "2021-00-10", "2021-12-32",
     "2021-11-31", "2021-02-28", "1600-02-29", "0400-02-29"]
)  # fmt: skip
_CLOCKS = st.sampled_from(["01:00:01.107538", "23:59:59", "24:00:00", "12:60:00", "00:00:00.1", "00:00:00.1234567"])
_ZONES = st.sampled_from([" UTC", "UTC", "Z", "+00:00", "+00", "", " utc", "+01:00"])
_ENDS = st.sampled_from([b"", b"\n", b"\r\n", b"\r", b"\n\n", b"\r\r\n"])


def _values(row: tuple[int, bytes] | None) -> tuple[int, list[bytes]] | None:
    """A row's values as PostgreSQL reads them (the seq as a number)."""
    if row is None:
        return None
    seq, *rest = row[1].split(b"\t")
    return row[0], [str(int(seq)).encode(), *rest]


def _careful(line: bytes) -> tuple[int, bytes] | None:
    text = line.decode("utf-8").rstrip("\r\n")
    try:
        row = parse_line(text)
    except RowError:
        return None
    return row.seq, row_of(row, text, line)


@st.composite
def _lines(draw: st.DrawFn) -> bytes:
    cells = draw(st.sampled_from(_SAMPLE)).decode().split(",")
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, 15))
        if i == 15:
            sep = draw(st.sampled_from([" ", "T", "  "]))
            cells[15] = draw(_DATES) + sep + draw(_CLOCKS) + draw(_ZONES)
        elif i in (0, 1, 5, 9, 11):
            cells[i] = draw(_INTS)
        elif i in (2, 6, 10, 12):
            cells[i] = draw(st.sampled_from(["BUY", "SELL", "B", "buy", ""]))
        else:
            cells[i] = draw(_DECIMALS)
    if draw(st.booleans()):  # move the filled group to another kind's place, or drop a cell
        j = draw(st.integers(1, 14))
        cells.insert(j, cells.pop(draw(st.integers(1, 14))))
    return ",".join(cells).encode() + draw(_ENDS)


@settings(max_examples=3000, deadline=None)
@given(_lines())
@example(b"5,1,BUY,1,0.0,,,,,,,,,,,2021-08-02 22:11:21 UTC\n")
@example(b"5,1,BUY,1,0.01,,,,,,,,,,,2024-02-29 22:11:21 UTC\n")
@example(b"9223372036854775807,9223372036854775807,SELL,1,1,,,,,,,,,,,2021-08-02T22:11:21Z\n")
@example(b"9223372036854775808,1,SELL,1,1,,,,,,,,,,,2021-08-02 22:11:21\n")
def test_the_fast_path_makes_the_careful_paths_row_or_steps_aside(line: bytes) -> None:
    fast = fast_row(line)
    if fast is not None:
        assert _values(fast) == _values(_careful(line)), line


def test_the_sample_takes_the_fast_path_throughout() -> None:
    for line in V31.read_bytes().splitlines(keepends=True)[1:]:
        assert fast_row(line) == _careful(line) != None, line  # noqa: E711


def test_the_integer_bound_pattern_is_exact() -> None:
    import re

    for limit in (_MAX, 305, 1000, 10, 9, 1, 2**31 - 1):
        pattern = re.compile(_at_most(limit))
        width = len(str(limit))
        numbers = set(range(0, min(limit + 50, 3000))) | {limit - 1, limit, limit + 1, limit + 7, 10**width - 1}
        for n in numbers:
            for text in (str(n), str(n).zfill(width)):
                expected = len(text) <= width and n <= limit
                assert (pattern.fullmatch(text.encode()) is not None) == expected, (limit, text)


def test_every_date_of_the_calendar_edges_is_judged_as_python_does() -> None:
    for year in (1, 4, 100, 400, 1600, 1900, 2000, 2021, 2024, 2100, 9999):
        for month in range(1, 13):
            for day in (28, 29, 30, 31):
                stamp = f"{year:04d}-{month:02d}-{day:02d}"
                try:
                    datetime.fromisoformat(stamp)
                    valid = True
                except ValueError:
                    valid = False
                line = f"5,1,BUY,1,1,,,,,,,,,,,{stamp} 01:02:03 UTC\n".encode()
                assert (fast_row(line) is not None) == valid, stamp
