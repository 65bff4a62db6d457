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
from ledger.services.projector import StreamProjector
from ledger.testing import LEVEL3_SCHEMA, MatchingEngine, RandomOrderFlow, fixed_clock

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
    proj = StreamProjector(None)
    out: list[Any] = []
    for messages in flow.steps(400):
        if channel == "full":
            rows = [full_row(m) for m in messages]
        else:
            rows = [level3_row(engine.level3_message(int(m["sequence"]))) for m in messages]
        for row in rows:  # one at a time: compare after every message
            proj.apply([row], out)
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
