"""Bytes per stored event: what the event log costs in PostgreSQL, against the input.

For each input it creates a scratch database, ingests the input with the library
(``Ledger.ingest_csv``, ``Ledger.ingest_dbn``; Coinbase messages as the capture stores
them), runs ``VACUUM event_rows`` (so the figure does not depend on when autovacuum last
came by) and prints, per event:

- ``stored``: ``pg_total_relation_size('event_rows')`` (heap, primary key, the partial
  index, TOAST, free space and visibility maps) over the events stored, one row each as
  the ingest leaves them;
- ``compacted``: after ``Ledger.compact()`` (``ledger db compact``: every event folded into
  blocks of 4,096, migration 0005) and ``VACUUM FULL event_rows`` (which gives the emptied
  pages back; a plain VACUUM leaves them for new rows), the sizes of ``event_rows`` and
  ``event_blocks`` together over the events; ``fold/s``: events folded a second;
- ``raw kept``: the same rows in a copy of the table (``LIKE event_rows INCLUDING ALL``)
  with ``raw`` filled by ``ledger_raw(e)``, what every row cost before migration 0004 left
  a canonical CSV line's raw out;
- ``heap`` and ``index``: the table alone and its indexes;
- ``rows without raw``: the share of events stored without raw;
- ``line``: the input's own bytes per event (a CSV line with its newline; a DBN record);
- ``zlib``, ``zstd``: the whole input compressed (zlib level 6; zstd level 3, pyarrow's)
  over the events.

Inputs: the bundled CSV sample (34,247 events), a generated CSV file of ``-n`` events
(default 1,000,000, ``benchmarks/generate_l3.py``, seed 42), ``--coinbase`` messages of a
simulated Coinbase full channel (default 100,000, ``ledger.testing``'s matching engine and
random order flow, one product, after the 23 real messages of the bundled excerpt; stored
with the capture's own encoding, ``codec.to_row`` and ``codec.copy_row``) and, unless
``--no-dbn``, the bundled Databento MBO sample (ESH4 2023-12-25, 68,792 records; its raw is
always stored).

    python benchmarks/bench_bytes.py
    python benchmarks/bench_bytes.py -n 200000 --no-dbn --json

The server: LEDGER_BENCH_DATABASE_URL (an admin URL on which a scratch database is created
and dropped), else PostgreSQL on 127.0.0.1 as postgres.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import psycopg
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))
from generate_l3 import generate
from scratch import libpq, scratch_database

import ledger

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "l3-l1" / "v3.1" / "l3_data_v3.1.csv"
DBN = ROOT / "tests" / "data" / "databento" / "nautilus__esh4-glbx-mdp3-20231225.mbo.dbn.zst"
REAL_COINBASE = ROOT / "tests" / "data" / "coinbase" / "full_channel_2017-06-25_excerpt.jsonl"

_SIZES = """
SELECT count(*), count(*) FILTER (WHERE raw IS NULL), pg_total_relation_size('event_rows'),
       pg_relation_size('event_rows'), pg_indexes_size('event_rows')
FROM event_rows
"""
_LOG_SIZE = "SELECT pg_total_relation_size('event_rows') + pg_total_relation_size('event_blocks')"

_KEPT = """
INSERT INTO events_kept (stream_id, seq, kind, order_id, side, price, size, ts, raw, flags, ts_event, ts_recv,
                         sequence, channel)
SELECT stream_id, seq, kind, order_id, side, price, size, ts, ledger_raw(e), flags, ts_event, ts_recv, sequence, channel
FROM events e ORDER BY stream_id, seq
"""


def measure(ingest: Callable[[ledger.Ledger], object], data: bytes) -> dict[str, float]:
    """Ingest into a scratch database and measure; ``data``: the input's bytes as read."""
    with scratch_database() as (url, _env):
        with ledger.open(url.render_as_string(hide_password=False), migrate=False) as lg:
            ingest(lg)
        with psycopg.connect(libpq(url), autocommit=True) as conn:
            conn.execute("VACUUM event_rows")
            count, without, total, heap, index = conn.execute(_SIZES).fetchone() or (0, 0, 0, 0, 0)
            conn.execute("CREATE TABLE events_kept (LIKE event_rows INCLUDING ALL)")
            conn.execute(_KEPT)
            conn.execute("VACUUM events_kept")
            kept = conn.execute("SELECT pg_total_relation_size('events_kept')").fetchone()
            conn.execute("DROP TABLE events_kept")
        with ledger.open(url.render_as_string(hide_password=False), migrate=False) as lg:
            started = time.perf_counter()
            folded = sum(f.events for f in lg.compact().values())
            fold_seconds = time.perf_counter() - started
        with psycopg.connect(libpq(url), autocommit=True) as conn:
            conn.execute("VACUUM FULL event_rows")
            conn.execute("VACUUM event_blocks")
            compacted = conn.execute(_LOG_SIZE).fetchone()
    assert kept is not None and compacted is not None and folded == count
    return {
        "events": count,
        "stored": total / count,
        "compacted": compacted[0] / count,
        "fold/s": folded / fold_seconds,
        "raw kept": kept[0] / count,
        "heap": heap / count,
        "index": index / count,
        "rows without raw": without / count,
        "line": len(data) / count,
        "zlib": len(zlib.compress(data, 6)) / count,
        "zstd": len(pa.compress(data, codec="zstd", asbytes=True)) / count,
    }


def csv_input(path: Path) -> tuple[Callable[[ledger.Ledger], object], bytes]:
    data = path.read_bytes()
    return (lambda lg: lg.ingest_csv(path, stream="csv:bench")), data


def coinbase_input(n: int, seed: int) -> tuple[Callable[[ledger.Ledger], object], bytes]:
    """The real excerpt's messages and ``n`` of a simulated full channel, as lines; stored
    with the capture's encoding, a stream per product."""
    from ledger.storage.log import EventLog, Streams
    from ledger.testing import MatchingEngine, RandomOrderFlow
    from ledger.venues.coinbase.codec import copy_row, decode, to_row

    lines = REAL_COINBASE.read_text().splitlines()
    flow = RandomOrderFlow(MatchingEngine("BTC-USD", seed=seed, history=1000), random.Random(seed))
    while len(lines) < n + 23:
        lines.extend(json.dumps(m, separators=(",", ":")) for m in flow.step())

    def store(lg: ledger.Ledger) -> None:
        with lg.engine.begin() as conn:
            streams = Streams(conn)
            payload = bytearray()
            for line in lines:
                row = to_row(decode(line), line)
                if row is not None:
                    payload += copy_row(row, streams.ensure(f"coinbase:{row.product_id}", "coinbase"))
            EventLog(conn).copy_text(bytes(payload))

    kept = [line for line in lines if '"heartbeat"' not in line]
    return store, "".join(f"{line}\n" for line in kept).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="events of the generated CSV file (0: none)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--coinbase", type=int, default=100_000, help="simulated Coinbase messages (0: none)")
    parser.add_argument("--no-dbn", action="store_true", help="leave the Databento sample out")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results: dict[str, dict[str, float]] = {}
    results["csv sample"] = measure(*csv_input(SAMPLE))
    if args.n:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "generated.csv"
            with path.open("w", encoding="utf-8", newline="\n") as out:
                generate(args.n, args.seed, out)
            results[f"csv generated {args.n:,}"] = measure(*csv_input(path))
    if args.coinbase:
        results[f"coinbase {args.coinbase:,}"] = measure(*coinbase_input(args.coinbase, args.seed))
    if not args.no_dbn:
        with pa.input_stream(str(DBN), compression="zstd") as stream:
            decoded = stream.read()
        results["databento sample"] = measure(lambda lg: lg.ingest_dbn(DBN), decoded)

    if args.json:
        print(json.dumps(results, indent=2))
        return
    columns = [
        "events",
        "stored",
        "compacted",
        "fold/s",
        "raw kept",
        "heap",
        "index",
        "rows without raw",
        "line",
        "zlib",
        "zstd",
    ]
    print(f"{'bytes per event':<26}" + "".join(f"{c:>17}" for c in columns))
    for name, figures in results.items():
        print(f"{name:<26}" + "".join(f"{_shown(c, figures[c]):>17}" for c in columns))


def _shown(column: str, value: float) -> str:
    if column in ("events", "fold/s"):
        return f"{value:,.0f}"
    return f"{value:.0%}" if column == "rows without raw" else f"{value:.1f}"


if __name__ == "__main__":
    main()
