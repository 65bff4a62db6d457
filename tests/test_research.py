"""Arrow and Parquet outputs: ``Ledger.l1()``, ``Ledger.events()`` and ``ledger export l1|events
--format parquet`` equal the reference L1 file (an independent expectation) row for row, with
exact values through pandas and polars; bad input is one clear line."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import URL, Engine

import ledger
from ledger.cli import cli

DATA = Path(__file__).parent / "data" / "l3-l1" / "v3.1"
STREAM = "csv:l3_data_v3.1"


def _reference() -> list[dict[str, str]]:
    with (DATA / "expected_l1_data_v3.1.csv").open(encoding="utf-8-sig", newline="") as fp:
        return list(csv.DictReader(fp))


def _time(text: str) -> datetime:
    return datetime.strptime(text.removesuffix(" UTC"), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)


@pytest.fixture
def projected(database_url: URL, engine: Engine) -> ledger.Ledger:
    lg = ledger.open(database_url.render_as_string(hide_password=False))
    lg.ingest_csv(DATA / "l3_data_v3.1.csv")
    lg.project()
    yield lg
    lg.close()


def test_l1_table_equals_the_reference_exactly(projected: ledger.Ledger) -> None:
    table = projected.l1(STREAM)
    assert table.column_names == ["seq", "time", "bid_price", "bid_size", "ask_price", "ask_size"]
    assert table.schema.metadata[b"ledger.stream"] == STREAM.encode()
    assert table.schema.metadata[b"ledger.venue"] == b"csv"
    reference = _reference()
    rows = table.to_pylist()
    assert len(rows) == len(reference) == 19_290
    for got, want in zip(rows, reference, strict=True):
        assert got["seq"] == int(want["seq_num"]) and got["time"] == _time(want["time"])
        for name in ("bid_price", "bid_size", "ask_price", "ask_size"):
            assert got[name] == Decimal(want[name]), name
    frame = table.to_pandas()
    assert frame["bid_price"].iloc[100] == Decimal(reference[100]["bid_price"])
    assert str(frame["time"].dt.tz) == "UTC"
    polars = pytest.importorskip("polars")
    df = polars.from_arrow(table)
    assert df["ask_price"][200] == Decimal(reference[200]["ask_price"])


def test_ranges_by_seq_and_time(projected: ledger.Ledger) -> None:
    reference = _reference()
    a, b = reference[1000], reference[1009]
    by_seq = projected.l1(STREAM, int(a["seq_num"]), int(b["seq_num"]))
    assert by_seq["seq"].to_pylist() == [int(r["seq_num"]) for r in reference[1000:1010]]
    by_time = projected.l1(STREAM, _time(a["time"]), _time(b["time"]))
    assert set(by_seq["seq"].to_pylist()) <= set(by_time["seq"].to_pylist())
    assert projected.l1(STREAM, 1, 2).num_rows == 0  # an empty range is an empty table


def test_events_table(projected: ledger.Ledger) -> None:
    table = projected.events(STREAM, raw=True)
    assert table.num_rows == 34_247
    lines = (DATA / "l3_data_v3.1.csv").read_text(encoding="utf-8-sig").splitlines()[1:]
    assert sorted(table["raw"].to_pylist()) == sorted(lines)
    first = table.slice(0, 1).to_pylist()[0]
    assert first["kind"] in ("add", "update", "delete", "trade") and isinstance(first["seq"], int)


def test_parquet_export_round_trips(projected: ledger.Ledger, db_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "l1.parquet"
    result = CliRunner().invoke(cli, ["export", "l1", STREAM, "-f", "parquet", "-o", str(out)])
    assert result.exit_code == 0, result.output
    back = pq.read_table(out)
    assert back.equals(projected.l1(STREAM))
    assert pq.ParquetFile(out).metadata.row_group(0).column(0).compression == "ZSTD"
    assert back.schema.metadata[b"ledger.version"]
    ev = tmp_path / "events.parquet"
    result = CliRunner().invoke(cli, ["export", "events", STREAM, "-o", str(ev), "--to", "1627942268920660000"])
    assert result.exit_code == 0, result.output
    assert pq.read_table(ev)["seq"].to_pylist() == projected.events(STREAM, end=1627942268920660000)["seq"].to_pylist()


def test_csv_export_of_a_range_is_the_reference_cut(
    projected: ledger.Ledger, db_env: dict[str, str], tmp_path: Path
) -> None:
    """``export l1 --from/--to`` in CSV: exactly the reference file's lines in the range,
    bounded by seq or by time, in the L1 CSV's own bytes."""
    lines = (DATA / "expected_l1_data_v3.1.csv").read_bytes().split(b"\n")
    header, body = lines[0], [line for line in lines[1:] if line]
    a, b = _reference()[5000], _reference()[5999]
    out = tmp_path / "range.csv"
    result = CliRunner().invoke(
        cli, ["export", "l1", STREAM, "--from", a["seq_num"], "--to", b["seq_num"], "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == b"\n".join([header, *body[5000:6000]]) + b"\n"
    # By time: every reference line whose time is in [a's, b's] (several rows share a time).
    low, high = _time(a["time"]), _time(b["time"])
    want = [line for line, row in zip(body, _reference(), strict=True) if low <= _time(row["time"]) <= high]
    result = CliRunner().invoke(cli, ["export", "l1", STREAM, "--from", a["time"], "--to", b["time"], "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == b"\n".join([header, *want]) + b"\n"
    assert len(want) >= 1000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "l1", "csv:nope", "-f", "parquet"], "no stream named 'csv:nope'"),
        (["export", "l1", STREAM, "-f", "parquet", "--from", "yesterday"], "not a seq or an ISO date and time"),
        (["export", "l1", STREAM, "--from", "2021-08-03 06:00", "--to", "2021-08-03 05:00"], "--from is after --to"),
        (["export", "l1", STREAM, "--from", "9", "--to", "5"], "--from is after --to"),
        (["export", "l1", STREAM, "-f", "parquet", "-o", "/nonexistent/dir/x.parquet"], "cannot write"),
    ],
)
def test_bad_input_is_one_line(projected: ledger.Ledger, db_env: dict[str, str], args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_every_parquet_export_is_in_row_groups_with_metadata(projected: ledger.Ledger, tmp_path: Path) -> None:
    """l1, l2, trades and events: written batch by batch (a row group each, so memory holds
    one batch, whatever the size), zstd, with the stream, venue, table and version."""
    from ledger.services.read.depth import depth_batches
    from ledger.services.read.research import events_batches, l1_batches, write_parquet
    from ledger.services.read.trades import trades_batches

    engine = projected.engine
    made = {
        "l1": l1_batches(engine, STREAM, chunk=2_000),
        "l2": depth_batches(engine, STREAM, depth=3, every="10s", chunk=500),
        "trades": trades_batches(engine, STREAM, chunk=2),
        "events": events_batches(engine, STREAM, chunk=2_000),
    }
    whole = {
        "l1": projected.l1(STREAM),
        "l2": projected.l2(STREAM, 3, every="10s"),
        "trades": projected.trades(STREAM),
        "events": projected.events(STREAM),
    }
    for table, (schema, batches) in made.items():
        out = tmp_path / f"{table}.parquet"
        rows = write_parquet(schema, batches, out)
        meta = pq.ParquetFile(out).metadata
        assert rows == meta.num_rows == whole[table].num_rows > 0, table
        assert meta.num_row_groups >= 2, table
        biggest = max(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
        assert biggest <= {"l1": 4_000, "l2": 500, "trades": 2, "events": 4_000}[table], (table, biggest)
        assert meta.row_group(0).column(0).compression == "ZSTD"
        back = pq.read_table(out)
        assert back.equals(whole[table]), table
        assert back.schema.metadata[b"ledger.table"] == table.encode()
        assert back.schema.metadata[b"ledger.stream"] == STREAM.encode()
        assert back.schema.metadata[b"ledger.venue"] == b"csv" and back.schema.metadata[b"ledger.version"]


def test_the_readme_research_section_runs_as_written(
    projected: ledger.Ledger, db_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re
    import shlex

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Research") :]
    section = section[: section.index("\n## ", 1)]
    [commands] = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    monkeypatch.chdir(tmp_path)
    written = []
    for line in commands.strip().splitlines():
        args = shlex.split(line)
        assert args[0] == "ledger"
        result = CliRunner().invoke(cli, args[1:])
        assert result.exit_code == 0, (line, result.output)
        target = tmp_path / args[args.index("-o") + 1]
        assert target.stat().st_size > 300, line
        written.append(target.suffix)
    assert written == [".csv", ".parquet", ".parquet", ".csv", ".csv", ".parquet", ".png"]
    assert pq.read_table(tmp_path / "l1.parquet").equals(projected.l1(STREAM))  # -f from the suffix
    assert (tmp_path / "l1-hour.csv").read_bytes().startswith(b"\xef\xbb\xbftime,bid_price")
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    depth = namespace["depth"]
    assert depth.num_rows == 39_399 and depth.column_names[2] == "bid_price_1"  # type: ignore[attr-defined]
    assert namespace["trades"].num_rows == 4  # type: ignore[attr-defined]
    assert len(namespace["frame"]) == 39_399  # type: ignore[arg-type]


def test_events_as_csv(projected: ledger.Ledger, db_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "events.csv"
    result = CliRunner().invoke(cli, ["export", "events", STREAM, "-o", str(out)])  # -f from the suffix
    assert result.exit_code == 0, result.output
    with out.open(encoding="utf-8", newline="") as fp:
        rows = list(csv.DictReader(fp))
    table = projected.events(STREAM).to_pylist()
    assert len(rows) == len(table) == 34_247
    for got, want in zip(rows[::997], table[::997], strict=True):
        assert int(got["seq"]) == want["seq"] and got["kind"] == want["kind"]
        assert got["time"] == want["time"].isoformat(timespec="microseconds")
        assert got["order_id"] == (want["order_id"] or "") and got["side"] == (want["side"] or "")
        for name in ("price", "size"):
            assert (Decimal(got[name]) if got[name] else None) == want[name]
