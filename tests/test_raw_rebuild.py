"""A CSV line in canonical form is stored without its raw text and rebuilt on reading (#15).

Every reader gets each line back as it came: SQL (``ledger_raw(e)``), the storage API
(``EventLog.raw_of``, ``raw_between``) and Arrow (``Ledger.events(raw=True)``), for the
sample, generated files and fuzzed ones. A line in any other form keeps its raw. Python's
rebuild (``format.csv_line``) and SQL's (``ledger_csv_line``) agree on any event under any
session settings, and raw is left out exactly when the line equals the rebuild.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import URL, Connection, Engine

import ledger
from benchmarks.generate_l3 import generate
from ledger.errors import RowError
from ledger.storage.copy import EVENT_COPY_COLUMNS, event_row, events_chunks
from ledger.storage.database import downgrade, upgrade
from ledger.storage.log import EventLog, Streams
from ledger.venues.csv.format import HEADER, csv_line, fast_row, parse_line, row_of
from tests.conftest import V31
from tests.test_fuzz_csv import fuzzed_sample

_LINE_SQL = "ledger_csv_line(kind, order_id, side, price, size, ts, seq)"


def _url(database_url: URL) -> str:
    return database_url.render_as_string(hide_password=False)


def _ingest(database_url: URL, data: bytes, stream: str) -> None:
    with ledger.open(_url(database_url)) as lg:
        lg.ingest_csv(io.BytesIO(data), stream=stream, source_name=stream)


def _stored(engine: Engine, stream: str) -> list[tuple[int, str, bool]]:
    """(seq, ledger_raw, raw IS NULL) of the stream's events in seq order."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT seq, ledger_raw(e), raw IS NULL FROM events e"
                " WHERE stream_id = (SELECT id FROM streams WHERE name = :n) ORDER BY seq"
            ),
            {"n": stream},
        )
        return [(int(seq), raw, bool(null)) for seq, raw, null in rows]


def _every_reader_agrees(database_url: URL, engine: Engine, stream: str, stored: list[tuple[int, str, bool]]) -> None:
    """The storage API and Arrow give the same lines as SQL's ledger_raw."""
    by_seq = {seq: raw for seq, raw, _ in stored}
    with engine.connect() as conn:
        sid = Streams(conn).get(stream)
        log = EventLog(conn)
        assert log.raw_between(sid, stored[0][0], stored[-1][0]) == by_seq
        some = [seq for seq, _, _ in stored[::97]]
        assert log.raw_of(sid, some) == {seq: by_seq[seq] for seq in some}
    with ledger.open(_url(database_url)) as lg:
        table = lg.events(stream, raw=True)
    assert table.column("seq").to_pylist() == list(by_seq)
    assert table.column("raw").to_pylist() == list(by_seq.values())


def _canonical(text: str) -> bool:
    row = parse_line(text)
    return csv_line(row.kind, row.order_id, row.side, row.price, row.size, row.time, row.seq) == text


def test_the_sample_comes_back_byte_for_byte(database_url: URL, engine: Engine) -> None:
    _ingest(database_url, V31.read_bytes(), "csv:sample")
    stored = _stored(engine, "csv:sample")
    lines = V31.read_text(encoding="utf-8-sig").splitlines()[1:]
    by_seq = sorted(lines, key=lambda line: int(line.split(",", 1)[0]))
    assert "\n".join(raw for _, raw, _ in stored).encode() == "\n".join(by_seq).encode()
    assert all(null for _, _, null in stored)  # every line of the sample is in canonical form
    _every_reader_agrees(database_url, engine, "csv:sample", stored)


def test_bytes_per_event_of_the_sample(database_url: URL, engine: Engine) -> None:
    _ingest(database_url, V31.read_bytes(), "csv:sample")
    with engine.connect() as conn:
        size = conn.execute(sa.text("SELECT pg_total_relation_size('event_rows')")).scalar_one()
        count = conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
    assert count == 34_247
    assert size / count <= 140, size / count


@pytest.mark.parametrize(("seed", "swap", "gap"), [(1, 0.0, 0.0), (7, 0.01, 0.001)])
def test_generated_files_come_back_byte_for_byte(
    database_url: URL, engine: Engine, seed: int, swap: float, gap: float
) -> None:
    out = io.StringIO(newline="\n")
    generate(20_000, seed, out, swap_rate=swap, gap_rate=gap)
    data = out.getvalue().encode()
    _ingest(database_url, data, "csv:generated")
    stored = _stored(engine, "csv:generated")
    lines = data.decode("utf-8-sig").splitlines()[1:]
    assert [raw for _, raw, _ in stored] == sorted(lines, key=lambda line: int(line.split(",", 1)[0]))
    assert all(null for _, _, null in stored)
    _every_reader_agrees(database_url, engine, "csv:generated", stored)


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzzed_files_come_back_as_they_came(database_url: URL, engine: Engine, seed: int) -> None:
    data, _, _ = fuzzed_sample(seed)
    _ingest(database_url, data, "csv:fuzz")
    stored = _stored(engine, "csv:fuzz")
    # Each stored event is one of the lines with its seq_num, without its line end.
    candidates: dict[int, set[str]] = defaultdict(set)
    for line in data.split(b"\n")[1:]:
        text = line.rstrip(b"\r").decode("utf-8", errors="replace")
        try:
            candidates[parse_line(text).seq].add(text)
        except RowError:
            continue
    assert len(stored) > 30_000
    for seq, raw, null in stored:
        assert raw in candidates[seq], seq
        if null:
            assert _canonical(raw), raw
    assert any(not null for _, _, null in stored)  # the damage left some valid odd lines
    _every_reader_agrees(database_url, engine, "csv:fuzz", stored)


ODD = [
    "0042,7,BUY,218,300,,,,,,,,,,,2021-08-02 22:11:21.94404 UTC",  # a leading zero in seq_num
    "43,7,BUY,0218,300,,,,,,,,,,,2021-08-02 22:11:21.94404 UTC",  # ... in a price
    "44,7,BUY,218,0300,,,,,,,,,,,2021-08-02 22:11:21.94404 UTC",  # ... in a size
    "45,,,,,7,SELL,-0.00,1,,,,,,,2021-08-02 22:11:21.94404 UTC",  # a negative zero
    "46,,,,,,,,,7,BUY,,,,,2021-08-02T22:11:21.94404 UTC",  # T
    "47,,,,,,,,,7,BUY,,,,,2021-08-02 22:11:21.94404Z",  # Z
    "48,,,,,,,,,7,BUY,,,,,2021-08-02 22:11:21.94404+00:00",  # +00:00
    "49,,,,,,,,,7,BUY,,,,,2021-08-02 22:11:21.94404",  # no zone
    "50,,,,,,,,,7,BUY,,,,,2021-08-02 22:11:21.944040 UTC",  # a trailing zero in the fraction
    "51,,,,,,,,,7,BUY,,,,,2021-08-02 22:11:21.0 UTC",  # a fraction of zero
    "52,,,,,,,,,,,7,SELL,218.50,3,2021-08-02 22:11:21UTC",  # UTC without a space
    '53,"7",BUY,218,300,,,,,,,,,,,2021-08-02 22:11:21.94404 UTC',  # a quoted cell
]
CANONICAL = [
    "60,007,BUY,218.50,300,,,,,,,,,,,2021-08-02 22:11:21.94404 UTC",  # order ids are text: 007 stays
    "61,,,,,7,SELL,-0.5,0,,,,,,,2021-08-02 22:11:21 UTC",  # a whole second
    "62,,,,,,,,,,,7,SELL,0.000,1.0,2021-08-02 22:11:21.000001 UTC",
]


def test_odd_forms_keep_their_raw(database_url: URL, engine: Engine) -> None:
    data = "\ufeff" + HEADER + "\n" + "\n".join(ODD + CANONICAL) + "\n" + CANONICAL[0].replace("60,", "63,") + "\r\n"
    _ingest(database_url, data.encode(), "csv:odd")
    stored = _stored(engine, "csv:odd")
    assert [raw for _, raw, _ in stored] == [*ODD, *CANONICAL, CANONICAL[0].replace("60,", "63,")]
    assert [null for _, _, null in stored] == [False] * len(ODD) + [True] * len(CANONICAL) + [False]  # CRLF kept
    _every_reader_agrees(database_url, engine, "csv:odd", stored)
    # A line read again is a duplicate, not a conflict, whether its raw was kept or not.
    with ledger.open(_url(database_url)) as lg:
        again = lg.ingest_csv(io.BytesIO(data.encode()), stream="csv:odd", source_name="again")
    assert again.events_stored == 0 and again.duplicates == len(stored) and again.rejects == 0


# Odd session settings: none may change what SQL rebuilds.
_SESSION = {
    "DateStyle": ["ISO, MDY", "SQL, DMY", "German", "Postgres, YMD"],
    "TimeZone": ["UTC", "Asia/Kathmandu", "America/St_Johns", "Pacific/Chatham", "Pacific/Kiritimati"],
    "extra_float_digits": ["-15", "0", "3"],
    "lc_numeric": ["C", "POSIX", "C.utf8", "de_DE.UTF-8", "fr_FR.UTF-8"],
}


@pytest.fixture(scope="module")
def session_values(database_url: URL) -> dict[str, list[str]]:
    """The values of :data:`_SESSION` this server accepts (locales vary by machine)."""
    engine = sa.create_engine(database_url)
    accepted: dict[str, list[str]] = {}
    try:
        for name, values in _SESSION.items():
            for value in values:
                with engine.connect() as conn:
                    try:
                        conn.execute(sa.text("SELECT set_config(:n, :v, true)"), {"n": name, "v": value})
                    except sa.exc.DBAPIError:
                        continue
                accepted.setdefault(name, []).append(value)
    finally:
        engine.dispose()
    return accepted


@pytest.fixture
def conn(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        yield conn


def _digits(draw: st.DrawFn, low: int, high: int) -> str:
    """An integer's digits, sometimes with leading zeros."""
    return "0" * draw(st.sampled_from([0, 0, 0, 1, 2])) + str(draw(st.integers(low, high)))


@st.composite
def _decimal_text(draw: st.DrawFn, *, signed: bool, nonzero: bool = False) -> str:
    whole = _digits(draw, 0, 10**12)
    fraction = draw(st.sampled_from(["", "", ".0", ".50", ".000"]) | st.from_regex(r"\.[0-9]{1,18}", fullmatch=True))
    sign = "-" if signed and draw(st.booleans()) else ""
    text = f"{sign}{whole}{fraction}"
    if nonzero and not text.strip("-0."):
        text += "1" if "." in text else ".1"
    return text


@st.composite
def _line(draw: st.DrawFn) -> bytes:
    """A valid event line in any form the format allows, often the canonical one."""
    kind = draw(st.sampled_from(["add", "update", "delete", "trade"]))
    group = [_digits(draw, 0, 2**63 - 1), draw(st.sampled_from(["BUY", "SELL"]))]
    if kind != "delete":
        group += [draw(_decimal_text(signed=True)), draw(_decimal_text(signed=False, nonzero=kind == "add"))]
    if draw(st.integers(0, 9)) == 0:
        group[0] = f'"{group[0]}"'
    before = {"add": 0, "update": 4, "delete": 8, "trade": 10}[kind]
    cells = [_digits(draw, 0, 2**63 - 1)] + [""] * before + group
    cells += [""] * (15 - len(cells))
    moment = draw(st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59)))
    if draw(st.booleans()):
        moment = moment.replace(microsecond=draw(st.sampled_from([0, 10, 100_000, 123_450])))
    fraction = f"{moment.microsecond:06d}"
    fraction = draw(st.sampled_from([fraction, fraction.rstrip("0"), fraction.rstrip("0") or "0"]))
    stamp = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}" + draw(st.sampled_from([" ", " ", "T"]))
    stamp += f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    stamp += f".{fraction}" if fraction else ""
    stamp += draw(st.sampled_from([" UTC", " UTC", " UTC", "UTC", "Z", "+00:00", "+00", ""]))
    ending = draw(st.sampled_from(["\n", "\n", "", "\r\n"]))
    return (",".join([*cells, stamp]) + ending).encode()


def _row_of(line: bytes) -> tuple[int, bytes]:
    """The row the ingest makes of a line: the fast path's, else the careful path's."""
    fast = fast_row(line)
    if fast is not None:
        return fast
    text = line.decode().rstrip("\r\n")
    row = parse_line(text)
    return row.seq, row_of(row, text, line)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=_line(), pick=st.integers(0, 2**16))
@example(line=b"0,,,,,,,,,01000000000000000000,BUY,,,,,2000-01-01 00:00:00 UTC\n", pick=0)
def test_python_and_sql_rebuild_the_same_line(
    conn: Connection, session_values: dict[str, list[str]], line: bytes, pick: int
) -> None:
    text = line.decode().rstrip("\r\n")
    row = parse_line(text)
    python = csv_line(row.kind, row.order_id, row.side, row.price, row.size, row.time, row.seq)
    seq, copy_row = _row_of(line)
    with conn.begin() as transaction:
        for i, (name, values) in enumerate(session_values.items()):
            value = values[(pick >> (4 * i)) % len(values)]  # a setting per 4 bits of pick
            conn.execute(sa.text("SELECT set_config(:n, :v, true)"), {"n": name, "v": value})
        EventLog(conn).append(1, [copy_row])
        sql, raw, null = conn.execute(
            sa.text(f"SELECT {_LINE_SQL}, ledger_raw(e), raw IS NULL FROM events e WHERE stream_id = 1 AND seq = :s"),
            {"s": seq},
        ).one()
        transaction.rollback()
    assert sql == python
    assert raw == text
    # NULL exactly when the line is its rebuild (without a CR before its newline).
    assert null == (python == text and not line.endswith(b"\r\n"))


def test_the_migration_fills_raw_back_and_empties_it_again(scratch_engine: Engine) -> None:
    upgrade(scratch_engine, "0003")
    rebuilt = "5,,,,,,,,,,,7,SELL,218.5,3,2021-08-02 22:11:21.94404 UTC"
    kept = "6,,,,,,,,,,,7,SELL,0218.5,3,2021-08-02T22:11:21.94404Z"
    stamp = "2021-08-02 22:11:21.94404+00"
    rows = [
        event_row(5, "trade", "7", "S", "218.5", "3", stamp, rebuilt),
        event_row(6, "trade", "7", "S", "0218.5", "3", stamp, kept),
        event_row(7, "open", "ab-c", "B", "1.5", "2", stamp, '{"type": "open"}'),
    ]
    expected = [(5, rebuilt), (6, kept), (7, '{"type": "open"}')]
    with scratch_engine.begin() as conn:  # the table's name at 0003 (EventLog writes to today's)
        driver = conn.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cur, cur.copy(f"COPY events ({', '.join(EVENT_COPY_COLUMNS)}) FROM STDIN") as copy:
            for chunk in events_chunks(1, rows):
                copy.write(chunk)
    upgrade(scratch_engine)
    with scratch_engine.begin() as conn:
        emptied = conn.execute(sa.text(f"UPDATE event_rows SET raw = NULL WHERE raw = {_LINE_SQL}")).rowcount
        assert emptied == 1
        assert conn.execute(sa.text("SELECT seq, ledger_raw(e) FROM events e ORDER BY seq")).all() == expected
    downgrade(scratch_engine, "0003")
    with scratch_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT seq, raw FROM events ORDER BY seq")).all() == expected
        nullable = conn.execute(
            sa.text(
                "SELECT is_nullable FROM information_schema.columns WHERE table_name = 'events' AND column_name = 'raw'"
            )
        ).scalar_one()
        assert nullable == "NO"
        assert conn.execute(sa.text("SELECT to_regproc('ledger_raw')")).scalar() is None
    upgrade(scratch_engine)
    with scratch_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT seq, ledger_raw(e) FROM events e ORDER BY seq")).all() == expected
