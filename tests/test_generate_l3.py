"""Tests of benchmarks/generate_l3.py, the seeded L3 CSV generator (no database)."""

from __future__ import annotations

import collections
import importlib.util
import io
import re
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "generate_l3.py"
REAL_FILE = Path(__file__).parent / "data" / "l3-l1" / "v3.1" / "l3_data_v3.1.csv"  # a copy of the real file
HEADER = (
    "seq_num,add_order_id,add_side,add_price,add_qty,update_order_id,update_side,update_price,"
    "update_qty,delete_order_id,delete_side,trade_order_id,trade_side,trade_price,trade_qty,time"
)
GROUPS = {"add": (1, 5), "update": (5, 9), "delete": (9, 11), "trade": (11, 15)}  # [start, stop)
ID_RE = re.compile(r"[1-9][0-9]{18}")
PRICE_RE = re.compile(r"[1-9][0-9]*(\.[0-9]?[1-9])?")  # shortest form: no trailing zero
QTY_RE = re.compile(r"[1-9][0-9]*")
TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.(\d{0,5}[1-9]) UTC")


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_l3", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("generate_l3", module)
    spec.loader.exec_module(module)
    return module


gen = _load()


def _text(n: int, seed: int = 42, **kwargs: float) -> str:
    out = io.StringIO()
    gen.generate(n, seed, out, **kwargs)
    return out.getvalue()


def _rows(text: str) -> list[list[str]]:
    assert text.startswith("\ufeff" + HEADER + "\n")
    body = text[len("\ufeff" + HEADER + "\n") :]
    return [line.split(",") for line in body.splitlines()]


def _time_key(cell: str) -> str:
    m = TIME_RE.fullmatch(cell)
    assert m, cell
    return cell[: m.start(1)] + m.group(1).ljust(6, "0")


def _kind(row: list[str]) -> str:
    filled = [name for name, (a, b) in GROUPS.items() if any(row[a:b])]
    assert len(filled) == 1, row
    return filled[0]


@pytest.fixture(scope="module")
def clean_20k() -> str:
    return _text(20_000, seed=42)


# --- format ------------------------------------------------------------------------------


def test_header_bom_lf_and_final_newline(clean_20k: str) -> None:
    data = clean_20k.encode("utf-8")
    assert data.startswith(b"\xef\xbb\xbf" + HEADER.encode() + b"\n")
    assert data.endswith(b" UTC\n")
    assert b"\r" not in data
    assert data.count(b"\n") == 20_001


def test_header_matches_the_real_file() -> None:
    if not REAL_FILE.exists():
        pytest.skip("real data not available")
    with REAL_FILE.open("rb") as f:
        real_header = f.readline()
    assert gen.HEADER_LINE.encode("utf-8") == real_header


def test_every_row_has_exactly_one_group_and_valid_cells(clean_20k: str) -> None:
    rows = _rows(clean_20k)
    assert len(rows) == 20_000
    for row in rows:
        assert len(row) == 16, row
        kind = _kind(row)
        a, b = GROUPS[kind]
        assert all(row[a:b]), row  # the whole group is filled
        assert not any(row[1:a]) and not any(row[b:15]), row  # and nothing else
        assert ID_RE.fullmatch(row[0]), row
        assert ID_RE.fullmatch(row[a]), row
        assert row[a].startswith("745"), row  # order ids in the 7.45e18 range
        assert row[a + 1] in ("BUY", "SELL"), row
        if kind != "delete":
            assert PRICE_RE.fullmatch(row[a + 2]), row
            assert QTY_RE.fullmatch(row[a + 3]), row
        assert TIME_RE.fullmatch(row[15]), row


def test_mix_is_about_40_15_35_10(clean_20k: str) -> None:
    # After the first few thousand events, which build the book from empty (more adds).
    counts = collections.Counter(_kind(row) for row in _rows(clean_20k)[8000:])
    share = {k: v / 12_000 for k, v in counts.items()}
    assert share["add"] == pytest.approx(0.40, abs=0.04)
    assert share["update"] == pytest.approx(0.15, abs=0.03)
    assert share["delete"] == pytest.approx(0.35, abs=0.04)
    assert share["trade"] == pytest.approx(0.10, abs=0.03)


def test_seq_contiguous_from_start_and_time_non_decreasing(clean_20k: str) -> None:
    rows = _rows(clean_20k)
    seqs = [int(r[0]) for r in rows]
    assert seqs == list(range(gen.SEQ_START, gen.SEQ_START + 20_000))
    times = [_time_key(r[15]) for r in rows]
    assert times == sorted(times)
    assert times[0].startswith("2021-08-03 01:00:01.")


def test_time_fraction_drops_trailing_zeros() -> None:
    rows = _rows(_text(50_000, seed=3))
    lengths = collections.Counter(len(TIME_RE.fullmatch(r[15]).group(1)) for r in rows)  # type: ignore[union-attr]
    assert lengths[6] > 0 and lengths[5] > 0 and lengths[4] > 0  # like .94404 in the real file


def test_zero_and_small_n() -> None:
    assert _text(0) == "\ufeff" + HEADER + "\n"
    rows = _rows(_text(1))
    assert len(rows) == 1 and _kind(rows[0]) == "add" and rows[0][0] == str(gen.SEQ_START)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        gen.generate(-1, 1, io.StringIO())
    with pytest.raises(ValueError):
        gen.generate(10, 1, io.StringIO(), swap_rate=1.0)
    with pytest.raises(ValueError):
        gen.generate(10, 1, io.StringIO(), gap_rate=-0.1)


# --- determinism -------------------------------------------------------------------------


def test_same_seed_same_output_other_seed_other_output() -> None:
    a = _text(5_000, seed=7, swap_rate=0.05, gap_rate=0.01)
    b = _text(5_000, seed=7, swap_rate=0.05, gap_rate=0.01)
    c = _text(5_000, seed=8, swap_rate=0.05, gap_rate=0.01)
    assert a == b
    assert a != c


def test_prefix_property() -> None:
    """A shorter run is a prefix of a longer one with the same seed (the stream is sequential)."""
    assert _text(30_000, seed=5).startswith(_text(12_345, seed=5))


def test_cli_file_and_stdout_are_byte_identical(tmp_path: Path) -> None:
    target = tmp_path / "l3.csv"
    cmd = [sys.executable, str(SCRIPT), "-n", "3000", "--seed", "11", "--swap-rate", "0.02"]
    subprocess.run([*cmd, "-o", str(target)], check=True)
    stdout = subprocess.run(cmd, check=True, capture_output=True).stdout
    stdout_dash = subprocess.run([*cmd, "-o", "-"], check=True, capture_output=True).stdout
    data = target.read_bytes()
    assert data == stdout == stdout_dash
    assert data == _text(3000, seed=11, swap_rate=0.02).encode("utf-8")


def test_cli_rejects_bad_rate() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "-n", "10", "--swap-rate", "1.5"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "--swap-rate" in proc.stderr


# --- semantics: replay in an independent reference book ----------------------------------


class ImpossibleOperation(AssertionError):
    pass


Book = dict[tuple[str, str], tuple[Decimal, int]]  # (side, order_id) -> (price, remaining qty)


def _replay(rows: list[list[str]]) -> Iterator[Book]:
    """Apply rows in file order to a plain dict book keyed by (side, order_id); raise
    ImpossibleOperation on anything a correct book could not do. Yields the book after each row."""
    book: Book = {}
    for row in rows:
        kind = _kind(row)
        a = GROUPS[kind][0]
        key = (row[a + 1], row[a])
        if kind == "add":
            if key in book:
                raise ImpossibleOperation(f"add of a live order {key} at seq {row[0]}")
            book[key] = (Decimal(row[a + 2]), int(row[a + 3]))
        elif key not in book:
            raise ImpossibleOperation(f"{kind} of unknown order {key} at seq {row[0]}")
        elif kind == "update":
            book[key] = (Decimal(row[a + 2]), int(row[a + 3]))
        elif kind == "delete":
            del book[key]
        else:
            price, remaining = book[key]
            qty = int(row[a + 3])
            if qty > remaining:
                raise ImpossibleOperation(f"trade of {qty} > remaining {remaining} at seq {row[0]}")
            if Decimal(row[a + 2]) != price:
                raise ImpossibleOperation(f"trade at {row[a + 2]} of an order resting at {price}")
            if qty == remaining:
                del book[key]
            else:
                book[key] = (price, remaining - qty)
        yield book


def test_replay_has_no_impossible_operation(clean_20k: str) -> None:
    rows = _rows(clean_20k)
    seqs = [int(r[0]) for r in rows]
    assert seqs == list(range(seqs[0], seqs[0] + len(rows)))  # contiguous

    depths = []
    samples = crossed = 0
    mids: list[Decimal] = []
    reused = 0
    seen: set[tuple[str, str]] = set()
    for i, book in enumerate(_replay(rows)):
        row = rows[i]
        if row[1]:
            key = (row[2], row[1])
            reused += key in seen
            seen.add(key)
        depths.append(len(book))
        if i % 50 == 0:
            bids = [p for (side, _), (p, _) in book.items() if side == "BUY"]
            asks = [p for (side, _), (p, _) in book.items() if side == "SELL"]
            if bids and asks:
                samples += 1
                crossed += max(bids) >= min(asks)
                mids.append((max(bids) + min(asks)) / 2)

    assert reused > 0  # ids are reused after the order is gone
    assert max(depths) <= gen.MAX_ORDERS
    assert 300 <= sum(depths[5000:]) / len(depths[5000:]) <= 3000  # a few hundred to a few thousand
    assert crossed / samples < 0.02  # bids below asks, mostly
    assert max(mids) - min(mids) > Decimal("0.05")  # the price moves
    assert all(Decimal(200) < m < Decimal(260) for m in mids)


def test_replay_detects_impossible_operations() -> None:
    """The reference book itself catches what it is meant to catch."""
    t = "2021-08-03 01:00:01.1 UTC"
    add = ["1", "7450000000000000001", "BUY", "229", "10", *[""] * 10, t]
    trade = ["2", *[""] * 10, "7450000000000000001", "BUY", "229", "11", t]
    delete_unknown = ["2", *[""] * 8, "7450000000000000002", "SELL", *[""] * 4, t]
    with pytest.raises(ImpossibleOperation):
        list(_replay([add, trade]))
    with pytest.raises(ImpossibleOperation):
        list(_replay([add, delete_unknown]))
    with pytest.raises(ImpossibleOperation):
        list(_replay([add, add]))


def test_other_seeds_replay_cleanly() -> None:
    for seed in (0, 1, 2024):
        for _ in _replay(_rows(_text(5_000, seed=seed))):
            pass


# --- messiness ---------------------------------------------------------------------------


def test_swap_keeps_the_multiset_and_only_swaps_neighbours(clean_20k: str) -> None:
    clean = clean_20k.splitlines()
    swapped = _text(20_000, seed=42, swap_rate=0.05).splitlines()
    assert swapped[0] == clean[0]  # header
    assert collections.Counter(swapped) == collections.Counter(clean)
    assert swapped != clean
    # It is the clean order with disjoint adjacent pairs exchanged.
    i = swaps = 0
    while i < len(clean):
        if swapped[i] == clean[i]:
            i += 1
        else:
            assert swapped[i] == clean[i + 1] and swapped[i + 1] == clean[i], i
            swaps += 1
            i += 2
    assert 500 < swaps < 1500  # about 0.05 * 20000 / (1 + 0.05)


def test_swapped_rows_can_put_an_add_before_the_delete_it_follows() -> None:
    """Like the real file: out-of-order neighbours, e.g. an ADD before the DELETE of its id."""
    rows = _rows(_text(20_000, seed=42, swap_rate=0.2))
    with pytest.raises(ImpossibleOperation):
        for _ in _replay(rows):
            pass
    # Sorted back into seq order it is clean again.
    for _ in _replay(sorted(rows, key=lambda r: int(r[0]))):
        pass


def test_gap_drops_rows_and_keeps_the_rest_in_order(clean_20k: str) -> None:
    clean = clean_20k.splitlines()
    gapped = _text(20_000, seed=42, gap_rate=0.01).splitlines()
    assert gapped[0] == clean[0]
    kept = set(gapped)
    assert [line for line in clean if line in kept] == gapped  # a subsequence, in order
    dropped = len(clean) - len(gapped)
    assert 100 < dropped < 320  # about 1% of 20000
    seqs = [int(line.split(",")[0]) for line in gapped[1:]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_events_do_not_depend_on_the_mess_options(clean_20k: str) -> None:
    """Swaps and gaps use their own random stream: the same seq_num means the same row."""
    clean = {line.split(",", 1)[0]: line for line in clean_20k.splitlines()[1:]}
    messy = _text(20_000, seed=42, swap_rate=0.1, gap_rate=0.05).splitlines()[1:]
    assert all(clean[line.split(",", 1)[0]] == line for line in messy)
