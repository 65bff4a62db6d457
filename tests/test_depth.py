"""L2 depth (``Ledger.l2``, ``ledger export l2``): the samples equal ``ledger book --depth N
--at-time T`` at the same times and a naive model written apart from ledger (plain dicts,
levels by sorting, the CSV lines split at commas), on the real sample and on generated data;
the event-end rule holds on venues whose events span several records (a property test of
the pure sampler against a naive book); bad input is one clear line."""

from __future__ import annotations

import doctest
import io
import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import URL, Engine

import ledger
import ledger.domain.events as events_module
import ledger.services.read.depth as depth_module
from benchmarks.generate_l3 import generate
from ledger.cli import cli
from ledger.domain.events import BUY, LAST, SELL
from ledger.domain.projector import Projector
from ledger.services.read.depth import DepthSampler, parse_duration

DATA = Path(__file__).parent / "data" / "l3-l1" / "v3.1" / "l3_data_v3.1.csv"
STREAM = "csv:l3_data_v3.1"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Levels = list[tuple[Decimal, Decimal, int]]
NaiveSample = tuple[int, int | None, Levels, Levels]  # time (us), seq, bids, asks


# -- the naive model ---------------------------------------------------------------------


def _micros(text: str) -> int:
    when = datetime.strptime(text.removesuffix(" UTC"), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    return (when - EPOCH) // timedelta(microseconds=1)


def _csv_events(text: str) -> list[tuple[int, int, str, str, str, Decimal, Decimal]]:
    """(seq, time, kind, side, id, price, qty) of each line of an L3 CSV, in seq order."""
    out = []
    for line in text.lstrip("\ufeff").splitlines()[1:]:
        c = line.split(",")
        for kind, at in (("add", 1), ("update", 5), ("delete", 9), ("trade", 11)):
            if c[at]:
                price = c[at + 2] if kind != "delete" else "0"
                qty = c[at + 3] if kind != "delete" else "0"
                out.append((int(c[0]), _micros(c[15]), kind, c[at + 1], c[at], Decimal(price), Decimal(qty)))
    return sorted(out)


class NaiveBook:
    """Orders by (side, id); levels by grouping and sorting them every time they are asked for."""

    def __init__(self) -> None:
        self.orders: dict[tuple[str, str], list[Decimal]] = {}

    def apply(self, kind: str, side: str, oid: str, price: Decimal, qty: Decimal) -> None:
        key = (side, oid)
        if kind == "add":
            self.orders[key] = [price, qty]
        elif kind == "delete":
            self.orders.pop(key, None)
        elif kind == "update" and key in self.orders:
            self.orders[key] = [price, qty]
            if qty <= 0:
                del self.orders[key]
        elif kind == "fill0" and key in self.orders:  # a fill that leaves the order at 0
            self.orders[key][1] -= qty
        elif kind == "resize" and key in self.orders:  # a new size, the price kept
            self.orders[key][1] = qty
        elif kind in ("trade", "reduce") and key in self.orders:
            self.orders[key][1] -= qty
            if self.orders[key][1] <= 0:
                del self.orders[key]

    def top(self, n: int) -> tuple[Levels, Levels]:
        sides: dict[str, dict[Decimal, list[Any]]] = {"BUY": {}, "SELL": {}}
        for (side, _), (price, qty) in self.orders.items():
            if qty <= 0:  # resting at 0 (Coinbase, until its done): not in a level, not counted
                continue
            level = sides[side].setdefault(price, [Decimal(0), 0])
            level[0] += qty
            level[1] += 1
        bids = sorted(sides["BUY"].items(), reverse=True)[:n]
        asks = sorted(sides["SELL"].items())[:n]
        return [(p, s, k) for p, (s, k) in bids], [(p, s, k) for p, (s, k) in asks]


def naive_samples(
    groups: list[tuple[int, int, list[tuple[str, str, str, Decimal, Decimal]]]],
    n: int,
    every: int | None,
    on_change: bool,
    first: int | None = None,
) -> list[NaiveSample]:
    """The samples of the module's rule over whole events ``(time, seq, records)``: a grid
    point T shows the book after every event whose time is at or before T; the points run
    from ``first`` (default: the first event's time) rounded up through the last event's."""
    book = NaiveBook()
    out: list[NaiveSample] = []
    if not groups:
        return out
    point = last = None
    if every is not None:
        point = -(-(groups[0][0] if first is None else first) // every) * every
        last = groups[-1][0] // every * every
    seq = None
    top = book.top(n)
    for time, end_seq, records in groups:
        while point is not None and last is not None and point < time and point <= last:
            out.append((point, seq, *book.top(n)))
            point += every or 0
        for record in records:
            book.apply(*record)
        seq = end_seq
        if on_change and book.top(n) != top:
            top = book.top(n)
            out.append((time, seq, *top))
    while point is not None and last is not None and point <= last:
        out.append((point, seq, *book.top(n)))
        point += every or 0
    return out


def _csv_groups(text: str) -> list[tuple[int, int, list[tuple[str, str, str, Decimal, Decimal]]]]:
    """Every CSV line is an event of its own."""
    return [(t, seq, [(kind, side, oid, price, qty)]) for seq, t, kind, side, oid, price, qty in _csv_events(text)]


# -- reading ledger's output --------------------------------------------------------------


def _samples(table: Any, n: int) -> list[NaiveSample]:
    out = []
    for row in table.to_pylist():
        sides = []
        for side in ("bid", "ask"):
            levels = []
            for i in range(1, n + 1):
                if row[f"{side}_price_{i}"] is None:
                    assert row[f"{side}_size_{i}"] is None and row[f"{side}_orders_{i}"] is None
                    continue
                levels.append((row[f"{side}_price_{i}"], row[f"{side}_size_{i}"], row[f"{side}_orders_{i}"]))
            sides.append(levels)
        out.append(((row["time"] - EPOCH) // timedelta(microseconds=1), row["seq"], sides[0], sides[1]))
    return out


@pytest.fixture
def sample(database_url: URL, engine: Engine) -> Iterator[ledger.Ledger]:
    lg = ledger.open(database_url.render_as_string(hide_password=False))
    lg.ingest_csv(DATA)
    yield lg
    lg.close()


def test_grid_and_changes_equal_the_naive_model_on_the_sample(sample: ledger.Ledger) -> None:
    groups = _csv_groups(DATA.read_text(encoding="utf-8-sig"))
    wide = sample.l2(STREAM, 5, every="1m")
    assert wide.schema.metadata[b"ledger.stream"] == STREAM.encode()
    got = _samples(wide, 5)
    assert got == naive_samples(groups, 5, 60_000_000, False)
    assert len(got) == 657  # 22:12 through 09:08, one row per minute
    assert any(not s[3] for s in got) and any(len(s[2]) == 5 for s in got)  # an empty side, a full one
    changes = _samples(sample.l2(STREAM, 3, on_change=True, every="1h"), 3)
    assert changes == naive_samples(groups, 3, 3_600_000_000, True)


def test_samples_equal_ledger_book_at_the_same_times(sample: ledger.Ledger, db_env: dict[str, str]) -> None:
    table = sample.l2(STREAM, 4, every="1s")
    rows = _samples(table, 4)
    assert len(rows) == 39_399  # 22:11:22 through 09:08:00, every second
    for time, seq, bids, asks in random.Random(5).sample(rows, 12):
        at = EPOCH + timedelta(microseconds=time)
        view = sample.book(STREAM, at_time=at)
        assert view.seq == seq
        assert [tuple(level) for level in view.book.levels(BUY, 4)] == bids
        assert [tuple(level) for level in view.book.levels(SELL, 4)] == asks
    # and the command, on the last point
    time, _, bids, asks = rows[-1]
    stamp = (EPOCH + timedelta(microseconds=time)).isoformat()
    result = CliRunner().invoke(cli, ["book", STREAM, "--depth", "4", "--at-time", stamp, "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert [Decimal(str(level["price"])) for level in shown["bids"]] == [b[0] for b in bids]
    assert [Decimal(str(level["price"])) for level in shown["asks"]] == [a[0] for a in asks]


def test_generated_data_from_a_snapshot_in_a_range(database_url: URL, engine: Engine, tmp_path: Path) -> None:
    text = io.StringIO()
    generate(3000, 11, text, swap_rate=0.01)
    path = tmp_path / "gen.csv"
    path.write_text(text.getvalue(), encoding="utf-8")
    groups = _csv_groups(text.getvalue())
    with ledger.open(database_url.render_as_string(hide_password=False)) as lg:
        lg.ingest_csv(path, stream="csv:gen")
        lg.project(settings=ledger.ProjectSettings(snapshot_every=500))
        assert len(lg.snapshots("csv:gen")) >= 5
        # The whole stream: grid and changes together, in both layouts.
        got = _samples(lg.l2("csv:gen", 6, every="100ms", on_change=True), 6)
        assert got == naive_samples(groups, 6, 100_000, True)
        long = lg.l2("csv:gen", 6, every="100ms", on_change=True, layout="long").to_pylist()
        assert len(long) == 12 * len(got)
        assert [(r["side"], r["level"]) for r in long[:12]] == [("bid", i) for i in range(1, 7)] + [
            ("ask", i) for i in range(1, 7)
        ]
        # A range by seq: the book before it is rebuilt from the snapshot at or before it;
        # the grid runs from the range's first event's time rounded up through its last's,
        # the changes are those its events make.
        first, last = groups[1234][1], groups[2345][1]
        ranged = _samples(lg.l2("csv:gen", 3, every="10ms", on_change=True, start=first, end=last), 3)
        inside = [g for g in groups if first <= g[1] <= last]
        low, high = -(-inside[0][0] // 10_000) * 10_000, inside[-1][0]
        grid = [s for s in naive_samples(groups, 3, 10_000, False) if low <= s[0] <= high]
        changes = [s for s in naive_samples(groups, 3, None, True) if first <= (s[1] or 0) <= last]
        want = sorted([(s, 0) for s in changes] + [(s, 1) for s in grid], key=lambda pair: (pair[0][0], pair[1]))
        assert len(grid) > 100 and len(changes) > 100
        assert ranged == [s for s, _ in want]


# -- the event-end rule, on the pure sampler ----------------------------------------------

_record = st.tuples(
    st.sampled_from(["add", "add", "reduce", "delete", "fill0", "resize"]),
    st.sampled_from([BUY, SELL]),
    st.integers(1, 6),  # order id
    st.integers(98, 101),  # price (few levels: several orders in each)
    st.integers(1, 5),  # size
    st.integers(0, 14).map(lambda k: k * 50_000),  # microseconds after the previous (often on a grid point)
    st.booleans(),  # ends its event
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_record, min_size=1, max_size=60), st.sampled_from([None, 250_000, 1_000_000]), st.booleans(),
       st.integers(1, 3), st.randoms(use_true_random=False))  # fmt: skip
def test_sampler_shows_only_event_ends(records: list[Any], every: int | None, on_change: bool, depth: int,
                                       rnd: random.Random) -> None:  # fmt: skip
    if every is None and not on_change:
        on_change = True
    typed, groups, current = [], [], []
    resting: dict[tuple[str, str], int] = {}
    time = 1_000_000_000
    for seq, (kind, side, oid, price, size, step, last) in enumerate(records, start=1):
        time += step
        key = (side, str(oid))
        if kind != "add" and key not in resting:
            kind = "add"
        if kind == "add" and key in resting:
            kind = "delete"
        flags = LAST if last else 0
        ts = EPOCH + timedelta(microseconds=time)
        if kind == "add":
            resting[key] = size
            typed.append(events_module.add(seq, str(oid), side, price, size, ts=ts, flags=flags))
        elif kind == "reduce" and resting[key] > 0:
            resting[key] -= size
            if resting[key] <= 0:
                del resting[key]
            typed.append(events_module.reduce(seq, str(oid), side, size, ts=ts, flags=flags))
        elif kind == "fill0" and resting[key] > 0:  # Coinbase's match: the order stays at 0
            size = min(size, resting[key])
            resting[key] -= size
            typed.append(events_module.fill(seq, str(oid), side, price, size, keep_at_zero=True, ts=ts, flags=flags))
        elif kind == "resize":  # Coinbase's change: a new size (an order at 0 may get size again)
            resting[key] = size
            typed.append(events_module.modify(seq, str(oid), side, None, size, keep_at_zero=True, ts=ts, flags=flags))
        else:
            kind = "delete"
            del resting[key]
            typed.append(events_module.delete(seq, str(oid), side, ts=ts, flags=flags))
        naive_side = "BUY" if side == BUY else "SELL"
        current.append((kind, naive_side, str(oid), Decimal(price), Decimal(size)))
        if last:
            groups.append((time, seq, current))
            current = []
    first_time = (typed[0].ts - EPOCH) // timedelta(microseconds=1)
    want = naive_samples(groups, depth, every, on_change, first=first_time)
    sampler = DepthSampler(
        Projector(),
        depth=depth,
        every=every,
        on_change=on_change,
        first_point=None if every is None else -(-first_time // every) * every,
        last_point=None if every is None or not groups else groups[-1][0] // every * every,
    )
    got = []
    cuts = sorted(rnd.sample(range(len(typed) + 1), k=min(3, len(typed) + 1)))
    for a, b in zip([0, *cuts], [*cuts, len(typed)], strict=True):
        got += sampler.feed(typed[a:b])
    got += sampler.close()
    as_naive = [
        (s.time, s.seq, [(Decimal(p), Decimal(z), k) for p, z, k in s.bids],
         [(Decimal(p), Decimal(z), k) for p, z, k in s.asks])
        for s in got
    ]  # fmt: skip
    assert as_naive == want


def test_orders_resting_at_zero_are_not_counted() -> None:
    """Coinbase keeps an order matched down to 0 until its done: it is not counted in its
    level, and counted again when a change gives it size (the sampler keeps counts between
    samples only while a level's total and number of orders stay the same)."""
    sampler = DepthSampler(Projector(), depth=1, on_change=True)
    at = EPOCH + timedelta(seconds=1)
    out = sampler.feed(
        [
            events_module.add(1, "a", BUY, 100, 2, ts=at),
            events_module.add(2, "b", BUY, 100, 3, ts=at),
            events_module.fill(3, "a", BUY, 100, 2, keep_at_zero=True, ts=at),  # a rests at 0
            events_module.modify(4, "a", BUY, None, 4, keep_at_zero=True, ts=at),  # a has size again
            events_module.fill(5, "b", BUY, 100, 3, keep_at_zero=True, ts=at),  # b rests at 0
            events_module.modify(6, "b", BUY, None, 3, keep_at_zero=True, ts=at),
        ]
    )
    assert [(s.seq, [tuple(level) for level in s.bids]) for s in out] == [
        (1, [(100, 2, 1)]),
        (2, [(100, 5, 2)]),
        (3, [(100, 3, 1)]),
        (4, [(100, 7, 2)]),
        (5, [(100, 4, 1)]),
        (6, [(100, 7, 2)]),
    ]


def test_a_grid_point_inside_an_event_shows_the_book_before_it() -> None:
    at = EPOCH + timedelta(seconds=10)
    sampler = DepthSampler(Projector(), depth=1, every=1_000_000, first_point=11_000_000, last_point=12_000_000)
    out = sampler.feed(
        [
            events_module.add(1, "a", BUY, 100, 5, ts=at + timedelta(milliseconds=100)),
            # One venue event from 10.9 s to 11.2 s: the bid moves from 100 to 101.
            events_module.delete(2, "a", BUY, ts=at + timedelta(milliseconds=900), flags=0),
            events_module.add(3, "b", BUY, 101, 7, ts=at + timedelta(milliseconds=1200)),
        ]
    )
    out += sampler.close()
    assert [(s.time, s.seq, [tuple(level) for level in s.bids]) for s in out] == [
        (11_000_000, 1, [(100, 5, 1)]),
        (12_000_000, 3, [(101, 7, 1)]),
    ]


def test_docstring_example() -> None:
    names = {k: v for k, v in vars(events_module).items() if not k.startswith("_")}
    result = doctest.testmod(depth_module, extraglobs={"Projector": Projector, **names})
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    ("text", "micros"), [("1s", 1_000_000), ("250ms", 250_000), ("0.5s", 500_000), ("2h", 7_200_000_000)]
)
def test_durations(text: str, micros: int) -> None:
    assert parse_duration(text) == micros


@pytest.mark.parametrize("text", ["0s", "-1s", "1", "s", "0.5us", "1 fortnight"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# -- the command ------------------------------------------------------------------------


def test_export_l2_files(sample: ledger.Ledger, db_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "depth.parquet"
    result = CliRunner().invoke(cli, ["export", "l2", STREAM, "-n", "3", "--every", "10m", "-o", str(out)])
    assert result.exit_code == 0, result.output
    back = pq.read_table(out)
    assert back.equals(sample.l2(STREAM, 3, every="10m"))
    assert pq.ParquetFile(out).metadata.row_group(0).column(0).compression == "ZSTD"
    assert back.schema.metadata[b"ledger.venue"] == b"csv" and back.schema.metadata[b"ledger.version"]
    csv_out = tmp_path / "depth.csv"
    result = CliRunner().invoke(cli, ["export", "l2", STREAM, "-n", "3", "--every", "10m", "-o", str(csv_out)])
    assert result.exit_code == 0, result.output
    lines = csv_out.read_text(encoding="utf-8").splitlines()
    assert lines[0].split(",")[:5] == ["time", "seq", "bid_price_1", "bid_size_1", "bid_orders_1"]
    assert len(lines) == back.num_rows + 1
    first = back.slice(0, 1).to_pylist()[0]
    cells = lines[1].split(",")
    assert cells[0] == first["time"].isoformat(timespec="microseconds") and cells[1] == str(first["seq"])
    assert Decimal(cells[2]) == first["bid_price_1"] and cells[2] == format(first["bid_price_1"].normalize(), "f")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "l2", "csv:nope", "--every", "1s"], "no stream named 'csv:nope'"),
        (["export", "l2", STREAM, "--every", "0s"], "a duration must be more than 0"),
        (["export", "l2", STREAM, "--every", "-5m"], "a duration must be more than 0"),
        (["export", "l2", STREAM, "--every", "soon"], "not a duration"),
        (["export", "l2", STREAM, "-n", "0", "--every", "1s"], "0 is not in the range x>=1"),
        (["export", "l2", STREAM], "give --every DURATION and/or --on-change"),
        (["export", "l2", STREAM, "--every", "1s", "--from", "noon"], "not a seq or an ISO date and time"),
        (["export", "l2", STREAM, "--every", "1s", "--from", "9", "--to", "3"], "--from is after --to"),
        (["export", "l2", STREAM, "--every", "1s", "-o", "/nonexistent/dir/x.parquet"], "cannot write"),
    ],
)
def test_bad_input_is_one_line(sample: ledger.Ledger, db_env: dict[str, str], args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_databento_samples_are_the_book_at_the_last_event_end(database_url: URL, engine: Engine) -> None:
    """A Databento stream (exchange events of several records, time-based seqs): each sample
    equals ``Ledger.book`` at the seq of the last record ending an event (F_LAST) received
    at or before the sample's time, found from the file's records read here."""
    from ledger.venues.databento.dbn import MboReader, MboRecord, stored_rows

    path = Path(__file__).parent / "data" / "databento"
    path = path / "nautilus__orderbooks_mbo_2024-05-08T00-00-00_2024-05-08T00-00-02.dbn.zst"
    rows = list(stored_rows(r for r in MboReader(path) if isinstance(r, MboRecord)))
    ends = [(r.ts, r.seq) for r in rows if r.flags & 128]
    assert len(ends) < len(rows)  # events of several records
    with ledger.open(database_url.render_as_string(hide_password=False)) as lg:
        lg.ingest_dbn(path)
        [stream] = lg.streams()
        table = lg.l2(stream, 3, every="20ms")
        samples = _samples(table, 3)
        assert len(samples) == 100  # 00:00:00.000 through 00:00:01.980
        checked = 0
        for time, seq, bids, asks in samples[::7]:
            at = EPOCH + timedelta(microseconds=time)
            end_seq = max(s for ts, s in ends if ts <= at)
            assert seq == end_seq
            view = lg.book(stream, at_seq=end_seq)
            assert [tuple(level) for level in view.book.levels(BUY, 3)] == bids
            assert [tuple(level) for level in view.book.levels(SELL, 3)] == asks
            checked += 1
        assert checked == 15
        trades = lg.trades(stream)
        fills = [r for r in rows if r.kind == "fill"]
        assert sorted(trades["maker_id"].to_pylist()) == sorted(r.order_id for r in fills)
