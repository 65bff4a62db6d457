"""The projection's path for Databento and the L3 CSV format (Projector.apply_stored: the
stored rows applied as they are, no event made of them) against the events path (the rules'
iter_events into Projector.apply): the same L1 rows, book, anomalies and marks, chunk by
chunk, on the ESH4 day and the v3.1 CSV sample as the log returns them and on generated rows
(unknown orders, sides left out, snapshot runs, warnings, clears, an error threshold,
replays without L1 rows); the same error for a row the rules refuse, after the same rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domain.projector import Projector
from ledger.errors import StreamError
from ledger.services.project.rows import StreamProjector
from ledger.venues import venue
from ledger.venues.csv.format import parse_line
from ledger.venues.csv.rules import CsvRules
from ledger.venues.databento.dbn import MboReader, StoredRow, stored_rows
from ledger.venues.databento.rules import DatabentoRules

V31 = Path(__file__).parent / "data" / "l3-l1" / "v3.1" / "l3_data_v3.1.csv"

ESH4_DAY = Path(__file__).parent / "data" / "databento" / "nautilus__esh4-glbx-mdp3-20231225.mbo.dbn.zst"


def as_log(rows: list[Any]) -> list[tuple[Any, ...]]:
    """Rows as the log returns them to a projection: price and size as text, nine fields."""
    return [
        (*r[:4], None if r[4] is None else str(r[4]), None if r[5] is None else str(r[5]), *r[6:8], None) for r in rows
    ]


def state(proj: Projector) -> tuple[Any, ...]:
    book = proj.book
    orders = [(o.side, o.order_id, o.price, o.size) for o in book.iter_orders()]
    levels = (book.levels("B"), book.levels("S"), sorted(book.idle_bids), sorted(book.idle_asks))
    marks = (proj.last, proj.crossed, proj.in_snapshot, proj.maybe_bad, book.best_bid, book.best_ask)
    return orders, levels, dict(+book.anomalies), marks


def both(
    chunks: list[list[Any]],
    *,
    threshold: int | None = None,
    l1: bool = True,
    write: bool = True,
    rules_of: Any = DatabentoRules,
) -> tuple[Any, Any]:
    """(applied counts, L1 rows, state) by each path."""
    results = []
    for stored in (False, True):
        proj = Projector(threshold)
        rules = rules_of()
        counts, rows = [], []
        for chunk in chunks:
            out: list[Any] | None = [] if write else None
            if stored:
                counts.append(proj.apply_stored(chunk, rules, out, l1=l1))
            else:
                counts.append(proj.apply(rules.iter_events(chunk), out, l1=l1))
            rows.append(out)
        results.append((counts, rows, state(proj)))
    return results[0], results[1]


def assert_the_projection_takes_the_stored_path(name: str, rules_of: Any, rows: list[Any]) -> None:
    """A projection of venue ``name`` applies ``rows`` by the stored path, as the events
    path of ``rules_of()`` would."""
    proj = StreamProjector(None, venue(name).rules())
    out: list[Any] = []
    assert proj.apply_rows(rows, out) == len(rows)
    reference = Projector()
    expected: list[Any] = []
    reference.apply(rules_of().iter_events(rows), expected)
    assert out == expected and state(proj) == state(reference)
    assert proj._kinds is not None  # the stored path, not the events one


def assert_refused_alike(rules_of: Any, rows: list[Any]) -> None:
    """``rows``, whose last the rules refuse: both paths raise the rules' own error, after
    the L1 row of the two rows before it."""
    with pytest.raises(StreamError) as expected:
        rules_of().events(rows)
    for stored in (False, True):
        proj = Projector()
        rules = rules_of()
        out: list[Any] = []
        with pytest.raises(StreamError) as raised:
            if stored:
                proj.apply_stored(rows, rules, out)
            else:
                proj.apply(rules.iter_events(rows), out)
        assert str(raised.value) == str(expected.value)
        assert out == [(2, "t", 99, 2, 101, 1)]


@pytest.fixture(scope="module")
def esh4_rows() -> list[tuple[Any, ...]]:
    return as_log([r for r in stored_rows(MboReader(ESH4_DAY)) if isinstance(r, StoredRow)])


def test_the_esh4_day_as_the_log_returns_it(esh4_rows: list[tuple[Any, ...]]) -> None:
    chunks = [esh4_rows[i : i + 5_000] for i in range(0, len(esh4_rows), 5_000)]
    events, stored = both(chunks)
    assert stored == events
    assert sum(len(out) for out in stored[1]) > 20_000
    events, stored = both(chunks, l1=False, write=False)
    assert stored == events


def test_a_projection_of_databento_takes_the_stored_path(esh4_rows: list[tuple[Any, ...]]) -> None:
    assert_the_projection_takes_the_stored_path("databento", DatabentoRules, esh4_rows[:3_000])


KINDS = ["add", "add", "add", "cancel", "cancel", "modify", "modify", "fill", "trade", "none", "clear"]
FLAGS = [128, 128, 130, 0, 0, 32, 32 | 128, 40, 4, 4 | 128, 8 | 128, 32 | 4]


@st.composite
def databento_rows(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    n = draw(st.integers(1, 120))
    rows = []
    for seq in range(1, n + 1):
        kind = draw(st.sampled_from(KINDS))
        side = draw(st.sampled_from(["B", "S", None] if kind != "add" else ["B", "S"]))
        price = draw(st.sampled_from(["99.5", "100", "100.25", "101", "100.0"]))
        size = draw(st.sampled_from(["0", "1", "2", "5", "3.0"]))
        order_id = draw(st.sampled_from(["1", "2", "3", "4", "5", "6"]))
        rows.append((seq, kind, order_id, side, price, size, f"t{seq}", draw(st.sampled_from(FLAGS)), None))
    return rows


@settings(max_examples=300, deadline=None)
@given(rows=databento_rows(), cut=st.integers(1, 50), threshold=st.sampled_from([None, 0, 2, 6]))
def test_generated_rows(rows: list[tuple[Any, ...]], cut: int, threshold: int | None) -> None:
    chunks = [rows[i : i + cut] for i in range(0, len(rows), cut)]
    events, stored = both(chunks, threshold=threshold)
    assert stored == events
    events, stored = both(chunks, l1=False, write=False)
    assert stored == events


@pytest.mark.parametrize(
    "bad",
    [
        (9, "replace", "1", "B", "100", "1", "t", 128, None),
        (9, "add", "1", None, "100", "1", "t", 128, None),
        (9, "add", "1", "B", None, "1", "t", 128, None),
    ],
)
def test_a_refused_row_raises_the_rules_error_after_the_rows_before_it(bad: tuple[Any, ...]) -> None:
    rows = [(1, "add", "1", "B", "99", "2", "t", 128, None), (2, "add", "2", "S", "101", "1", "t", 128, None), bad]
    assert_refused_alike(DatabentoRules, rows)


def test_rows_of_more_fields_and_numbers_made_in_memory() -> None:
    rows = [r for r in stored_rows(MboReader(ESH4_DAY)) if isinstance(r, StoredRow)][:2_000]
    events, stored = both([rows])
    assert stored == events
    assert both([as_log(rows)])[1] == stored


# -- the L3 CSV format ------------------------------------------------------------------------


def csv_log_rows(lines: list[str]) -> list[tuple[Any, ...]]:
    """Rows as the log returns the CSV lines to a projection: seq, kind, order id, side,
    price and size as text (None where the kind has none), the time as text."""
    rows = []
    for line in lines:
        r = parse_line(line)
        rows.append((r.seq, r.kind, r.order_id, r.side, r.price, r.size, r.time))
    return rows


@pytest.fixture(scope="module")
def v31_rows() -> list[tuple[Any, ...]]:
    return csv_log_rows(V31.read_text(encoding="utf-8-sig").splitlines()[1:])


def test_the_csv_sample_as_the_log_returns_it(v31_rows: list[tuple[Any, ...]]) -> None:
    chunks = [v31_rows[i : i + 997] for i in range(0, len(v31_rows), 997)]
    events, stored = both(chunks, rules_of=CsvRules)
    assert stored == events
    assert sum(len(out) for out in stored[1]) > 1_000
    events, stored = both(chunks, l1=False, write=False, rules_of=CsvRules)
    assert stored == events


def test_a_projection_of_csv_takes_the_stored_path(v31_rows: list[tuple[Any, ...]]) -> None:
    assert_the_projection_takes_the_stored_path("csv", CsvRules, v31_rows[:3_000])


@st.composite
def csv_rows(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    n = draw(st.integers(1, 120))
    rows = []
    for seq in range(1, n + 1):
        kind = draw(st.sampled_from(["add", "add", "add", "update", "update", "delete", "delete", "trade"]))
        side = draw(st.sampled_from(["B", "S"]))
        order_id = draw(st.sampled_from(["1", "2", "3", "4", "5", "6"]))
        if kind == "delete":
            price = size = None
        else:
            price = draw(st.sampled_from(["99.5", "100", "100.25", "101", "100.0"]))
            size = draw(st.sampled_from(["0", "1", "2", "5", "3.0"] if kind != "add" else ["1", "2", "5", "3.0"]))
        rows.append((seq, kind, order_id, side, price, size, f"t{seq}"))
    return rows


@settings(max_examples=300, deadline=None)
@given(rows=csv_rows(), cut=st.integers(1, 50), threshold=st.sampled_from([None, 0, 2, 6]))
def test_generated_csv_rows(rows: list[tuple[Any, ...]], cut: int, threshold: int | None) -> None:
    chunks = [rows[i : i + cut] for i in range(0, len(rows), cut)]
    events, stored = both(chunks, threshold=threshold, rules_of=CsvRules)
    assert stored == events
    events, stored = both(chunks, l1=False, write=False, rules_of=CsvRules)
    assert stored == events


@pytest.mark.parametrize(
    "bad",
    [
        (9, "replace", "1", "B", "100", "1", "t"),
        (9, "add", "1", "B", None, "1", "t"),
        (9, "add", "1", "B", "100", None, "t"),
        (9, "update", "1", "B", "100", None, "t"),
        (9, "trade", "1", "B", None, "1", "t"),
    ],
)
def test_a_refused_csv_row_raises_the_rules_error_after_the_rows_before_it(bad: tuple[Any, ...]) -> None:
    rows = [(1, "add", "1", "B", "99", "2", "t"), (2, "add", "2", "S", "101", "1", "t"), bad]
    assert_refused_alike(CsvRules, rows)
