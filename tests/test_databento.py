"""The Databento MBO venue (ledger/venues/databento/) against independent expectations.

The book is checked against a naive model written here from Databento's documented MBO rules
(a plain dict of orders, each price level a list in queue order, best prices and sizes found
by scanning), fed from records decoded by ``databento_dbn`` directly: neither ledger's reader,
rules nor projector is on that side. Raw bytes are checked against the file decompressed by
the ``zstd`` program and cut into records by hand. The data are real Databento files
(``tests/data/databento/PROVENANCE.md``).
"""

from __future__ import annotations

import datetime
import io
import itertools
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import databento_dbn as dbn
import pytest
from sortedcontainers import SortedDict

from ledger.domain.events import LAST, MAYBE_BAD_BOOK, SNAPSHOT, mark
from ledger.domain.projector import Projector
from ledger.domain.snapshot import FORMAT_VERSION, decode, encode
from ledger.errors import InputError
from ledger.venues import venue
from ledger.venues.databento.dbn import (
    DbnError,
    MboReader,
    MboReject,
    Sequencer,
    StoredRow,
    price_of,
    stored_row,
    stored_rows,
)
from ledger.venues.databento.rules import DatabentoRules


def _data_dir() -> Path:
    """The bundled real files (``LEDGER_DATABENTO_DATA`` may point elsewhere)."""
    return Path(os.environ.get("LEDGER_DATABENTO_DATA") or Path(__file__).parent / "data" / "databento")


DATA = _data_dir()
ESH4_DAY = DATA / "nautilus__esh4-glbx-mdp3-20231225.mbo.dbn.zst"
ESH4_DAY_BEFORE = DATA / "nautilus__esh4-glbx-mdp3-20231224.mbo.dbn.zst"
ESM4_CLEAR = DATA / "nautilus__orderbooks_mbo_2024-05-08T00-00-00_2024-05-08T00-00-02.dbn.zst"
TINY = sorted(DATA.glob("databento-python__*.mbo.dbn.zst"))
F_SNAPSHOT = 1 << 5
F_LAST = 1 << 7


# -- the independent side ------------------------------------------------------------------


def decoded(path: Path) -> tuple[Any, list[Any]]:
    """The metadata and records of a file, straight from databento_dbn."""
    decoder = dbn.DBNDecoder(compression=dbn.Compression.ZSTD)
    out = decoder.write_and_decode(path.read_bytes())
    assert not decoder.buffer()
    return out[0], out[1:]


class NaiveBook:
    """Databento's documented MBO rules, applied as plainly as possible. Orders by id; each
    level a list of ids in queue order; nothing sorted: the best price is a max/min over the
    levels and its size a sum over its orders, recomputed each time."""

    def __init__(self) -> None:
        self.orders: dict[int, list[Any]] = {}  # id -> [side, price, size]
        self.levels: dict[str, dict[int, list[int]]] = {"B": {}, "A": {}}
        self.in_snapshot = False
        self.odd: Counter[str] = Counter()

    def clear(self) -> None:
        self.orders.clear()
        self.levels = {"B": {}, "A": {}}

    def _unqueue(self, order_id: int) -> None:
        side, price, _ = self.orders[order_id]
        queue = self.levels[side][price]
        queue.remove(order_id)
        if not queue:
            del self.levels[side][price]

    def apply(self, action: str, side: str, price: int, size: int, order_id: int, flags: int) -> None:
        if flags & F_SNAPSHOT:  # a run of snapshot records replaces the book; F_LAST ends the run
            if not self.in_snapshot:
                self.clear()
            self.in_snapshot = not flags & F_LAST
        else:
            self.in_snapshot = False
        if action == "A":
            assert order_id not in self.orders
            self.orders[order_id] = [side, price, size]
            self.levels[side].setdefault(price, []).append(order_id)
        elif action == "C":  # size is what is cancelled
            order = self.orders.get(order_id)
            if order is None:
                self.odd["cancel_unknown"] += 1
                return
            if size != order[2]:
                self.odd["partial_cancel"] += 1
            order[2] -= size
            if order[2] <= 0:
                self._unqueue(order_id)
                del self.orders[order_id]
        elif action == "M":  # new absolute price and size; priority kept only at the same price, not growing
            order = self.orders.get(order_id)
            if order is None:
                self.odd["modify_unknown"] += 1
                return
            if size == 0:
                self.odd["modify_to_zero"] += 1
                self._unqueue(order_id)
                del self.orders[order_id]
                return
            if price != order[1] or size > order[2]:
                self.odd["modify_lost_priority"] += 1
                self._unqueue(order_id)
                order[1] = price
                self.levels[side].setdefault(price, []).append(order_id)
            order[2] = size
        elif action == "R":
            self.clear()
        else:
            assert action in "TFN", action  # trades and fills do not change the book

    def top(self) -> tuple[int, int, int, int] | None:
        bids, asks = self.levels["B"], self.levels["A"]
        if not bids or not asks:
            return None
        bid, ask = max(bids), min(asks)
        return (
            bid,
            sum(self.orders[o][2] for o in bids[bid]),
            ask,
            sum(self.orders[o][2] for o in asks[ask]),
        )

    def queue_order(self) -> list[tuple[str, str, int, int]]:
        """Every order: bids best first, then asks best first, each level in queue order."""
        out = []
        for side, best_first in (("B", True), ("A", False)):
            for price in sorted(self.levels[side], reverse=best_first):
                for order_id in self.levels[side][price]:
                    out.append((str(order_id), "B" if side == "B" else "S", price, self.orders[order_id][2]))
        return out


def naive_run(records: Sequence[Any]) -> tuple[NaiveBook, list[tuple[int, Any]], int, int]:
    """The naive book over ``records``; the L1 changes as (record index, top) at event ends;
    the times a written top became crossed; event ends seen crossed vs. records seen crossed
    inside events (the reason the book is looked at only at event ends)."""
    book = NaiveBook()
    changes: list[tuple[int, Any]] = []
    last = None
    crossed = False
    crossings = 0
    crossed_inside = 0
    for index, r in enumerate(records):
        flags = r.flags
        book.apply(r.action.value, r.side.value, r.price, r.size, r.order_id, int(flags))
        if not flags & F_LAST:
            if index % 7 == 0:  # a sample: scanning after every record would be slow
                top = book.top()
                crossed_inside += top is not None and top[0] > top[2]
            continue
        top = book.top()
        if top is None or top == last:
            continue
        last = top
        if top[0] > top[2] and not crossed:
            crossings += 1
        crossed = top[0] > top[2]
        changes.append((index, top))
    return book, changes, crossings, crossed_inside


def units(value: Any) -> int:
    """An exact price back to integer 1e-9 units (independently of price_of)."""
    scaled = Decimal(value) * 1_000_000_000
    assert scaled == scaled.to_integral_value()
    return int(scaled)


# -- ledger's side -------------------------------------------------------------------------


def pipeline(path: Path | io.BytesIO, **kwargs: Any) -> tuple[list[Any], list[Any], Projector, list[Any]]:
    """Records, stored rows, the projector after them and its L1 rows."""
    items = list(MboReader(path, **kwargs))
    rows = list(stored_rows(items))
    projector = Projector()
    out: list[Any] = []
    events = DatabentoRules().events([r for r in rows if isinstance(r, StoredRow)])
    assert projector.apply(events, out) == len(events)
    return items, rows, projector, out


@pytest.fixture(scope="module")
def esh4() -> tuple[list[Any], list[Any], Projector, list[Any]]:
    return pipeline(ESH4_DAY)


@pytest.fixture(scope="module")
def esh4_decoded() -> tuple[Any, list[Any]]:
    return decoded(ESH4_DAY)


def test_esh4_day_matches_the_naive_model_at_every_event_end(esh4: Any, esh4_decoded: Any) -> None:
    items, rows, projector, l1 = esh4
    _, records = esh4_decoded
    assert len(records) == len(items) == len(rows) == 68_792
    book, changes, crossings, crossed_inside = naive_run(records)

    # The model saw what the file holds: a snapshot without a clear first, every order it
    # cancels or modifies on the book, and modifies that lose the order's place.
    assert book.odd["modify_unknown"] == book.odd["cancel_unknown"] == 0
    assert book.odd["modify_lost_priority"] > 0
    assert records[0].flags & F_SNAPSHOT and records[0].action.value == "A"

    # L1 at every event end: the projector writes a row exactly when the naive top changes.
    index_of_seq = {row.seq: i for i, row in enumerate(rows)}
    got = [(index_of_seq[seq], (units(bp), bs, units(ap), az)) for seq, _, bp, bs, ap, az in l1]
    assert len(got) == len(changes) == 25_439
    for mine, naive in zip(got, changes, strict=True):
        assert mine == naive, f"first difference: ledger {mine}, naive model {naive}"
    assert l1[-1][1] == rows[changes[-1][0]].ts  # L1 rows carry ts_recv

    # The crossed-book rule counts what the naive model saw become crossed at event ends,
    # while inside events the book crosses far more often.
    assert dict(projector.book.anomalies) == ({"crossed_book": crossings} if crossings else {})
    assert crossed_inside > crossings

    # The final book, order by order, in queue order.
    final = [(o.order_id, o.side, units(o.price), o.size) for o in projector.book.iter_orders()]
    assert final == book.queue_order()
    assert len(final) == 11_217


@pytest.mark.parametrize(
    "path", [ESH4_DAY_BEFORE, ESM4_CLEAR, *TINY], ids=lambda p: p.name.split("__")[1].split(".mbo")[0]
)
def test_the_other_files_decode_and_project_cleanly(path: Path) -> None:
    items, _, projector, l1 = pipeline(path)
    metadata, records = decoded(path)
    assert not [i for i in items if isinstance(i, MboReject)]
    assert len(items) == len(records)
    book, changes, crossings, _ = naive_run(records)
    assert dict(projector.book.anomalies) == ({"crossed_book": crossings} if crossings else {})
    assert not book.odd["modify_unknown"] and not book.odd["cancel_unknown"]
    final = [(o.order_id, o.side, units(o.price), o.size) for o in projector.book.iter_orders()]
    assert final == book.queue_order()
    assert len(l1) == len(changes)
    # Symbols come from the metadata's mappings; the dataset from the metadata.
    (symbol,) = metadata.symbols
    assert {item.symbol for item in items} == {symbol}
    assert {item.dataset for item in items} == {metadata.dataset}


def test_the_clear_then_snapshot_file_starts_its_book_from_the_snapshot() -> None:
    items, _, _, l1 = pipeline(ESM4_CLEAR)
    assert items[0].action == "R" and items[0].flags & SNAPSHOT
    snapshot = [i for i in items if i.flags & SNAPSHOT]
    assert len(snapshot) == 13_601 and snapshot[-1].flags & LAST
    assert l1[0][0] == stored_rows_of(items)[len(snapshot) - 1].seq  # the first L1 row: the snapshot's end


def stored_rows_of(items: list[Any]) -> list[StoredRow]:
    return [r for r in stored_rows(items) if isinstance(r, StoredRow)]


def test_a_snapshot_replaces_the_book_without_a_clear() -> None:
    """Day 1's book, then day 2's file (a snapshot and no clear): day 2's snapshot alone."""
    _, day1_rows, _, _ = pipeline(ESH4_DAY_BEFORE)
    _, day2_rows, _, _ = pipeline(ESH4_DAY)
    projector = Projector()
    rules = DatabentoRules()
    projector.apply(rules.events(day1_rows), None)
    assert len(projector.book) == 8_725
    snapshot_end = next(i for i, r in enumerate(day2_rows) if not r.flags & SNAPSHOT)
    projector.apply(rules.events(day2_rows[:snapshot_end]), None)
    alone = Projector()
    alone.apply(rules.events(day2_rows[:snapshot_end]), None)
    assert list(projector.book.iter_orders()) == list(alone.book.iter_orders())
    assert len(alone.book) == snapshot_end == 8_725
    # Day 1 is one snapshot whose last record ends the event: day 2's snapshot is a new run,
    # not more of day 1's (whose orders it would add again).
    assert day1_rows[-1].flags & SNAPSHOT and day1_rows[-1].flags & LAST
    assert not projector.book.anomalies


def test_projector_state_keeps_the_snapshot_run_and_the_maybe_bad_mark() -> None:
    """A projector restored from its saved state mid-snapshot goes on as one never stopped."""
    _, day2_rows, _, _ = pipeline(ESH4_DAY)
    rules = DatabentoRules()
    events = rules.events(day2_rows[:9_000])
    whole = Projector()
    whole.apply(events, None)
    first = Projector()
    first.apply(events[:4_000], None)  # inside the snapshot run
    state = decode(encode(first.state()), FORMAT_VERSION)
    assert state.in_snapshot and not state.maybe_bad
    restored = Projector()
    restored.restore(state)
    restored.apply(events[4_000:], None)  # the run goes on: the book is not cleared again
    assert list(restored.book.iter_orders()) == list(whole.book.iter_orders())
    assert restored.book.anomalies == whole.book.anomalies
    assert "add_existing_order" not in whole.book.anomalies
    # The venue's warning outlives a restart too.
    restored.apply([mark(events[-1][1] + 1, flags=LAST | MAYBE_BAD_BOOK)], None)
    assert restored.maybe_bad
    assert decode(encode(restored.state()), FORMAT_VERSION).maybe_bad


# -- raw bytes -----------------------------------------------------------------------------


def plain_dbn(path: Path) -> bytes:
    if shutil.which("zstd") is None:
        pytest.skip("the zstd program is not installed")
    return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout


def cut_records(plain: bytes) -> tuple[bytes, list[bytes]]:
    """The DBN metadata and each record, cut by hand: 'DBN', a version byte, the metadata's
    length (u32 LE), the metadata; then records, each as long as 4 x its first byte."""
    assert plain[:3] == b"DBN"
    end = 8 + int.from_bytes(plain[4:8], "little")
    out, offset = [], end
    while offset < len(plain):
        length = plain[offset] * 4
        out.append(plain[offset : offset + length])
        offset += length
    assert offset == len(plain)
    return plain[:end], out


def test_raw_bytes_are_each_record_exactly(esh4: Any, tmp_path: Path) -> None:
    items, rows, _, _ = esh4
    header, expected = cut_records(plain_dbn(ESH4_DAY))
    assert [item.raw for item in items] == expected
    assert [bytes.fromhex(row.raw) for row in rows] == expected
    # The plain file reads the same as the compressed one.
    plain_path = tmp_path / "esh4.mbo.dbn"
    plain_path.write_bytes(header + b"".join(expected))
    assert list(MboReader(plain_path)) == items
    # Re-encoded from the raw bytes alone, the records decode to the same fields.
    again = dbn.DBNDecoder(has_metadata=False, input_version=1).write_and_decode(b"".join(i.raw for i in items))
    assert [(r.order_id, r.price, r.size, r.flags, r.ts_recv, r.ts_event, r.sequence) for r in again] == [
        (int(i.order_id), i.price_units, i.size, i.flags, i.ts_recv, i.ts_event, i.sequence) for i in items
    ]


@pytest.mark.parametrize("path", TINY, ids=lambda p: p.name.split("__")[1])
def test_raw_bytes_of_the_dbn_v3_samples(path: Path) -> None:
    _, expected = cut_records(plain_dbn(path))
    assert [item.raw for item in MboReader(path)] == expected


def test_fields_and_exact_prices(esh4: Any, esh4_decoded: Any) -> None:
    items, rows, _, _ = esh4
    _, records = esh4_decoded
    for item, r, row in zip(items, records, rows, strict=True):
        assert (item.action, item.side, item.price_units, item.size, item.order_id, item.flags) == (
            r.action.value,
            r.side.value,
            r.price,
            r.size,
            str(r.order_id),
            int(r.flags),
        )
        assert (item.ts_recv, item.ts_event, item.sequence, item.channel_id, item.instrument_id) == (
            r.ts_recv,
            r.ts_event,
            r.sequence,
            r.channel_id,
            r.instrument_id,
        )
        assert row == stored_row(item, row.seq)
    assert price_of(4_799_250_000_000) == Decimal("4799.25") and str(price_of(4_799_250_000_000)) == "4799.25"
    assert price_of(4_799_000_000_000) == 4799 and type(price_of(4_799_000_000_000)) is int
    assert price_of(1) == Decimal("1E-9") and price_of(-1) == Decimal("-0.000000001")
    assert price_of(2**63 - 2) == Decimal("9223372036.854775806")  # beyond float's 53 bits, exact
    assert {type(i.price) for i in items} == {int, Decimal}
    assert items[0].symbol == "ESH4" and items[0].dataset == "GLBX.MDP3"


# -- the event key -------------------------------------------------------------------------


def test_seq_is_unique_increasing_and_stable(esh4: Any) -> None:
    _, rows, _, _ = esh4
    seqs = [row.seq for row in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # increasing in file order, unique
    assert seqs == [row.seq for row in stored_rows(MboReader(ESH4_DAY))]  # stable across decodes
    assert all(0 < s < 2**63 for s in seqs)
    # The key is the record's ts_recv in nanoseconds, except for a record that shares its
    # ts_recv with the one before (the records of one exchange event, the snapshot's 8,725
    # records of one instant) or whose ts_recv the one before's key reached: the next number.
    assert rows[0].seq == rows[0].ts_recv
    moved = 0
    for before, row in itertools.pairwise(rows):
        if row.seq != row.ts_recv:
            assert row.ts_recv <= before.seq and row.seq == before.seq + 1
            moved += 1
    assert rows[8_724].seq == rows[0].seq + 8_724 and all(r.flags & SNAPSHOT for r in rows[:8_725])
    assert 8_724 <= moved < len(rows) // 2


def test_seq_day_before_then_day_do_not_meet() -> None:
    day1 = [r.seq for r in stored_rows(MboReader(ESH4_DAY_BEFORE))]
    day2 = [r.seq for r in stored_rows(MboReader(ESH4_DAY))]
    assert max(day1) < min(day2)
    both = Sequencer()  # one sequencer over both files in a row gives the same seqs
    assert [r.seq for r in stored_rows([*MboReader(ESH4_DAY_BEFORE), *MboReader(ESH4_DAY)], both)] == day1 + day2


def test_seq_is_per_stream_and_takes_the_next_key_when_time_goes_back() -> None:
    s = Sequencer()
    t = 1_703_462_400_000_000_000
    assert [s("a", t), s("b", t), s("a", t), s("a", t - 10_000), s("a", t + 5), s("a", t + 1000)] == [
        t,
        t,
        t + 1,
        t + 2,
        t + 5,
        t + 1000,
    ]
    with pytest.raises(ValueError, match="2262"):
        s("c", 2**64 - 1)  # UNDEF_TIMESTAMP


# -- malformed input -----------------------------------------------------------------------


def mbo(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "publisher_id": 1,
        "instrument_id": 17077,
        "ts_event": 1_703_462_400_000_000_000,
        "order_id": 1,
        "price": 4_799_000_000_000,
        "size": 1,
        "action": dbn.Action.ADD,
        "side": dbn.Side.BID,
        "ts_recv": 1_703_462_400_000_000_000,
        "flags": F_LAST,
    }
    base.update(fields)
    return bytes(dbn.MBOMsg(**base))


def metadata(schema: Any = dbn.Schema.MBO) -> bytes:
    return bytes(
        dbn.Metadata(
            dataset="GLBX.MDP3",
            start=1_703_462_400_000_000_000,
            stype_in=dbn.SType.RAW_SYMBOL,
            stype_out=dbn.SType.INSTRUMENT_ID,
            schema=schema,
            symbols=["ESH4"],
            mappings=[
                SimpleNamespace(
                    raw_symbol="ESH4",
                    intervals=[SimpleNamespace(start_date=_day(0), end_date=_day(1), symbol="17077")],
                )
            ],
            ts_out=False,
        ).encode()
    )


def _day(offset: int) -> datetime.date:
    return datetime.date(2023, 12, 25) + datetime.timedelta(days=offset)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_synthetic_file_decodes(tmp_path: Path) -> None:
    path = write(tmp_path, "ok.dbn", metadata() + mbo() + mbo(order_id=2, side=dbn.Side.ASK, price=4_799_250_000_000))
    items = list(MboReader(path))
    assert [(i.record_no, i.symbol, i.side, i.price, i.order_id) for i in items] == [
        (1, "ESH4", "B", 4799, "1"),
        (2, "ESH4", "A", Decimal("4799.25"), "2"),
    ]


def test_a_truncated_file_names_the_record(tmp_path: Path) -> None:
    data = metadata() + mbo() + mbo(order_id=2) + mbo(order_id=3)
    path = write(tmp_path, "cut.dbn", data[:-10])
    with pytest.raises(DbnError, match=r"cut\.dbn: record 3: truncated: the input ends inside this record") as err:
        list(MboReader(path))
    assert err.value.record_no == 3 and isinstance(err.value, InputError)
    with pytest.raises(DbnError, match=r"cut\.dbn: truncated: the input ends inside the DBN metadata"):
        list(MboReader(write(tmp_path, "cut.dbn", data[:40])))


def test_a_truncated_zstd_file_is_an_error_after_its_last_whole_record(tmp_path: Path) -> None:
    data = ESH4_DAY.read_bytes()
    for cut in (len(data) // 2, len(data) - 3, 100):
        path = write(tmp_path, "esh4-cut.mbo.dbn.zst", data[:cut])
        read: list[Any] = []
        with pytest.raises(DbnError, match=r"esh4-cut\.mbo\.dbn\.zst: .*truncated") as err:
            read.extend(MboReader(path))
        assert str(len(read)) in str(err.value)


def test_corrupt_zstd_data_is_an_error(tmp_path: Path) -> None:
    data = bytearray(ESH4_DAY.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path = write(tmp_path, "esh4-bad.mbo.dbn.zst", bytes(data))
    with pytest.raises(DbnError, match=r"esh4-bad\.mbo\.dbn\.zst: corrupt zstd data after record \d+"):
        list(MboReader(path))
    garbage = write(tmp_path, "tail.mbo.dbn.zst", ESH4_DAY.read_bytes() + b"not zstd at all")
    with pytest.raises(DbnError, match=r"tail\.mbo\.dbn\.zst: corrupt zstd data after record \d+: no zstd frame"):
        list(MboReader(garbage))


def test_another_schema_is_an_error(tmp_path: Path) -> None:
    trade = dbn.MBP1Msg(
        publisher_id=1,
        instrument_id=17077,
        ts_event=1,
        price=4_799_000_000_000,
        size=1,
        action=dbn.Action.TRADE,
        side=dbn.Side.BID,
        depth=0,
        ts_recv=2,
    )
    path = write(tmp_path, "esh4.mbp-1.dbn", metadata(dbn.Schema.MBP_1) + bytes(trade))
    with pytest.raises(DbnError, match=r"esh4\.mbp-1\.dbn: the file holds schema mbp-1, not MBO"):
        list(MboReader(path))


def test_not_dbn_at_all(tmp_path: Path) -> None:
    with pytest.raises(DbnError, match=r"empty\.dbn: empty input"):
        list(MboReader(write(tmp_path, "empty.dbn", b"")))
    with pytest.raises(DbnError, match=r"x\.csv: not a DBN file \(starts with bytes 73 65 71"):
        list(MboReader(write(tmp_path, "x.csv", b"seq_num,add_order_id\n1,2\n")))
    with pytest.raises(DbnError, match=r"missing\.dbn: cannot open"):
        list(MboReader(tmp_path / "missing.dbn"))


def test_a_malformed_record_is_named(tmp_path: Path) -> None:
    bad = bytearray(mbo(order_id=2))
    bad[0] = 2  # a length of 8 bytes: shorter than a record header
    path = write(tmp_path, "len.dbn", metadata() + mbo() + bytes(bad) + mbo(order_id=3))
    with pytest.raises(DbnError, match=r"len\.dbn: record 2: malformed record"):
        list(MboReader(path))
    wrong = bytearray(mbo(order_id=2))
    wrong[1] = 0x01  # says MBP-1 (80 bytes) in 56: the decoder panics on it
    path = write(tmp_path, "rtype.dbn", metadata() + mbo() + mbo(order_id=5) + bytes(wrong))
    with pytest.raises(DbnError, match=r"rtype\.dbn: record 3: malformed record"):
        list(MboReader(path))


def test_unknown_action_or_side_is_a_reject_with_its_record_number(tmp_path: Path) -> None:
    x_action = bytearray(mbo(order_id=2))
    x_action[38] = ord("X")
    q_side = bytearray(mbo(order_id=3))
    q_side[39] = ord("Q")
    no_side = mbo(order_id=4, side=dbn.Side.NONE)
    path = write(tmp_path, "odd.dbn", metadata() + mbo() + bytes(x_action) + bytes(q_side) + no_side + mbo(order_id=5))
    items = list(MboReader(path))
    assert [type(i).__name__ for i in items] == ["MboRecord", "MboReject", "MboReject", "MboReject", "MboRecord"]
    assert [(i.record_no, i.reason) for i in items if isinstance(i, MboReject)] == [
        (2, "unknown action 'X' (known: A C M R T F N)"),
        (3, "unknown side 'Q' (known: B A N)"),
        (4, "an add without a side"),
    ]
    assert items[1].raw == bytes(x_action) and items[1].symbol == "ESH4"
    # Rejects pass through stored_rows in their place; the records around them are stored.
    rows = list(stored_rows(items))
    assert [type(r).__name__ for r in rows] == ["StoredRow", "MboReject", "MboReject", "MboReject", "StoredRow"]
    with pytest.raises(DbnError, match=r"odd\.dbn: record 2: unknown action 'X'"):
        list(MboReader(path, strict=True))


def test_top_of_book_records_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "tob.dbn", metadata() + mbo() + mbo(order_id=2, flags=F_LAST | (1 << 6)))
    with pytest.raises(DbnError, match=r"tob\.dbn: record 2: flag F_TOB"):
        list(MboReader(path))


def test_a_binary_stream_reads_like_the_file(esh4: Any) -> None:
    items = esh4[0]
    stream = io.BytesIO(ESH4_DAY.read_bytes())
    assert list(MboReader(stream, name="stdin", chunk_size=1000)) == items
    with pytest.raises(DbnError, match="stdin: "):
        list(MboReader(io.BytesIO(ESH4_DAY.read_bytes()[:5000]), name="stdin"))


# -- the rules -----------------------------------------------------------------------------


def test_each_action_becomes_its_event() -> None:
    ts = "2023-12-25 00:00:00+00"
    rows = [
        (1, "add", "7", "B", Decimal("4799.25"), 3, ts, 0, 11),
        (2, "cancel", "7", "B", Decimal("4799.25"), 1, ts, 0, 12),
        (3, "modify", "7", "B", 4800, 2, ts, 0, 13),
        (4, "fill", "7", "B", 4800, 1, ts, 0, 14),
        (5, "trade", None, "S", 4800, 1, ts, 130, 15),
        (6, "none", None, None, None, 0, ts, 128 | 4, 16),
        (7, "clear", None, None, None, 0, ts, 128 | 32 | 8, 17),
    ]
    assert DatabentoRules().events(rows) == [
        ("add", 1, ts, 0, 11, "7", "B", Decimal("4799.25"), 3),
        ("reduce", 2, ts, 0, 12, "7", "B", 1),
        ("modify", 3, ts, 0, 13, "7", "B", 4800, 2, None, False, False),
        ("trade", 4, ts, 0, 14, 4800, 1, "S", "7", None),
        ("trade", 5, ts, 130, 15, 4800, 1, "S", None, None),
        ("mark", 6, ts, 132, 16),
        ("clear", 7, ts, 168, 17),
    ]
    # Rows read back from the event log carry price and size as text: the same events.
    as_text = [(*r[:4], None if r[4] is None else str(r[4]), str(r[5]), *r[6:]) for r in rows]
    assert DatabentoRules().events(as_text) == DatabentoRules().events(rows)
    assert venue("databento").rules().events(rows[:1]) == DatabentoRules().events(rows[:1])
    with pytest.raises(Exception, match="seq 8: Databento MBO has no event kind 'replace'"):
        DatabentoRules().events([(8, "replace", "7", "B", 1, 1, ts, 0, 0)])


def test_stored_rows_read_back_as_text_give_the_same_events(esh4: Any) -> None:
    _, rows, _, _ = esh4
    as_text = [(*r[:4], None if r.price is None else str(r.price), str(r.size), *r[6:]) for r in rows]
    assert DatabentoRules().events(as_text) == DatabentoRules().events(rows)


def test_partial_cancel_keeps_the_place_and_fill_changes_nothing() -> None:
    rows = [
        (1, "add", "1", "B", 100, 5, None, 128, None),
        (2, "add", "2", "B", 100, 5, None, 128, None),
        (3, "trade", None, "S", 100, 2, None, 0, None),
        (4, "fill", "1", "B", 100, 2, None, 0, None),
        (5, "cancel", "1", "B", 100, 2, None, 128, None),  # the fill's size, taken off once
        (6, "modify", "2", "B", 100, 4, None, 128, None),  # smaller at the same price: keeps its place
        (7, "modify", "1", "B", 100, 6, None, 128, None),  # grows: to the back
    ]
    projector = Projector()
    out: list[Any] = []
    events = DatabentoRules().events(rows)
    projector.apply(events[:5], None)
    assert [(o.order_id, o.size) for o in projector.book.iter_orders()] == [("1", 3), ("2", 5)]
    projector.apply(events[5:6], None)
    assert [(o.order_id, o.size) for o in projector.book.iter_orders()] == [("1", 3), ("2", 4)]
    projector.apply(events[6:], out)
    assert [(o.order_id, o.size) for o in projector.book.iter_orders()] == [("2", 4), ("1", 6)]


# -- speed (printed, not asserted) ---------------------------------------------------------


class PlainBook:
    """A plain in-memory book for comparison: orders in a dict, each side a sorted map of
    price -> total size, the BBO looked at after each event end."""

    def __init__(self) -> None:
        self.orders: dict[int, list[Any]] = {}
        self.sides = {"B": SortedDict(), "A": SortedDict()}
        self.bbo: tuple[Any, ...] | None = None
        self.changes = 0

    def run(self, records: Iterator[Any]) -> None:
        orders, sides = self.orders, self.sides
        bids, asks = sides["B"], sides["A"]
        for r in records:
            action = r.action
            if action == "A":
                levels = sides[r.side]
                orders[r.order_id] = [levels, r.price, r.size]
                levels[r.price] = levels.get(r.price, 0) + r.size
            elif action == "C" or action == "M":
                order = orders.get(r.order_id)
                if order is not None:
                    levels, price, size = order
                    taken = min(r.size, size) if action == "C" else size
                    total = levels[price] - taken
                    if total:
                        levels[price] = total
                    else:
                        del levels[price]
                    if action == "M" and r.size:
                        order[1], order[2] = r.price, r.size
                        levels[r.price] = levels.get(r.price, 0) + r.size
                    elif action == "C" and size > taken:
                        order[2] = size - taken
                    else:
                        del orders[r.order_id]
            elif action == "R":
                orders.clear()
                bids.clear()
                asks.clear()
            if r.flags & F_LAST and bids and asks:
                bbo = (*bids.peekitem(-1), *asks.peekitem(0))
                if bbo != self.bbo:
                    self.bbo = bbo
                    self.changes += 1


def test_speed_report(capsys: pytest.CaptureFixture[str]) -> None:
    data = ESH4_DAY.read_bytes()
    best: dict[str, float] = {}
    for _ in range(3):
        started = time.perf_counter()
        items = list(MboReader(io.BytesIO(data)))
        decoded_at = time.perf_counter()
        rows = list(stored_rows(items))
        stored_at = time.perf_counter()
        events = DatabentoRules().events(rows)
        ruled_at = time.perf_counter()
        out: list[Any] = []
        Projector().apply(events, out)
        done = time.perf_counter()
        for name, seconds in (
            ("decode (MboReader)", decoded_at - started),
            ("stored rows (seq, ts, hex)", stored_at - decoded_at),
            ("rules", ruled_at - stored_at),
            ("projector", done - ruled_at),
            ("all of ledger's", done - started),
        ):
            best[name] = min(best.get(name, seconds), seconds)
        started = time.perf_counter()
        decoder = dbn.DBNDecoder(compression=dbn.Compression.ZSTD)
        plain = PlainBook()
        plain.run(iter(decoder.write_and_decode(data)[1:]))
        best["plain book from the decoder"] = min(
            best.get("plain book from the decoder", 1e9), time.perf_counter() - started
        )
        assert plain.changes == len(out)  # the same L1 changes, as a sanity check of the comparison
    with capsys.disabled():
        print(f"\nDatabento ESH4 day, {len(items):,} records, in memory (best of 3):")
        for name, seconds in best.items():
            print(f"  {name:32} {seconds:6.3f} s  {len(items) / seconds:>10,.0f} records/s")
