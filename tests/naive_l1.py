"""An independent expectation of the L1 output of an L3 CSV file, for the crash tests and
the soak benchmark: a naive model written apart from the projector, sharing no code with
``ledger`` (lines split at commas, ``Decimal`` numbers, plain dicts).

Why not the two models tests/ already has: ``NaiveBook`` in test_book.py takes ledger's own
event classes and scans every order for every answer (minutes for 150,000 events), and
``_replay`` in test_generate_l3.py checks the generator's data and raises on the
operations real data holds (unknown orders, re-used ids). Neither yields L1 rows.

The rules (the L3 CSV format, README "Book semantics"):

* rows apply in seq order; a seq seen again keeps its first row; a row that cannot be read
  (an unreadable seq, a wrong column count, a missing or unknown kind) is skipped;
* orders are keyed by (side, order id); ADD inserts (replacing an order with the same key);
  UPDATE sets the absolute price and qty of a resting order; DELETE removes it; TRADE
  subtracts its qty and removes the order at zero or below; an UPDATE to zero or below
  removes it as well; operations on an order that is not resting do nothing;
* after each event, when both sides hold orders, the best bid (max price) and best ask
  (min price) with the total qty at each form the top; a row is emitted when any of the
  four differs from the last row emitted.

Output rows are formatted like ``ledger export l1`` (README): ``time,bid_price,ask_price,
bid_size,ask_size,seq_num``, time with six fractional digits, numbers in shortest form.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

__all__ = ["assert_same_l1", "export_lines", "naive_l1", "naive_l1_of_file"]

_KINDS = {1: "add", 5: "update", 9: "delete", 11: "trade"}  # first column of each group


def _rows_by_seq(lines: Iterable[str]) -> list[tuple[int, list[str]]]:
    by_seq: dict[int, list[str]] = {}
    for line in lines:
        cells = line.rstrip("\r\n").split(",")
        if len(cells) != 16:
            continue
        try:
            seq = int(cells[0])
        except ValueError:
            continue
        by_seq.setdefault(seq, cells)
    return sorted(by_seq.items())


def _time(cell: str) -> str:
    """``2021-08-02 22:11:21.94404 UTC`` -> ``2021-08-02 22:11:21.944040 UTC``."""
    stamp = cell.removesuffix(" UTC")
    whole, _, fraction = stamp.partition(".")
    return f"{whole}.{fraction.ljust(6, '0')} UTC"


def _number(value: Decimal) -> str:
    """The shortest exact form: ``230.20`` -> ``230.2``, ``300`` stays ``300``."""
    return format(value.normalize(), "f")


def naive_l1(lines: Iterable[str]) -> list[str]:
    """The L1 rows (as CSV lines, no header) of the L3 CSV ``lines`` (no header)."""
    orders: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}
    totals: dict[str, dict[Decimal, Decimal]] = {"BUY": {}, "SELL": {}}

    def take(key: tuple[str, str]) -> None:
        price, qty = orders.pop(key)
        level = totals[key[0]]
        level[price] -= qty
        if level[price] == 0:
            del level[price]

    def put(key: tuple[str, str], price: Decimal, qty: Decimal) -> None:
        orders[key] = (price, qty)
        level = totals[key[0]]
        level[price] = level.get(price, Decimal(0)) + qty

    out: list[str] = []
    last: tuple[Decimal, Decimal, Decimal, Decimal] | None = None
    for seq, cells in _rows_by_seq(lines):
        kinds = [(first, kind) for first, kind in _KINDS.items() if cells[first]]
        if len(kinds) != 1:
            continue
        first, kind = kinds[0]
        key = (cells[first + 1], cells[first])
        if key[0] not in totals:
            continue
        if kind == "add":
            if key in orders:
                take(key)
            put(key, Decimal(cells[first + 2]), Decimal(cells[first + 3]))
        elif key not in orders:
            pass
        elif kind == "update":
            take(key)
            qty = Decimal(cells[first + 3])
            if qty > 0:
                put(key, Decimal(cells[first + 2]), qty)
        elif kind == "delete":
            take(key)
        else:  # trade
            price, qty = orders[key]
            take(key)
            left = qty - Decimal(cells[first + 3])
            if left > 0:
                put(key, price, left)
        bids, asks = totals["BUY"], totals["SELL"]
        if not bids or not asks:
            continue
        bid, ask = max(bids), min(asks)
        top = (bid, ask, bids[bid], asks[ask])
        if top != last:
            last = top
            out.append(f"{_time(cells[15])},{','.join(_number(v) for v in top)},{seq}")
    return out


def naive_l1_of_file(path: Path) -> list[str]:
    """:func:`naive_l1` of an L3 CSV file (UTF-8, maybe with a BOM, a header line first)."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        next(f)
        return naive_l1(f)


def export_lines(data: bytes) -> list[str]:
    """The rows of an L1 CSV (``ledger export l1``, or the reference file), header dropped."""
    text = data.decode("utf-8")
    assert text.startswith("\ufefftime,bid_price,ask_price,bid_size,ask_size,seq_num\n"), text[:80]
    return text.splitlines()[1:]


def assert_same_l1(got: list[str], expected: list[str]) -> None:
    """Equal row for row; else name the first row that differs."""
    for i, (a, b) in enumerate(zip(got, expected, strict=False)):
        assert a == b, f"L1 row {i + 1} differs: got {a!r}, expected {b!r}"
    assert len(got) == len(expected), f"{len(got)} L1 rows, expected {len(expected)}"
