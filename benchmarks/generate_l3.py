"""Seeded generator of realistic Level-3 order-book events, in the L3 CSV format of
the real sample (``tests/data/l3-l1/v3.1/l3_data_v3.1.csv``) (see docs/venues/csv.md).

Example::

    python benchmarks/generate_l3.py -n 1000000 --seed 42 -o /tmp/l3_1m.csv
    python benchmarks/generate_l3.py -n 50000 --swap-rate 0.01 --gap-rate 0.001 | head

Output format (byte for byte like the real file):

* UTF-8, a BOM before the header line, LF line endings, a final newline;
* header ``seq_num,add_order_id,add_side,add_price,add_qty,update_order_id,update_side,
  update_price,update_qty,delete_order_id,delete_side,trade_order_id,trade_side,trade_price,
  trade_qty,time``; exactly one of the add / update / delete / trade groups is filled per row,
  the other cells are empty;
* side ``BUY`` or ``SELL``; prices in their shortest decimal form on a 0.01 tick (``229``,
  ``229.1``, ``229.13``); quantities are positive integers;
* seq_num starts at 1627942268920653171 and increases by one per event; order ids are
  19-digit integers near 7.458e18;
* time like ``2021-08-03 01:00:01.107502 UTC``, starting at 2021-08-03 01:00:01.107428;
  trailing zeros of the fraction are dropped as in the real file (``.94404``, ``.1``), and the
  fraction is never all zeros (such a time is moved one microsecond later). Time is
  non-decreasing in seq_num order; about 2% of events share the previous event's time.

Semantics kept (a correct book never sees an impossible operation when no rows are dropped):
orders are keyed by (side, order_id), and ids are reused after the order is gone; ADD inserts
an order that is not on the book; UPDATE sets an existing order's price and qty (absolute
values); DELETE removes an existing order; TRADE subtracts trade_qty (1 <= trade_qty <=
remaining) from an existing resting order, at that order's price, and the order is gone when
it reaches zero (no DELETE follows).

Market model: a hidden fair price random-walks a tick at a time (weakly pulled back to
229.00). New orders rest a few ticks, sometimes hundreds, behind it; sizes are mostly round
lots. A trade takes the oldest order at the best price, preferring the side whose best quote
the fair price has moved through, and such stale quotes are also cancelled first more often,
so the visible book follows the fair price. Adds do not cross the opposite best, except rare
(0.05%) marketable ones, so the book is locked or crossed only rarely and briefly. About
1,400 orders rest on the book (the add/delete split leans towards it; hard cap 5,000), so a
consumer's memory stays flat. The mix is about 40% add, 15% update, 35% delete, 10% trade,
after the first few thousand events, which build the book up from empty with more adds.

Messiness (both off by default; drawn from a separate random stream, so the events
themselves and their seq_nums do not depend on these options):

* ``--gap-rate P`` drops each row with probability P (gaps in seq_num; a consumer may then see
  updates, deletes and trades of unknown orders);
* ``--swap-rate P`` swaps a row with the following one with probability P (after drops), as the
  real file has out-of-order adjacent rows. The multiset of rows does not change, and no row
  moves by more than one place.

API: ``generate(n, seed, out, swap_rate=0.0, gap_rate=0.0)`` writes the header and n events
to the *text* stream ``out`` (the BOM is written as the character U+FEFF, lines end in
``"\\n"``). Open files with ``open(path, "w", encoding="utf-8", newline="\\n")`` to get the same
bytes as the CLI. Same arguments give the same output (random.Random, seeded). It streams:
memory does not grow with n. Standard library only.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import random
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

HEADER = (
    "seq_num,add_order_id,add_side,add_price,add_qty,update_order_id,update_side,update_price,"
    "update_qty,delete_order_id,delete_side,trade_order_id,trade_side,trade_price,trade_qty,time"
)
HEADER_LINE = "\ufeff" + HEADER + "\n"

SEQ_START = 1627942268920653171
ORDER_ID_START = 7457972527797789251
START_TIME = datetime(2021, 8, 3, 1, 0, 1, 107428, tzinfo=UTC)
START_PRICE_TICKS = 22900  # 229.00 on a 0.01 tick

# Event mix at the target depth; the add/delete split leans to pull the depth to TARGET_ORDERS.
P_ADD, P_UPDATE, P_DELETE = 0.40, 0.15, 0.35  # trade: the rest (0.10)
TARGET_ORDERS = 1500
MAX_ORDERS = 5000
P_FAIR_MOVE = 0.06  # per event, the fair price moves one tick
P_REUSE_ID = 0.25  # an add reuses a recently freed id of the same side
P_CROSS = 0.0005  # an add is placed at or through the opposite best (locked/crossed book)
P_CANCEL_STALE = 0.5  # a delete cancels a stale best quote (one the fair price moved through)
P_FULL_FILL = 0.35  # a trade takes the whole remaining quantity
P_FULL_FILL_STALE = 0.7  # ... when it hits a stale quote
P_UPDATE_REDUCE = 0.5  # an update reduces the quantity (else: a new round lot)
FREED_POOL = 256  # recently freed ids kept per side for reuse
TABLE_BITS = 12
TABLE = 1 << TABLE_BITS  # size of the precomputed sampling tables (indexed by getrandbits)
CHUNK_ROWS = 8192  # rows joined per write (checked every 1000 events)
NO_BID = -1  # best bid of an empty bid side
NO_ASK = 1 << 62  # best ask of an empty ask side

_SIDES = ("BUY", "SELL")


def _price_str(ticks: int) -> str:
    """Shortest decimal form of a price given in 0.01 ticks: 22900 -> 229, 22910 -> 229.1."""
    units, cents = divmod(ticks, 100)
    if cents == 0:
        return str(units)
    if cents % 10 == 0:
        return f"{units}.{cents // 10}"
    return f"{units}.{cents:02d}"


def _weighted(rng: random.Random, choices: tuple[tuple[int, int], ...]) -> list[int]:
    """TABLE draws from (value, weight) pairs; a negative value -k means uniform 1..k."""
    total = sum(w for _, w in choices)
    table = []
    for _ in range(TABLE):
        x = rng.random() * total
        chosen = choices[-1][0]
        for value, w in choices:
            if x < w:
                chosen = value
                break
            x -= w
        table.append(chosen if chosen >= 0 else 1 + int(rng.random() * -chosen))
    return table


class _Tables:
    """Lookup tables sampled once from the seeded rng; the event loop indexes them with
    ``getrandbits(TABLE_BITS)``, which is much cheaper than scaling a float."""

    def __init__(self, rng: random.Random) -> None:
        rnd = rng.random

        def exp(mean: float) -> int:
            return int(-math.log(1.0 - rnd()) * mean)

        # Time between events in microseconds: a few events share a timestamp, bursts a few
        # us apart, normal flow and quiet spells. The mean is about 5 ms (1,000,000 events
        # span about 1.5 hours). Kept as (milliseconds, microseconds) to avoid a divmod.
        gaps = []
        for _ in range(TABLE):
            r = rnd()
            if r < 0.02:
                gaps.append(0)
            elif r < 0.40:
                gaps.append(1 + int(rnd() * 60))
            elif r < 0.92:
                gaps.append(exp(2_500.0))
            else:
                gaps.append(exp(45_000.0))
        self.gap_ms = [g // 1000 for g in gaps]
        self.gap_us = [g % 1000 for g in gaps]

        # Distance in ticks of a new order behind the fair price: most near the touch, some
        # far away (like the 218 and 231.42 orders of the real file).
        offsets = []
        for _ in range(TABLE):
            r = rnd()
            if r < 0.45:
                offsets.append(1 + int(rnd() * 3))
            elif r < 0.75:
                offsets.append(4 + int(rnd() * 8))
            elif r < 0.93:
                offsets.append(12 + int(rnd() * 30))
            else:
                offsets.append(42 + int(rnd() * 260))
        self.offsets = offsets

        # Order sizes: round lots dominate, as in the real file (1000 and 300 most of all).
        self.lots = _weighted(
            rng,
            (
                (1000, 38),
                (300, 18),
                (100, 8),
                (500, 6),
                (45, 4),
                (255, 3),
                (200, 4),
                (50, 4),
                (10, 3),
                (5000, 2),
                (2000, 2),
                (-999, 8),
            ),
        )

        # Price change of an update, in ticks: mostly a size-only update.
        deltas = _weighted(rng, ((0, 60), (1, 20), (2, 10), (3, 8), (5, 2)))
        self.deltas = [d if rnd() < 0.5 else -d for d in deltas]

        # Step between consecutive fresh order ids.
        self.id_steps = [1 + exp(40.0) for _ in range(TABLE)]

        # Fair price move per event: 0, or 1 for a one-tick move.
        self.moves = [1 if rnd() < P_FAIR_MOVE else 0 for _ in range(TABLE)]


def _check_rate(name: str, p: float) -> None:
    if not (0.0 <= p < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {p!r}")


def generate(n: int, seed: int, out: TextIO, swap_rate: float = 0.0, gap_rate: float = 0.0) -> None:
    """Write the header and ``n`` events (fewer rows when ``gap_rate`` drops some) to ``out``.

    ``out`` is a text stream; the header starts with the BOM character. ``seed`` fixes
    everything; ``swap_rate`` and ``gap_rate`` use their own random stream, so the events and
    their seq_nums are the same whatever the rates.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    _check_rate("swap_rate", swap_rate)
    _check_rate("gap_rate", gap_rate)

    rng = random.Random(seed)
    tables = _Tables(rng)
    rnd = rng.random
    bits = rng.getrandbits
    gap_ms = tables.gap_ms
    gap_us = tables.gap_us
    offsets = tables.offsets
    lots = tables.lots
    deltas = tables.deltas
    id_steps = tables.id_steps
    moves = tables.moves
    table_bits = TABLE_BITS

    mess_rnd = random.Random(seed + 0x9E3779B97F4A7C15).random
    messy = swap_rate > 0.0 or gap_rate > 0.0
    held: list[str] = []  # a row held back to be written after the next one (0 or 1 element)

    def flush(rows: list[str]) -> None:
        if not messy:
            out.write("".join(rows))
            return
        kept: list[str] = []
        keep = kept.append
        for row in rows:
            if gap_rate and mess_rnd() < gap_rate:
                continue
            if held:
                keep(row)
                keep(held.pop())
            elif swap_rate and mess_rnd() < swap_rate:
                held.append(row)
            else:
                keep(row)
        out.write("".join(kept))

    # --- book state ---------------------------------------------------------------------
    # An order is a list [side, order_id, "order_id,SIDE", price_ticks, "price", qty, index];
    # side 0 = BUY, 1 = SELL; order ids are kept as their decimal strings.
    # live: every resting order (uniform pick in O(1), swap-remove via the index field).
    # bid_levels / ask_levels: price_ticks -> {order_id: order} in time priority.
    # bb / ba: best bid / ask price, NO_BID / NO_ASK when that side is empty.
    live: list[list[Any]] = []
    bid_levels: dict[int, dict[str, list[Any]]] = {}
    ask_levels: dict[int, dict[str, list[Any]]] = {}
    no_bid = NO_BID
    no_ask = NO_ASK
    bb = no_bid
    ba = no_ask
    freed: tuple[list[str], list[str]] = ([], [])
    fair = START_PRICE_TICKS
    next_id = ORDER_ID_START
    price_cache: dict[int, str] = {}
    price_str = _price_str
    qty_str = [str(q) for q in range(max(lots) + 1)]  # no quantity ever exceeds the largest lot

    # Thresholds of the event-type draw by book depth: the add share leans towards keeping
    # about TARGET_ORDERS orders on the book, and there are no adds at MAX_ORDERS.
    add_below = []
    update_below = []
    buy_below = []  # an add draw below this is a BUY
    for depth in range(MAX_ORDERS + 1):
        lean = max(-0.2, min(0.2, (TARGET_ORDERS - depth) * (0.10 / TARGET_ORDERS)))
        p_add = 1.0 if depth == 0 else 0.0 if depth >= MAX_ORDERS else P_ADD + lean
        add_below.append(p_add)
        update_below.append(max(p_add, P_ADD + P_UPDATE + lean))
        buy_below.append(p_add / 2)
    delete_below = P_ADD + P_UPDATE + P_DELETE
    freed_pool = FREED_POOL
    p_reuse = P_REUSE_ID
    p_cross = P_CROSS
    p_cancel_stale = P_CANCEL_STALE
    p_full = P_FULL_FILL
    p_full_stale = P_FULL_FILL_STALE
    p_reduce = P_UPDATE_REDUCE
    chunk_rows = CHUNK_ROWS
    start_price = START_PRICE_TICKS

    # --- time ---------------------------------------------------------------------------
    # Whole seconds since the epoch, milliseconds and microseconds; the text is
    # "{prefix}{ms_s}{us_s} UTC", the prefix (date and time to the second, with the dot) is
    # rebuilt only when the second changes.
    since_epoch = START_TIME - datetime(1970, 1, 1, tzinfo=UTC)
    sec = since_epoch.days * 86_400 + since_epoch.seconds
    ms, us = divmod(since_epoch.microseconds, 1000)
    strftime = time.strftime
    gmtime = time.gmtime
    prefix = strftime("%Y-%m-%d %H:%M:%S.", gmtime(sec))
    ms_full = [f"{i:03d}" for i in range(1000)]  # "120"
    stripped = [f"{i:03d}".rstrip("0") for i in range(1000)]  # "12", "5", "05", "005"

    # seq_num text: the digits above the last three change every 1000 events.
    low3 = ms_full  # the same 3-digit strings
    seq_end = SEQ_START + n
    block = SEQ_START - SEQ_START % 1000

    order: Any = None  # the order an event acts on (a list, see above)
    out.write(HEADER_LINE)
    buf: list[str] = []
    emit = buf.append

    while block < seq_end:
        head = str(block // 1000)
        lows = low3[max(0, SEQ_START - block) : min(1000, seq_end - block)]
        block += 1000
        for low in lows:
            # --- time and fair price; gi also picks the size and id step of an add ------
            gi = bits(table_bits)
            us += gap_us[gi]
            ms += gap_ms[gi]
            if us >= 1000:
                us -= 1000
                ms += 1
            if ms >= 1000:
                sec += ms // 1000
                ms %= 1000
                prefix = strftime("%Y-%m-%d %H:%M:%S.", gmtime(sec))
            if us:
                ms_s = ms_full[ms]
                us_s = stripped[us]
            elif ms:
                ms_s = stripped[ms]
                us_s = ""
            else:  # a whole second: move one microsecond later
                us = 1
                ms_s = "000"
                us_s = "001"
            if moves[gi]:
                # one tick up or down, pulled back towards the start price
                if rnd() < 0.5 + (start_price - fair) * 0.00005:
                    fair += 1
                elif fair > 100:
                    fair -= 1

            depth = len(live)
            r = rnd()
            if r < add_below[depth]:
                # --- ADD ---------------------------------------------------------------------
                s = 0 if r < buy_below[depth] else 1
                pool = freed[s]
                if pool and rnd() < p_reuse:
                    if gi & 4:  # the id freed last on this side (cancel and replace)
                        oid = pool.pop()
                    else:
                        j = bits(24) % len(pool)
                        oid = pool[j]
                        pool[j] = pool[-1]
                        pool.pop()
                else:
                    next_id += id_steps[gi]
                    oid = str(next_id)
                r = rnd()
                if s == 0:
                    if r < p_cross:
                        price = (fair if ba == no_ask else ba) + (gi & 1)
                    else:
                        price = fair - offsets[bits(table_bits)]
                        if price >= ba:
                            price = ba - 1
                        if price < 1:
                            price = 1
                    tag = oid + ",BUY"
                else:
                    if r < p_cross:
                        price = (fair if bb == no_bid else bb) - (gi & 1)
                        if price < 1:
                            price = 1
                    else:
                        price = fair + offsets[bits(table_bits)]
                        if price <= bb:
                            price = bb + 1
                    tag = oid + ",SELL"
                ps = price_cache.get(price)
                if ps is None:
                    if len(price_cache) > 100_000:  # keep memory flat on a long random walk
                        price_cache.clear()
                    ps = price_cache[price] = price_str(price)
                qty = lots[gi]
                order = [s, oid, tag, price, ps, qty, depth]
                live.append(order)
                if s == 0:
                    level = bid_levels.get(price)
                    if level is None:
                        bid_levels[price] = {oid: order}
                        if price > bb:
                            bb = price
                    else:
                        level[oid] = order
                else:
                    level = ask_levels.get(price)
                    if level is None:
                        ask_levels[price] = {oid: order}
                        if price < ba:
                            ba = price
                    else:
                        level[oid] = order
                emit(f"{head}{low},{tag},{ps},{qty_str[qty]},,,,,,,,,,,{prefix}{ms_s}{us_s} UTC\n")

            elif r < update_below[depth]:
                # --- UPDATE: any order; a new price keeps off the opposite best ------------
                order = live[bits(24) % depth]
                s, oid, tag, old, ps, qty, _ = order
                price = old + deltas[bits(table_bits)]
                qty = (int(qty * rnd()) or 1) if rnd() < p_reduce else lots[bits(table_bits)]
                order[5] = qty
                if price != old:
                    if s == 0:
                        if price >= ba > old:
                            price = ba - 1
                    elif price <= bb < old:
                        price = bb + 1
                    if price < 1:
                        price = 1
                    if price != old:
                        ps = price_cache.get(price)
                        if ps is None:
                            if len(price_cache) > 100_000:
                                price_cache.clear()
                            ps = price_cache[price] = price_str(price)
                        order[3] = price
                        order[4] = ps
                        # add to the new level first, so the best-price scan stops there
                        if s == 0:
                            level = bid_levels.get(price)
                            if level is None:
                                bid_levels[price] = {oid: order}
                                if price > bb:
                                    bb = price
                            else:
                                level[oid] = order
                            level = bid_levels[old]
                            del level[oid]
                            if not level:
                                del bid_levels[old]
                                if old == bb:
                                    bb = old - 1
                                    while bb not in bid_levels:
                                        bb -= 1
                        else:
                            level = ask_levels.get(price)
                            if level is None:
                                ask_levels[price] = {oid: order}
                                if price < ba:
                                    ba = price
                            else:
                                level[oid] = order
                            level = ask_levels[old]
                            del level[oid]
                            if not level:
                                del ask_levels[old]
                                if old == ba:
                                    ba = old + 1
                                    while ba not in ask_levels:
                                        ba += 1
                emit(f"{head}{low},,,,,{tag},{ps},{qty_str[qty]},,,,,,,{prefix}{ms_s}{us_s} UTC\n")

            else:
                if r < delete_below:
                    # --- DELETE: often a stale best quote (one the fair price has moved
                    # through), else any order
                    if ba <= fair and rnd() < p_cancel_stale:
                        level = ask_levels[ba]
                        order = level[next(iter(level))]
                    elif bb >= fair and rnd() < p_cancel_stale:
                        level = bid_levels[bb]
                        order = level[next(iter(level))]
                    else:
                        order = live[bits(24) % depth]
                    emit(f"{head}{low},,,,,,,,,{order[2]},,,,,{prefix}{ms_s}{us_s} UTC\n")
                else:
                    # --- TRADE: the oldest order at the best price, on a stale side if any
                    if ba <= fair:
                        level = ask_levels[ba]
                        full = p_full_stale
                    elif bb >= fair:
                        level = bid_levels[bb]
                        full = p_full_stale
                    else:
                        # a coin flip (a bit of gi) between the sides, never an empty one
                        flip = (gi & 2 and bb != no_bid) or ba == no_ask
                        level = bid_levels[bb] if flip else ask_levels[ba]
                        full = p_full
                    order = level[next(iter(level))]
                    rem = order[5]
                    qty = rem if rnd() < full else (int(rem * rnd()) or 1)
                    emit(f"{head}{low},,,,,,,,,,,{order[2]},{order[4]},{qty_str[qty]},{prefix}{ms_s}{us_s} UTC\n")
                    if qty < rem:
                        order[5] = rem - qty
                        order = None
                if order is not None:
                    # --- remove the order from the book ---------------------------------
                    s, oid, _, price, _, _, i = order
                    last = live.pop()
                    if last is not order:
                        live[i] = last
                        last[6] = i
                    if s == 0:
                        level = bid_levels[price]
                        del level[oid]
                        if not level:
                            del bid_levels[price]
                            if price == bb:
                                if bid_levels:
                                    bb = price - 1
                                    while bb not in bid_levels:
                                        bb -= 1
                                else:
                                    bb = no_bid
                    else:
                        level = ask_levels[price]
                        del level[oid]
                        if not level:
                            del ask_levels[price]
                            if price == ba:
                                if ask_levels:
                                    ba = price + 1
                                    while ba not in ask_levels:
                                        ba += 1
                                else:
                                    ba = no_ask
                    pool = freed[s]
                    if len(pool) >= freed_pool:
                        pool[bits(24) % freed_pool] = pool[-1]
                        pool[-1] = oid
                    else:
                        pool.append(oid)

        if len(buf) >= chunk_rows:  # checked once per 1000 events
            flush(buf)
            buf.clear()

    flush(buf)
    if held:
        out.write(held.pop())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate seeded, realistic L3 order-book events as CSV (the l3_data_v3.1 format).",
        epilog="example: python benchmarks/generate_l3.py -n 1000000 --seed 42 -o /tmp/l3_1m.csv",
    )
    parser.add_argument("-n", type=int, default=1_000_000, help="number of events (default 1000000)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("-o", "--output", default="-", help="output file, or - for stdout (the default)")
    parser.add_argument(
        "--swap-rate", type=float, default=0.0, help="probability of swapping a row with the next (default 0)"
    )
    parser.add_argument("--gap-rate", type=float, default=0.0, help="probability of dropping a row (default 0)")
    args = parser.parse_args(argv)
    if args.n < 0:
        parser.error("-n must be >= 0")
    for opt, p in (("--swap-rate", args.swap_rate), ("--gap-rate", args.gap_rate)):
        if not (0.0 <= p < 1.0):
            parser.error(f"{opt} must be in [0, 1)")

    if args.output == "-":
        out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="\n")
        try:
            generate(args.n, args.seed, out, args.swap_rate, args.gap_rate)
            out.flush()
        except BrokenPipeError:
            # The reader went away (e.g. `| head`): silence the flush at interpreter exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 1
    else:
        with open(args.output, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as f:
            generate(args.n, args.seed, f, args.swap_rate, args.gap_rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
