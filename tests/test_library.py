"""The library facade: ``ledger.open()`` does what the command line does, checked against the
reference L1 file of the sample (an independent expectation)."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.engine import URL, Engine

import ledger

DATA = Path(__file__).parent / "data" / "l3-l1" / "v3.1"
SAMPLE = DATA / "l3_data_v3.1.csv"
EXPECTED = DATA / "expected_l1_data_v3.1.csv"
STREAM = "csv:l3_data_v3.1"


def test_public_names_are_exported() -> None:
    assert set(ledger.__all__) <= set(dir(ledger))
    assert callable(ledger.open)


def test_open_ingest_project_read(database_url: URL, engine: Engine) -> None:
    with ledger.open(database_url.render_as_string(hide_password=False)) as lg:
        summary = lg.ingest_csv(SAMPLE)
        assert summary.stream == STREAM and summary.events_stored == 34_247
        again = lg.ingest_csv(SAMPLE)
        assert again.events_stored == 0
        [projected] = lg.project()
        assert projected.status == "ok" and projected.l1_rows == 19_290
        assert lg.streams() == [STREAM]

        out = io.BytesIO()
        assert lg.export_l1_csv(STREAM, out) == 19_290
        assert out.getvalue() == EXPECTED.read_bytes()

        with EXPECTED.open(encoding="utf-8-sig", newline="") as fp:
            reference = [r for r in csv.DictReader(fp)]
        rows = list(lg.l1_rows(STREAM))
        assert len(rows) == len(reference)
        for got, want in zip(rows, reference, strict=True):
            assert got.seq == int(want["seq_num"])
            assert (got.bid_price, got.ask_price) == (Decimal(want["bid_price"]), Decimal(want["ask_price"]))
            assert (got.bid_size, got.ask_size) == (Decimal(want["bid_size"]), Decimal(want["ask_size"]))
        middle = rows[len(rows) // 2]
        window = list(lg.l1_rows(STREAM, start=middle.seq, end=rows[len(rows) // 2 + 9].seq))
        assert window == rows[len(rows) // 2 : len(rows) // 2 + 10]
        assert next(iter(lg.l1_rows(STREAM, start=middle.time, end=middle.time))) == middle

        view = lg.book(STREAM, at_seq=middle.seq)
        top = view.book.top()
        assert top is not None and (top.bid_price, top.ask_price) == (middle.bid_price, middle.ask_price)
        [status] = lg.status()
        assert status.stream == STREAM and status.events == 34_247
        assert lg.gaps(STREAM) == [] and lg.rejects(STREAM) == []
        assert lg.snapshots(STREAM) == []  # one every 250,000 events by default
        [again_projected] = lg.project([STREAM], rebuild=True, settings=ledger.ProjectSettings(snapshot_every=10_000))
        assert again_projected.l1_rows == 19_290 and len(lg.snapshots(STREAM)) == 3
        out = io.BytesIO()
        lg.export_l1_csv(STREAM, out)
        assert out.getvalue() == EXPECTED.read_bytes()
        with pytest.raises(ledger.StreamError, match="no stream named"):
            lg.book("csv:nope")


def test_the_readme_python_example_runs(db_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python block, exactly as printed (on the test database)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(Path(__file__).parent.parent)
    printed: list[tuple[object, ...]] = []
    exec(compile(block, "README.md", "exec"), {"print": lambda *a: printed.append(a)})
    top, *rows = printed
    assert top[0] is not None and len(rows) > 100
    assert all(row[0] <= 1627942268920660000 for row in rows)


def test_sql_from_the_library(database_url: URL, engine: Engine) -> None:
    with ledger.open(database_url.render_as_string(hide_password=False)) as lg:
        result = lg.sql("SELECT g, g::numeric / 8 AS eighth FROM generate_series(1, 3) g")
        assert result.columns == ["g", "eighth"]
        assert [tuple(r) for r in result.rows] == [(g, Decimal(g) / 8) for g in (1, 2, 3)]
        with pytest.raises(ledger.LedgerError, match="read-only"):
            lg.sql("CREATE TABLE nope (x int)")
