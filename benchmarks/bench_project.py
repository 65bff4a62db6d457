"""Benchmark projection against the binary read limit of the same rows.

Against a database (the default): N generated CSV events (``generate_l3.py``, seeded) are
ingested into a scratch database, then ``--repeat`` rounds, each of these in turn:

1. **read limit**: ``COPY (SELECT <the columns the projector reads>) TO STDOUT (FORMAT
   binary)`` of the stream in key order, the bytes read and dropped (psycopg, this process);
2. **reader**: the projector's own reader (``EventLog.read_chunks``, chunks of 20,000), rows
   made Python objects and dropped (this process);
3. **reader + book**: the same rows decoded by the venue's rules and applied to a book, L1
   rows computed, nothing written (``replay``, what ``ledger book`` runs; this process);
4. **ledger project**: ``ledger project --json`` as a child process (defaults: snapshots
   every 250,000 events), the projection of the round before dropped first, outside the
   time measured; its wall time including start-up, its own time for the stream
   (``seconds`` of its summary), and its peak memory (max RSS).

Printed per round: events/s and seconds of each, the ratio of each to the read limit of
the same round, and ``ledger project``'s peak memory; at the end the medians. Wall time on
a busy machine says more about the neighbours than about projection, so the CPU time of
each side of (1) and (4) is printed too, the client's and the server's (its backends for
the scratch database, read from /proc while they run): on an idle machine with a core for
each, a pipeline runs at the pace of its busier side, so ``cpu ratio`` (the read limit's
server CPU over the larger of ledger project's client and server CPU) is the ratio such a
machine would show.

    python benchmarks/bench_project.py                       # N = 1,000,000, 3 rounds
    python benchmarks/bench_project.py -n 200000 --repeat 5

In memory (``--in-memory``, no database): stored rows made as the log returns them (the CSV
generator's lines through the CSV parser, in seq order; or ``--venue coinbase``, a seeded
order flow of the local exchange through the Coinbase codec; or ``--venue databento``, the
bundled Databento MBO sample, at most 68,792 records) are applied by the projector
of a projection run (``StreamProjector.apply_rows``, chunks of 20,000, L1 rows kept per
chunk, the cycle collector's threshold set as the command line sets it). Printed:
events/s, seconds, L1 rows and the process's peak memory. ``--no-apply`` does everything
but the applying; run both under ``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0`` and
divide the difference of the instruction counts by the number of events to get
instructions per event (deterministic, unlike wall time on a shared machine).
``--rows FILE`` keeps the rows in a pickle file, made on the first run, so that runs under
valgrind do not generate them again.

    python benchmarks/bench_project.py --in-memory -n 1000000
    PYTHONHASHSEED=0 valgrind --tool=callgrind python benchmarks/bench_project.py --in-memory \\
        -n 100000 --rows /tmp/csv_100k.pickle [--no-apply]

The server: LEDGER_BENCH_DATABASE_URL (an admin URL; a scratch database is created and
dropped), else postgres on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import pickle
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from bench_csv import _run, _run_timed, _ServerCpu
from generate_l3 import generate
from scratch import libpq, scratch_database

CHUNK = 20_000
STREAM = "csv:bench"
# The columns the projector reads (ledger/storage/log.py), in key order, as one COPY.
READ_LIMIT = (
    "COPY (SELECT seq, kind, order_id, side, price::text, size::text, ts::text FROM event_rows"
    " WHERE stream_id = {sid} ORDER BY seq) TO STDOUT (FORMAT binary)"
)


# -- rows as the event log returns them -------------------------------------------------------


def csv_rows(n: int, seed: int) -> list[tuple[Any, ...]]:
    """``n`` generated L3 CSV events as stored rows (seq, kind, order_id, side, price, size, ts),
    in seq order."""
    from ledger.venues.csv.format import parse_line

    text = io.StringIO()
    generate(n, seed, text)
    lines = text.getvalue().splitlines()[1:]
    return sorted(tuple(parse_line(line)) for line in lines)


def coinbase_rows(n: int, seed: int) -> list[tuple[Any, ...]]:
    """``n`` Coinbase full-channel messages of a seeded order flow (orders matched to 0 rest
    until their done, some icebergs) as stored rows."""
    from ledger.testing import MatchingEngine, RandomOrderFlow
    from ledger.testing.market import fixed_clock
    from ledger.venues.coinbase.codec import to_row

    engine = MatchingEngine("BTC-USD", seed=seed, history=10, zero_until_done=True, clock=fixed_clock())
    flow = RandomOrderFlow(engine, random.Random(seed), mid=Decimal("100"), icebergs=0.05)
    rows: list[tuple[Any, ...]] = []
    while len(rows) < n:
        for message in flow.step():
            row = to_row(message, "")
            if row is not None:
                rows.append((row.seq, row.kind, row.order_id, row.side, row.price, row.size, row.time))
    return rows[:n]


DBN_SAMPLE = Path(__file__).parent.parent / "tests/data/databento/nautilus__esh4-glbx-mdp3-20231225.mbo.dbn.zst"


def databento_rows(n: int, seed: int) -> list[tuple[Any, ...]]:
    """The first ``n`` records of the bundled Databento MBO sample (ESH4, 68,792 records) as
    stored rows read back from the log: price and size as text (``seed`` is not used)."""
    from ledger.venues.databento.dbn import MboReader, StoredRow, stored_rows

    rows = [r for r in stored_rows(MboReader(DBN_SAMPLE)) if isinstance(r, StoredRow)][:n]
    return [(*r[:4], None if r[4] is None else str(r[4]), None if r[5] is None else str(r[5]), *r[6:9]) for r in rows]


def in_memory(args: argparse.Namespace) -> None:
    gc.set_threshold(100_000, *gc.get_threshold()[1:])  # as the command line runs
    makers = {"csv": csv_rows, "coinbase": coinbase_rows, "databento": databento_rows}
    make: Callable[[int, int], list[tuple[Any, ...]]] = makers[args.venue]
    if args.rows is not None and args.rows.exists():
        with args.rows.open("rb") as f:
            rows = pickle.load(f)
    else:
        rows = make(args.n, args.seed)
        if args.rows is not None:
            with args.rows.open("wb") as f:
                pickle.dump(rows, f, protocol=pickle.HIGHEST_PROTOCOL)
    from ledger.services.project.rows import StreamProjector
    from ledger.venues import venue

    proj = StreamProjector(None, venue(args.venue).rules())
    chunks = [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]
    l1_rows = 0
    started = time.perf_counter()
    if not args.no_apply:
        for chunk in chunks:
            out: list[Any] = []
            proj.apply_rows(chunk, out)
            l1_rows += len(out)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    rate = len(rows) / seconds if seconds > 0 else 0.0
    print(
        f"{args.venue}, in memory: {len(rows):,} events in {seconds:.3f} s, {rate:,.0f} events/s, "
        f"{l1_rows:,} L1 rows, book of {len(proj.book):,} orders, peak {peak} MiB"
        + (" (not applied)" if args.no_apply else "")
    )


# -- against the database ---------------------------------------------------------------------


def _read_limit(dsn: str, sid: int, database: str) -> tuple[float, int, float, float | None]:
    """Seconds and bytes of the binary COPY of the columns the projector reads, and the CPU
    seconds of this process and of the server's backend meanwhile."""
    size = 0
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, _ServerCpu(dsn, database) as server:
        started, cpu = time.perf_counter(), time.process_time()
        with cur.copy(READ_LIMIT.format(sid=int(sid))) as copy:
            for data in copy:
                size += len(data)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return wall, size, cpu, server.seconds


def _reader(url: Any, sid: int) -> tuple[float, int, float]:
    """Seconds and rows of the projector's reader alone, and this process's CPU seconds."""
    from ledger.storage.database import create_engine
    from ledger.storage.log import EventLog

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            started, cpu = time.perf_counter(), time.process_time()
            n = 0
            for rows in EventLog(conn).read_chunks(sid, chunk=CHUNK):
                n += len(rows)
            return time.perf_counter() - started, n, time.process_time() - cpu
    finally:
        engine.dispose()


def _reader_and_book(url: Any, sid: int) -> tuple[float, float]:
    """Seconds of reading and applying every event (L1 rows computed, nothing written), and
    this process's CPU seconds."""
    from ledger.services.project.replay import replay, stream_projector
    from ledger.storage.database import create_engine

    engine = create_engine(url)
    try:
        started, cpu = time.perf_counter(), time.process_time()
        proj, sources = stream_projector(engine, sid, STREAM)
        replayed = replay(proj, engine, sid, sources, after=0, upto=2**63 - 1, l1=True)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert replayed.last >= 0 and len(proj.book) > 0
        return seconds, cpu
    finally:
        engine.dispose()


def _drop_projection(url: Any, dsn: str) -> None:
    """The projection of an earlier round goes (outside the time measured), and its dead rows."""
    import ledger

    with ledger.open(url.render_as_string(hide_password=False)) as lg:
        lg.drop_projection([STREAM])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM l1")


def against_database(args: argparse.Namespace) -> None:
    gc.set_threshold(100_000, *gc.get_threshold()[1:])  # as the command line runs
    csv_path = args.workdir / f"l3_{args.n}_{args.seed}.csv"
    if not csv_path.exists():
        with csv_path.open("w", encoding="utf-8", newline="\n") as out:
            generate(args.n, args.seed, out)
    n = args.n
    with scratch_database() as (url, env):
        _run(["ingest", "csv", str(csv_path), "--stream", STREAM, "--json"], env)
        dsn = libpq(url)
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT id FROM streams WHERE name = %s", (STREAM,)).fetchone()
            assert row is not None
            sid = int(row[0])
            conn.execute("VACUUM ANALYZE events")
        rounds = []
        database = url.database
        for i in range(args.repeat):
            limit_s, limit_bytes, limit_client, limit_server = _read_limit(dsn, sid, database)
            reader_s, read, reader_cpu = _reader(url, sid)
            assert read == n, (read, n)
            book_s, book_cpu = _reader_and_book(url, sid)
            _drop_projection(url, dsn)
            with _ServerCpu(dsn, database) as server:
                wall, peak, out, client = _run_timed(["project", "--json"], env)
            [summary] = json.loads(out)
            assert summary["events_applied"] == n, summary
            r = {
                "read_limit_s": limit_s,
                "reader_s": reader_s,
                "reader_book_s": book_s,
                "project_wall_s": wall,
                "project_own_s": float(summary["seconds"]),
                "project_peak_mib": peak,
                "l1_rows": summary["l1_rows"],
                "reader_client_cpu_s": reader_cpu,
                "reader_book_client_cpu_s": book_cpu,
                "read_limit_client_cpu_s": limit_client,
                "read_limit_server_cpu_s": limit_server,
                "project_client_cpu_s": client,
                "project_server_cpu_s": server.seconds,
            }
            rounds.append(r)
            if args.json:
                print(json.dumps({"round": i + 1, "events": n, "bytes": limit_bytes, **r}))
            else:
                _print_round(f"round {i + 1}", n, r)
        if not args.json and len(rounds) > 1:
            median = {k: statistics.median(float(r[k] or 0) for r in rounds) for k in rounds[0]}
            _print_round(f"median of {len(rounds)}", n, median)


def _print_round(title: str, n: int, r: dict[str, Any]) -> None:
    limit = n / r["read_limit_s"]
    print(f"{title}: {n:,} events")
    for name, key in (
        ("read limit (COPY binary)", "read_limit_s"),
        ("reader (read_chunks)", "reader_s"),
        ("reader + book (replay)", "reader_book_s"),
        ("ledger project, own time", "project_own_s"),
        ("ledger project, wall", "project_wall_s"),
    ):
        rate = n / r[key]
        print(f"  {name:<26} {r[key]:>7.2f} s {rate:>12,.0f} events/s   {rate / limit:>5.2f} of the limit")
    print(f"  ledger project peak memory {r['project_peak_mib']:.0f} MiB, {r['l1_rows']:,.0f} L1 rows")
    if r["read_limit_server_cpu_s"] and r["project_server_cpu_s"]:
        busier = max(r["project_client_cpu_s"], r["project_server_cpu_s"])
        print(
            f"  CPU s: read limit client {r['read_limit_client_cpu_s']:.2f} server {r['read_limit_server_cpu_s']:.2f}; "
            f"ledger project client {r['project_client_cpu_s']:.2f} server {r['project_server_cpu_s']:.2f}; "
            f"cpu ratio {r['read_limit_server_cpu_s'] / busier:.2f}; client CPU s of the reader "
            f"{r['reader_client_cpu_s']:.2f}, of reader + book {r['reader_book_client_cpu_s']:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1_000_000, help="events (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=3, help="rounds against the database")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ledger-bench")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    parser.add_argument("--in-memory", action="store_true", help="no database: the projector alone")
    parser.add_argument("--venue", choices=("csv", "coinbase", "databento"), default="csv", help="with --in-memory")
    parser.add_argument("--no-apply", action="store_true", help="with --in-memory: all but the applying")
    parser.add_argument("--rows", type=Path, help="with --in-memory: a pickle of the rows, made if missing")
    args = parser.parse_args()
    if args.in_memory:
        in_memory(args)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    against_database(args)


if __name__ == "__main__":
    main()
