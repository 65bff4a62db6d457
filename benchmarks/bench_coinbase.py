"""Benchmark ``ledger ingest coinbase``: a paced full-channel feed over many products.

The feed is generated first (seeded random order flow on one matching engine per product,
``ledger.testing``), then a small replay server sends the frames at ``--rate`` messages/s
spread over the products, with a heartbeat per product every second, and serves REST
level-3 books at the sequence last sent. Generating first keeps the simulator's own cost
out of the measurement. Like Coinbase, the server cuts a connection that falls more than
``--slow-consumer`` messages behind.

``ledger ingest coinbase`` runs as a child process into a scratch database. Printed:
messages sent and stored, the rate sustained, the lag from receipt to commit (p50, p99),
how long the capture took to catch up after the last message, its peak memory, and its
reconnects and resyncs. ``--pause-db SECONDS`` holds an exclusive lock on the event table
for that long in the middle of the run (the database stops taking events): the capture's
memory stays bounded (it stops reading; the server then cuts it as a slow consumer), and
it recovers by reconnecting and resyncing. ``--fast-paths off`` runs the capture without
orjson and uvloop (as if they were not installed: the standard library's JSON decoder and
asyncio's own event loop); ``both`` alternates the two, ``--repeat`` pairs, and prints the
capture's CPU time per message for each (less noisy than the lag on a busy machine).

    python benchmarks/bench_coinbase.py                        # 10 products, 20,000 msg/s, 20 s
    python benchmarks/bench_coinbase.py --rate 1000 --seconds 10
    python benchmarks/bench_coinbase.py --pause-db 5
    python benchmarks/bench_coinbase.py --rate 20000 --fast-paths both --repeat 3

The server: LEDGER_BENCH_DATABASE_URL (an admin URL), else postgres on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from contextlib import suppress
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from aiohttp import WSMsgType, web

sys.path.insert(0, str(Path(__file__).parent))
from scratch import libpq, scratch_database

from ledger.testing import Credentials, MatchingEngine, RandomOrderFlow


class ReplayFeed:
    """Pre-generated frames sent at a fixed rate to every subscribed connection."""

    def __init__(self, products: list[str], total: int, seed: int, slow_consumer: int) -> None:
        self.products = products
        self.engines: dict[str, MatchingEngine] = {}
        self.frames: list[tuple[str, int, str]] = []  # (product, sequence, text)
        rng = random.Random(seed)
        flows = {}
        for i, product in enumerate(products):
            start = 1_000_000 * (i + 1)
            engine = MatchingEngine(product, start_sequence=start, seed=f"{seed}:{product}", history=total)
            self.engines[product] = engine
            flows[product] = RandomOrderFlow(engine, random.Random(f"{seed}:{product}"), mid=Decimal(100 + 10 * i))
        while len(self.frames) < total:
            product = rng.choice(products)
            for m in flows[product].step():
                self.frames.append((product, int(m["sequence"]), json.dumps(m, separators=(",", ":"))))
        self.sent_seq = {p: self.engines[p].oldest_sequence for p in products}
        self.queues: list[asyncio.Queue[str | None]] = []
        self.slow_consumer = slow_consumer
        self.cut = 0
        self.sent = 0
        self.done = asyncio.Event()

    async def feed(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        async for message in ws:
            if message.type is WSMsgType.TEXT and json.loads(message.data).get("type") == "subscribe":
                channels = [{"name": n, "product_ids": self.products} for n in ("full", "heartbeat")]
                await ws.send_str(json.dumps({"type": "subscriptions", "channels": channels}))
                break
        self.queues.append(queue)
        try:
            while (text := await queue.get()) is not None:
                if queue.qsize() > self.slow_consumer:
                    self.cut += 1
                    break  # as Coinbase does with a consumer that cannot keep up
                await ws.send_str(text)
        except ConnectionError:
            pass
        finally:
            self.queues.remove(queue)
        await ws.close()
        return ws

    async def book(self, request: web.Request) -> web.Response:
        product = request.match_info["product_id"]
        at = self.sent_seq[product]
        book = await asyncio.to_thread(self.engines[product].book_level3, at)
        return web.json_response({**book, "auction_mode": False})

    async def pace(self, rate: float) -> None:
        """Send every frame at ``rate`` per second, heartbeats every second."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        next_beat = start + 1.0
        for i, (product, seq, text) in enumerate(self.frames):
            due = start + i / rate
            if due - loop.time() > 0.002:
                await asyncio.sleep(due - loop.time())
            self.sent_seq[product] = seq
            for queue in self.queues:
                queue.put_nowait(text)
            self.sent = i + 1
            if loop.time() >= next_beat:
                next_beat += 1.0
                for p in self.products:
                    beat = {"type": "heartbeat", "product_id": p, "sequence": self.sent_seq[p], "last_trade_id": 0}
                    for queue in self.queues:
                        queue.put_nowait(json.dumps(beat | {"time": "2026-01-01T00:00:00.000000Z"}))
        self.done.set()


async def _hold_lock(dsn: str, after: float, seconds: float) -> None:
    await asyncio.sleep(after)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute("LOCK TABLE event_rows IN ACCESS EXCLUSIVE MODE")
        print(f"  database paused (event_rows locked) for {seconds}s", file=sys.stderr)
        await asyncio.sleep(seconds)
    print("  database back", file=sys.stderr)


async def _watch_rss(pid: int, peak: list[int]) -> None:
    """The child's peak resident memory (VmHWM, KiB) while it runs."""
    while True:
        with suppress(OSError), open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
        await asyncio.sleep(0.2)


def _stored(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        events = conn.execute("SELECT count(*) FROM events").fetchone()
        books = conn.execute("SELECT count(*) FROM source_snapshots").fetchone()
    return int(events[0]) if events else 0, int(books[0]) if books else 0


# The capture as if orjson and uvloop were not installed (an import of either fails).
_WITHOUT_FAST_PATHS = (
    "import sys; sys.modules['orjson'] = sys.modules['uvloop'] = None; from ledger.cli import main; main()"
)


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def run(args: argparse.Namespace, dsn: str, env: dict[str, str], *, fast: bool = True) -> dict[str, Any]:
    products = [f"P{i:02d}-USD" for i in range(args.products)]
    total = int(args.rate * args.seconds)
    print(f"generating {total:,} messages over {len(products)} products ...", file=sys.stderr)
    feed = ReplayFeed(products, total, args.seed, args.slow_consumer)
    app = web.Application()
    app.router.add_get("/", feed.feed)
    app.router.add_get("/products/{product_id}/book", feed.book)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    port = sock.getsockname()[1]
    creds = Credentials.generate(random.Random(args.seed))
    env = env | {
        "LEDGER_COINBASE_KEY": creds.key,
        "LEDGER_COINBASE_SECRET": creds.secret,
        "LEDGER_COINBASE_PASSPHRASE": creds.passphrase,
    }
    launch = ["-m", "ledger.cli"] if fast else ["-c", _WITHOUT_FAST_PATHS]
    cmd = [sys.executable, *launch, "ingest", "coinbase", "--json"]
    cmd += [a for p in products for a in ("--product", p)]
    cmd += ["--ws-url", f"ws://127.0.0.1:{port}/", "--rest-url", f"http://127.0.0.1:{port}"]
    cpu_before = _cpu_of_children()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not feed.queues:
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # the first books
    started = time.perf_counter()
    pause = asyncio.create_task(_hold_lock(dsn, args.seconds / 3, args.pause_db)) if args.pause_db else None
    watch = asyncio.create_task(_watch_rss(proc.pid, peak := [0]))
    await feed.pace(args.rate)
    sent_for = time.perf_counter() - started
    # caught up: every product's last message stored, or covered by a book after a resync
    while True:
        with psycopg.connect(dsn) as conn:
            behind = conn.execute(
                "SELECT count(*) FROM unnest(%s::text[], %s::bigint[]) AS t(name, seq)"
                " LEFT JOIN streams s ON s.name = t.name WHERE coalesce(greatest("
                " (SELECT max(seq) FROM events WHERE stream_id = s.id),"
                " (SELECT max(seq) FROM source_snapshots WHERE stream_id = s.id)), -1) < t.seq",
                ([f"coinbase:{p}" for p in products], [feed.sent_seq[p] for p in products]),
            ).fetchone()
        if (behind and behind[0] == 0) or time.perf_counter() - started > args.seconds * 4 + 60:
            break
        await asyncio.sleep(0.05)
    catch_up = time.perf_counter() - started - sent_for
    proc.send_signal(signal.SIGTERM)
    watch.cancel()
    out, err = await asyncio.to_thread(proc.communicate)
    cpu = _cpu_of_children() - cpu_before
    if pause is not None:
        await pause
    await runner.cleanup()
    if proc.returncode != 0:
        raise SystemExit(f"the capture failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    summary = json.loads(out)
    events, books = _stored(dsn)
    return {
        "fast_paths": fast,
        "products": len(products),
        "rate_target": args.rate,
        "messages_sent": feed.sent,
        "send_rate": round(feed.sent / sent_for),
        "events_stored": events,
        "books_stored": books,
        "lag_ms_p50": round(summary["lag_ms_p50"] or 0, 1),
        "lag_ms_p99": round(summary["lag_ms_p99"] or 0, 1),
        "catch_up_s": round(catch_up, 2),
        "reconnects": summary["reconnects"],
        "resyncs": sum(p["resyncs"] for p in summary["products"]),
        "cut_as_slow": feed.cut,
        "db_paused_s": args.pause_db,
        "peak_rss_mib": peak[0] // 1024,
        "cpu_s": round(cpu, 2),
        "cpu_us_per_message": round(cpu / max(feed.sent, 1) * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20_000, help="messages per second, all products")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pause-db", type=float, default=0, help="hold the event table locked this long")
    parser.add_argument("--slow-consumer", type=int, default=100_000, help="messages queued before a cut")
    parser.add_argument(
        "--fast-paths", choices=("on", "off", "both"), default="on", help="orjson and uvloop (default on)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs (pairs with --fast-paths both)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.fast_paths]
    results = []
    for _ in range(args.repeat):
        for fast in modes:
            with scratch_database() as (url, env):
                result = asyncio.run(run(args, libpq(url), env, fast=fast))
            results.append(result)
            _show(result, args)
    if len(modes) == 2 and not args.json:
        on = [r for r in results if r["fast_paths"]]
        off = [r for r in results if not r["fast_paths"]]
        for key in ("cpu_us_per_message", "lag_ms_p50", "lag_ms_p99"):
            a, b = statistics.median(r[key] for r in on), statistics.median(r[key] for r in off)
            print(f"median {key}: fast paths on {a}, off {b} (off/on {b / a if a else float('nan'):.2f})")


def _show(r: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(r))
        return
    print(
        f"fast paths {'on' if r['fast_paths'] else 'off'}: "
        f"{r['products']} products, target {r['rate_target']:,.0f} msg/s: sent {r['messages_sent']:,} at "
        f"{r['send_rate']:,}/s; stored {r['events_stored']:,} events and {r['books_stored']} books\n"
        f"  lag receipt->commit p50 {r['lag_ms_p50']} ms, p99 {r['lag_ms_p99']} ms; caught up "
        f"{r['catch_up_s']} s after the last message\n"
        f"  peak memory {r['peak_rss_mib']} MiB; reconnects {r['reconnects']}, resyncs {r['resyncs']}, "
        f"cut as slow consumer {r['cut_as_slow']}; capture CPU {r['cpu_s']} s, "
        f"{r['cpu_us_per_message']} us/message" + (f"; database paused {r['db_paused_s']} s" if args.pause_db else "")
    )


if __name__ == "__main__":
    main()
