"""Benchmark ``ledger project --follow``: the lag from an event's commit to its L1 commit.

A writer in this process appends generated L3 events (``generate_l3.py``) to one stream at
a steady rate, in small batches committed every ``--tick`` seconds with a NOTIFY, as
ingest does, and notes when each batch committed. ``ledger project --follow`` runs as a
child process. A watcher polls the projector's position (committed in the same
transaction as the L1 rows) every millisecond and notes when each batch's last seq
became visible there. The lag of a batch is the difference; p50 and p99 are printed per
rate, with the follower's peak memory.

    python benchmarks/bench_follow.py                         # 1,000 and 20,000 events/s
    python benchmarks/bench_follow.py --rates 5000 --seconds 20

The server: LEDGER_BENCH_DATABASE_URL (an admin URL), else postgres on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import io
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).parent))
from generate_l3 import generate
from scratch import libpq, scratch_database

from ledger.storage.database import create_engine
from ledger.storage.log import EventLog, Streams
from ledger.storage.notify import notify_appended
from ledger.venues.csv.format import fast_row


def _lines(n: int, seed: int) -> list[bytes]:
    out = io.StringIO()
    generate(n, seed, out)
    rows = out.getvalue().encode().splitlines(keepends=True)[1:]
    rows.sort(key=lambda r: int(r.split(b",", 1)[0]))  # in seq order: the lag is not a gap's
    return rows


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def bench(rate: int, seconds: float, tick: float, url: str, dsn: str, env: dict[str, str]) -> dict[str, object]:
    engine = create_engine(make_url(url))
    stream = f"csv:follow{rate}"
    with engine.begin() as conn:
        sid = Streams(conn).ensure(stream, "csv")
    per_tick = max(1, round(rate * tick))
    lines = _lines(int(rate * seconds) + per_tick, seed=rate)
    follower = subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", "project", "--follow", "--stream", stream, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    committed: list[tuple[int, float]] = []  # (last seq of the batch, commit time)
    seen: dict[int, float] = {}
    done = threading.Event()

    def watch() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            last = -1
            while not done.is_set():
                row = conn.execute("SELECT last_seq FROM projector_positions WHERE stream_id = %s", (sid,)).fetchone()
                now = time.perf_counter()
                if row is not None and row[0] > last:
                    last = row[0]
                    seen[last] = now
                time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    time.sleep(1.5)  # the follower starts and takes the stream
    watcher.start()
    started = time.perf_counter()
    sent = 0
    for i in range(0, len(lines) - per_tick + 1, per_tick):
        due = started + (i // per_tick) * tick
        if (wait := due - time.perf_counter()) > 0:
            time.sleep(wait)
        rows = [fast_row(line) for line in lines[i : i + per_tick]]
        with engine.begin() as conn:
            EventLog(conn).append(sid, [r[1] for r in rows if r is not None])
            notify_appended(conn, [sid])
        committed.append((max(r[0] for r in rows if r is not None), time.perf_counter()))
        sent += len(rows)
    elapsed = time.perf_counter() - started
    deadline = time.perf_counter() + 30
    while (not seen or max(seen) < committed[-1][0]) and time.perf_counter() < deadline:
        time.sleep(0.01)
    done.set()
    watcher.join()
    peak = _vm_hwm(follower.pid)
    follower.send_signal(signal.SIGTERM)
    follower.communicate(timeout=60)
    seen_order = sorted(seen.items())
    lags = []
    j = 0
    for last_seq, t_commit in committed:  # the first position at or past the batch's last seq
        while j < len(seen_order) and seen_order[j][0] < last_seq:
            j += 1
        if j < len(seen_order):
            lags.append(seen_order[j][1] - t_commit)
    engine.dispose()
    return {
        "rate_target": rate,
        "events": sent,
        "events_per_s": round(sent / elapsed),
        "batches": len(committed),
        "lag_ms_p50": round(_percentile(lags, 0.5) * 1000, 1),
        "lag_ms_p99": round(_percentile(lags, 0.99) * 1000, 1),
        "lag_ms_max": round(max(lags) * 1000, 1) if lags else None,
        "follower_peak_mib": peak // 1024,
    }


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1000,20000", help="events per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--tick", type=float, default=0.01, help="seconds between two commits of the writer")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with scratch_database() as (url, env):
        dsn = libpq(url)
        for rate in (int(r) for r in args.rates.split(",")):
            r = bench(rate, args.seconds, args.tick, url.render_as_string(hide_password=False), dsn, env)
            if args.json:
                print(json.dumps(r))
            else:
                print(
                    f"{r['events_per_s']:>7,} events/s ({r['batches']} commits): lag event commit -> L1 commit "
                    f"p50 {r['lag_ms_p50']} ms, p99 {r['lag_ms_p99']} ms, max {r['lag_ms_max']} ms; "
                    f"follower peak {r['follower_peak_mib']} MiB"
                )


if __name__ == "__main__":
    main()
