"""Trades (``Ledger.trades``, ``ledger export trades``): every execution with seq, time,
price, size, aggressor, maker and taker ids, against an independent reading of the input
(the CSV's TRADE lines split at commas; Databento's T and F records read from the file;
Coinbase ``match`` messages); bad input is one clear line."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import URL, Engine

import ledger
from benchmarks.generate_l3 import generate
from ledger.cli import cli
from ledger.services.read.trades import TradeRow, TradeTape

DATA = Path(__file__).parent / "data"
STREAM = "csv:l3_data_v3.1"
OTHER = {"BUY": "S", "SELL": "B"}


def _csv_trades(text: str) -> list[tuple[int, datetime, Decimal, Decimal, str, str, None]]:
    """The TRADE lines of an L3 CSV in seq order: the resting order is the maker, the side
    opposite to it the aggressor."""
    out = []
    for line in text.lstrip("\ufeff").splitlines()[1:]:
        c = line.split(",")
        if c[11]:
            when = datetime.strptime(c[15].removesuffix(" UTC"), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
            out.append((int(c[0]), when, Decimal(c[13]), Decimal(c[14]), OTHER[c[12]], c[11], None))
    return sorted(set(out))


def _rows(table: Any) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) for r in table.to_pylist()]


@pytest.fixture
def lg(database_url: URL, engine: Engine) -> Iterator[ledger.Ledger]:
    with ledger.open(database_url.render_as_string(hide_password=False)) as opened:
        yield opened


def test_the_sample_and_generated_data(lg: ledger.Ledger, db_env: dict[str, str], tmp_path: Path) -> None:
    sample = DATA / "l3-l1" / "v3.1" / "l3_data_v3.1.csv"
    lg.ingest_csv(sample)
    table = lg.trades(STREAM)
    assert table.column_names == ["seq", "time", "price", "size", "aggressor", "maker_id", "taker_id"]
    assert _rows(table) == _csv_trades(sample.read_text(encoding="utf-8-sig"))
    assert table.num_rows == 4
    text = io.StringIO()
    generate(5000, 8, text, swap_rate=0.01)
    path = tmp_path / "gen.csv"
    path.write_text(text.getvalue(), encoding="utf-8")
    lg.ingest_csv(path, stream="csv:gen")
    want = _csv_trades(text.getvalue())
    assert _rows(lg.trades("csv:gen")) == want and len(want) > 300
    # A range, by seq and by time (inclusive)
    a, b = want[50], want[150]
    assert _rows(lg.trades("csv:gen", a[0], b[0])) == want[50:151]
    assert _rows(lg.trades("csv:gen", a[1], b[1])) == [t for t in want if a[1] <= t[1] <= b[1]]
    # The command: Parquet (default) and CSV
    out = tmp_path / "trades.parquet"
    result = CliRunner().invoke(cli, ["export", "trades", "csv:gen", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {len(want)} trades" in result.output
    assert pq.read_table(out).equals(lg.trades("csv:gen"))
    assert pq.read_table(out).schema.metadata[b"ledger.table"] == b"trades"
    result = CliRunner().invoke(cli, ["export", "trades", "csv:gen", "-f", "csv", "-o", "-"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "seq,time,price,size,aggressor,maker_id,taker_id"
    seq, when, price, size, aggressor, maker, _ = want[0]
    assert (
        lines[1] == f"{seq},{when.isoformat(timespec='microseconds')},{price.normalize():f},{size},{aggressor},{maker},"
    )


def test_databento_prints_and_fills() -> None:
    """Databento CME data: each F (a resting order filled) is a row with the aggressor and
    taker of the T before it in the same exchange event; a T no F follows is a row of its
    own. Read the records straight from the file for the expectation."""
    from ledger.venues.databento.dbn import MboReader, MboRecord, stored_rows
    from ledger.venues.databento.rules import DatabentoRules

    path = DATA / "databento" / "nautilus__esh4-glbx-mdp3-20231225.mbo.dbn.zst"
    records = [r for r in MboReader(path) if isinstance(r, MboRecord)]
    rows = list(stored_rows(records))
    tape = TradeTape()
    got: list[TradeRow] = []
    events = DatabentoRules().events(rows)
    for start in range(0, len(events), 7_000):  # in chunks, as read from the log
        got += tape.feed(events[start : start + 7_000])
    got += tape.close()
    # The expectation, from the records: the last T of the exchange event so far.
    want = []
    side = {"B": "B", "A": "S", "N": None}
    printed: Any = None
    taken = False
    for row, record in zip(rows, records, strict=True):
        if record.action == "T":
            if printed is not None and not taken:
                want.append((printed[0].seq, printed[1].price, printed[1].size, side[printed[1].side], None))
            printed, taken = (row, record), False
        elif record.action == "F":
            if printed is not None and printed[1].price == record.price:
                taken = True
                aggressor = side[printed[1].side] or {"B": "S", "A": "B", "N": None}[record.side]
                want.append((row.seq, record.price, record.size, aggressor, int(printed[1].order_id) or None))
            else:
                want.append((row.seq, record.price, record.size, {"B": "S", "A": "B", "N": None}[record.side], None))
        if record.flags & 128:
            if printed is not None and not taken:
                want.append((printed[0].seq, printed[1].price, printed[1].size, side[printed[1].side], None))
            printed = None
    as_tuples = [(t.seq, t.price, t.size, t.aggressor, None if t.taker_id is None else int(t.taker_id)) for t in got]
    assert as_tuples == want
    fills = [r for r in records if r.action == "F"]
    assert sorted(t.maker_id for t in got if t.maker_id) == sorted(str(r.order_id) for r in fills)
    assert len(got) > 1_000 and sum(1 for t in got if t.taker_id) > 1_000


def test_coinbase_match() -> None:
    """Coinbase: a match's maker is its maker_order_id, the aggressor the side opposite to its
    ``side`` (the maker's)."""
    from ledger.venues.coinbase.codec import decode, to_row
    from ledger.venues.coinbase.rules import CoinbaseRules

    raw = (
        '{"type":"match","trade_id":10,"sequence":50,"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8",'
        '"taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1","time":"2017-06-25T11:23:14.800000Z",'
        '"product_id":"BTC-USD","size":"0.50000000","price":"2600.01000000","side":"sell"}'
    )
    row = to_row(decode(raw), raw)
    assert row is not None
    stored = (row.seq, row.kind, row.order_id, row.side, row.price, row.size, row.time)
    [trade] = TradeTape().feed(CoinbaseRules().events([stored]))
    assert (trade.seq, trade.price, trade.size, trade.aggressor, trade.maker_id) == (
        50,
        Decimal("2600.01"),
        Decimal("0.5"),
        "B",
        "ac928c66-ca53-498f-9c13-a110027a60e8",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "trades", "csv:nope"], "no stream named 'csv:nope'"),
        (["export", "trades", STREAM, "--to", "the end"], "not a seq or an ISO date and time"),
        (["export", "trades", STREAM, "-o", "/nonexistent/dir/t.parquet"], "cannot write"),
        (["export", "events", STREAM, "--from", "2021-08-03T06:00", "--to", "2021-08-03T05:00"], "--from is after"),
    ],
)
def test_bad_input_is_one_line(lg: ledger.Ledger, db_env: dict[str, str], args: list[str], message: str) -> None:
    lg.ingest_csv(DATA / "l3-l1" / "v3.1" / "l3_data_v3.1.csv")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output
