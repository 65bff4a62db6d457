"""The projector on Coinbase full-channel and level3 events: after every message of a
local matching engine's random flow, the projected book equals the engine's own book
order by order, and the L1 rows equal the engine's best bid/ask history."""

from __future__ import annotations

import random
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest

from ledger.domain.events import BUY, SELL
from ledger.services.project.rows import StreamProjector
from ledger.testing import LEVEL3_SCHEMA, MatchingEngine, RandomOrderFlow, fixed_clock
from ledger.venues.coinbase.rules import CoinbaseRules

_SIDES = {"buy": BUY, "sell": SELL}


def full_row(m: dict[str, Any]) -> tuple[Any, ...]:
    """An event-log row (seq, kind, order_id, side, price, size, ts) of a full-channel message."""
    kind = m["type"]
    order_id = m.get("maker_order_id") if kind == "match" else m.get("order_id")
    price = m.get("new_price", m.get("price"))
    size = {"open": "remaining_size", "change": "new_size", "done": "remaining_size"}.get(kind, "size")
    return (m["sequence"], kind, order_id, _SIDES.get(m.get("side", "")), price, m.get(size), m["time"])


def level3_row(a: Sequence[Any]) -> tuple[Any, ...]:
    """The same from a compact level3 array, by the field names of the exchange's schema."""
    fields = dict(zip(LEVEL3_SCHEMA[a[0]], a, strict=True))
    kind = fields["type"]
    order_id = fields.get("maker_order_id") if kind == "match" else fields.get("order_id")
    side = _SIDES.get(str(fields.get("side", "")))
    return (fields["sequence"], kind, order_id, side, fields.get("price"), fields.get("size"), fields.get("time"))


def _engine_book(engine: MatchingEngine) -> list[tuple[str, Decimal, Decimal, str]]:
    view = engine.book()
    return [(BUY, e.price, e.size, e.order_id) for e in view.bids] + [
        (SELL, e.price, e.size, e.order_id) for e in view.asks
    ]


def _our_book(proj: StreamProjector) -> list[tuple[str, Decimal, Decimal, str]]:
    return [(o.side, Decimal(o.price), Decimal(o.size), o.order_id) for o in proj.book.iter_orders()]


@pytest.mark.parametrize("channel", ["full", "level3"])
@pytest.mark.parametrize("seed", range(6))
def test_projected_book_and_l1_equal_the_exchange(channel: str, seed: int) -> None:
    engine = MatchingEngine("BTC-USD", seed=seed, clock=fixed_clock())
    flow = RandomOrderFlow(engine, random.Random(seed))
    proj = StreamProjector(None, CoinbaseRules())
    out: list[Any] = []
    for messages in flow.steps(400):
        if channel == "full":
            rows = [full_row(m) for m in messages]
        else:
            rows = [level3_row(engine.level3_message(int(m["sequence"]))) for m in messages]
        for row in rows:  # one at a time: compare after every message
            proj.apply_rows([row], out)
        assert _our_book(proj) == _engine_book(engine)
    expected = []
    for bbo in engine.bbo_history():
        if bbo.bid_price is None or bbo.ask_price is None:
            continue
        top = (bbo.bid_price, bbo.bid_size, bbo.ask_price, bbo.ask_size)
        if not expected or expected[-1][1:] != top:
            expected.append((bbo.sequence, *top))
    assert [(seq, bid, bs, ask, asz) for seq, _ts, bid, bs, ask, asz in out] == expected
    assert not proj.book.anomalies, proj.book.anomalies


def test_an_order_matched_to_zero_rests_until_done_and_a_change_refreshes_it() -> None:
    """Coinbase removes an order only with its done: an iceberg matched down to 0 and then
    refreshed by a change (old_size 0, new_size 4) is still there, at the back of its level."""
    proj = StreamProjector(None, CoinbaseRules())
    out: list[Any] = []
    rows = [
        (1, "open", "bid", BUY, "99.00", "1.0", None),
        (2, "open", "ice", SELL, "101.00", "2.0", None),
        (3, "open", "other", SELL, "101.00", "3.0", None),
        (4, "match", "ice", SELL, "101.00", "2.0", None),  # ice at 0: level 101 now 3.0
        (5, "match", "other", SELL, "101.00", "3.0", None),  # the level's total is 0: no ask
        (6, "change", "ice", SELL, None, "4.0", None),  # the refresh
        (7, "done", "other", SELL, "101.00", "0", None),
        (8, "done", "ice", SELL, "101.00", "0", None),
    ]
    proj.apply_rows(rows[:4], out)
    assert [(o.order_id, o.size) for o in proj.book.iter_orders()] == [
        ("bid", Decimal("1.0")),
        ("ice", Decimal("0.0")),
        ("other", Decimal("3.0")),
    ]
    proj.apply_rows(rows[4:5], out)
    assert proj.book.top() is None and len(proj.book) == 3
    proj.apply_rows(rows[5:6], out)
    assert [o.order_id for o in proj.book.iter_orders()] == ["bid", "other", "ice"]
    proj.apply_rows(rows[6:], out)
    assert [o.order_id for o in proj.book.iter_orders()] == ["bid"]
    # L1: at 3 (ask 2.0), at 4 (ask 3.0), nothing at 5 (no ask), at 6 (ask 4.0); none after.
    assert [(seq, ask, asz) for seq, _ts, _b, _bs, ask, asz in out] == [
        (2, Decimal("101.00"), Decimal("2.0")),
        (3, Decimal("101.00"), Decimal("5.0")),
        (4, Decimal("101.00"), Decimal("3.0")),
        (6, Decimal("101.00"), Decimal("4.0")),
    ]
    assert not proj.book.anomalies


def test_a_rest_book_listing_an_order_at_size_zero_is_a_valid_book() -> None:
    """A REST level-3 book taken between a match and its done lists the order at size 0."""
    import json

    from ledger.venues.coinbase.rest import rest_book as source_book

    raw = json.dumps(
        {
            "sequence": 10,
            "bids": [["99.00", "1.5", "b1"]],
            "asks": [["101.00", "0.00000000", "z"], ["101.00", "2.0", "a1"], ["102.00", "0", "y"]],
        }
    )
    book = source_book(raw, where="test")
    assert [(o.order_id, o.size) for o in book.iter_orders()] == [
        ("b1", Decimal("1.5")),
        ("z", Decimal("0E-8")),
        ("a1", Decimal("2.0")),
        ("y", 0),
    ]
    assert book.top() == (Decimal("99.00"), Decimal("1.5"), Decimal("101.00"), Decimal("2.0"))
    assert [lv.price for lv in book.levels(SELL)] == [Decimal("101.00")]
