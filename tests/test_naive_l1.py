"""The naive L1 model of tests/naive_l1.py, which the crash tests and the soak benchmark
compare ledger's L1 with: it must itself agree with the independent reference file, and
the comparison must catch a changed, missing or extra row (no database)."""

from __future__ import annotations

import pytest

from tests.conftest import V31, V31_EXPECTED
from tests.naive_l1 import assert_same_l1, export_lines, naive_l1, naive_l1_of_file

T = "2021-08-03 01:00:01.5 UTC"


def test_the_model_gives_the_reference_l1_of_the_real_sample() -> None:
    assert_same_l1(naive_l1_of_file(V31), export_lines(V31_EXPECTED.read_bytes()))


def test_the_comparison_catches_a_changed_missing_or_extra_row() -> None:
    expected = export_lines(V31_EXPECTED.read_bytes())
    changed = list(expected)
    changed[5000] = changed[5000].replace(",", ";", 1)
    for wrong in (changed, expected[:-1], [*expected, expected[-1]], expected[:100] + expected[101:]):
        with pytest.raises(AssertionError):
            assert_same_l1(wrong, expected)


def _add(seq: int, oid: str, side: str, price: str, qty: str) -> str:
    return f"{seq},{oid},{side},{price},{qty},,,,,,,,,,,{T}"


def test_rules_in_seq_order_with_unknown_orders_ignored() -> None:
    lines = [
        _add(2, "a", "BUY", "10.50", "5"),  # out of file order: applied after seq 1
        _add(1, "b", "SELL", "11", "3"),
        f"3,,,,,a,BUY,10.6,7,,,,,,,{T}",  # update: absolute price and qty
        f"4,,,,,,,,,,,b,SELL,11,3,{T}",  # trade of the whole order: gone, one side empty
        _add(5, "c", "SELL", "12", "1"),
        f"6,,,,,,,,,x,SELL,,,,,{T}",  # delete of an unknown order: nothing
        _add(6, "d", "SELL", "1", "1"),  # a repeated seq: the first row stands
        "1.62794E+18,e,BUY,1,1,,,,,,,,,,,2021-08-03 01:00:01 UTC",  # unreadable: skipped
        _add(7, "c", "SELL", "11.5", "2"),  # an add of a resting key replaces the order
    ]
    assert naive_l1(lines) == [
        "2021-08-03 01:00:01.500000 UTC,10.5,11,5,3,2",
        "2021-08-03 01:00:01.500000 UTC,10.6,11,7,3,3",
        "2021-08-03 01:00:01.500000 UTC,10.6,12,7,1,5",
        "2021-08-03 01:00:01.500000 UTC,10.6,11.5,7,2,7",
    ]
