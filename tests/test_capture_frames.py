"""Hostile websocket frames: every one is kept (as an event or a reject with its reason),
none stops the capture, and the good frames around them are stored as usual."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from ledger.domain.sequencing import GapTracker
from ledger.venues.coinbase.capture import ApiCredentials, Capture, CoinbaseOptions
from ledger.venues.coinbase.codec import JSON_LIBRARY
from ledger.venues.coinbase.sync import ProductSync

REAL = Path(__file__).parent / "data" / "coinbase" / "full_channel_2017-06-25_excerpt.jsonl"
GOOD = [line for line in REAL.read_text(encoding="utf-8").splitlines() if line.strip()]
FIRST = min(json.loads(line)["sequence"] for line in GOOD if "sequence" in json.loads(line))


def _capture(engine: Engine) -> Capture:
    cap = Capture(engine, CoinbaseOptions(products=("BTC-USD", "ETH-USD")), ApiCredentials("k", "c2VjcmV0", "p"))
    for i, product in enumerate(("BTC-USD", "ETH-USD")):
        cap._stream_ids[product] = i + 1
        cap._syncs[product] = ProductSync(product, GapTracker(1, FIRST - 1))  # a live stream
    cap._subscribed = True
    return cap


HOSTILE = [
    ("", "not valid JSON"),
    ("{", "not valid JSON"),
    ("[1, 2", "not valid JSON"),
    ("null", "expected a JSON object"),
    ('"open"', "expected a JSON object"),
    ("[" * 100_000 + "]" * 100_000, ""),  # deep nesting
    # orjson refuses a number beyond a double as JSON; the standard library reads it as inf,
    # which the sequence check refuses
    (
        '{"type": "open", "product_id": "BTC-USD", "sequence": 1e400}',
        "infinity" if JSON_LIBRARY == "orjson" else "sequence",
    ),
    ('{"type": "open", "product_id": "BTC-USD", "sequence": 99999999999999999999999}', "sequence"),
    ('{"type": "open", "product_id": "BTC-USD", "sequence": 5, "price": "NaN"}', ""),
    ('{"type": "match", "product_id": "BTC-USD", "sequence": "7"}', "sequence"),
    ('{"type": "open", "product_id": "BTC-USD\\u0000", "sequence": 8}', ""),
    ('{"type": ["open"], "product_id": "BTC-USD"}', "type"),
    ('{"type": "heartbeat", "product_id": ["BTC-USD"], "sequence": 9}', None),  # ignored, not an event
    (
        '{"type": "open", "product_id": "DOGE-USD", "sequence": 3419023016, "side": "sell", "price": "1.0",'
        ' "order_id": "x", "remaining_size": "1.0", "time": "2017-06-25T11:23:14.792000Z"}',
        "not subscribed",
    ),
    ("\udcff", ""),  # a lone surrogate, as a lenient decoder of bad bytes gives
]


@pytest.mark.parametrize(("frame", "reason"), HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_frame_is_a_reject_and_the_capture_goes_on(engine: Engine, frame: str, reason: str | None) -> None:
    cap = _capture(engine)
    first, rest = GOOD[0], GOOD[1:]
    cap._frame(first, 0.0)
    cap._frame(frame, 0.1)
    for line in rest:
        cap._frame(line, 0.2)
    rejects = [r for product in cap._rejects.values() for r in product]
    if reason is None:
        assert rejects == []
    else:
        assert len(rejects) == 1, rejects
        assert reason in rejects[0].reason and rejects[0].line_no == 2
        assert "\x00" not in rejects[0].raw
    stored = sum(len(sync.take_ready()[0]) for sync in cap._syncs.values())
    events = [json.loads(line) for line in GOOD]
    assert stored == len({m["sequence"] for m in events if "sequence" in m and m.get("type") != "heartbeat"})
