"""Benchmark the Parquet export of L1 rows against COPY of the same rows.

A scratch database gets N L1 rows of one stream (default 10,000,000), made by PostgreSQL
itself (generate_series: seq, time a millisecond apart, prices on a 0.01 tick, whole sizes),
and then, each as a child process whose peak memory is read from wait4:

1. ``Ledger.export_parquet("l1", ...)``: what ``ledger export l1 -f parquet`` runs (zstd, row
   groups of 100,000 rows, exact decimals);
2. the baseline: ``COPY (SELECT seq, ts, bid_price, bid_size, ask_price, ask_size FROM l1
   WHERE stream_id = ...) TO STDOUT`` of the same rows into a file, through psycopg (the
   database's own cost of handing the rows out, as text);
3. ``Ledger.export_l1_csv``: the L1 CSV export (COPY, formatted by PostgreSQL).

The same at N/10 shows whether the export's memory stays flat as N grows. Printed: rows/s,
wall seconds, peak MiB, bytes per row of each file, and the Parquet export's wall time as a
multiple of the COPY baseline's.

    python benchmarks/bench_export.py                 # N = 10,000,000
    python benchmarks/bench_export.py -n 1000000 --json

The server: LEDGER_BENCH_DATABASE_URL (an admin URL on which a scratch database is created
and dropped), else LEDGER_DATABASE_URL's server; postgres on 127.0.0.1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).parent))
from bench_csv import DEFAULT_SERVER

STREAM = "csv:bench"

_PARQUET = """
import sys, ledger
with ledger.open(sys.argv[1], migrate=False) as lg:
    print(lg.export_parquet("l1", sys.argv[2], sys.argv[3]))
"""
_CSV = """
import sys, ledger
with ledger.open(sys.argv[1], migrate=False) as lg, open(sys.argv[3], "wb") as out:
    print(lg.export_l1_csv(sys.argv[2], out))
"""
_COPY = """
import sys, psycopg
query = ("COPY (SELECT seq, ts, bid_price, bid_size, ask_price, ask_size FROM l1 WHERE stream_id ="
         " (SELECT id FROM streams WHERE name = %s) ORDER BY seq) TO STDOUT")
rows = 0
with psycopg.connect(sys.argv[1]) as conn, conn.cursor() as cur, open(sys.argv[3], "wb") as out:
    with cur.copy(query, (sys.argv[2],)) as copy:
        for data in copy:
            rows += bytes(data).count(b"\\n")
            out.write(data)
print(rows)
"""


def _child(code: str, *args: str) -> tuple[float, int, int]:
    """Run ``code`` in a child Python; (wall seconds, peak RSS in MiB, the count it prints)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child failed:\n{err.decode()}")
    return wall, usage.ru_maxrss // 1024, int(out.split()[-1])


def _fill(libpq: str, n: int) -> None:
    """N L1 rows of STREAM, made by the server (a realistic mix of scales and sizes)."""
    with psycopg.connect(libpq, autocommit=True) as conn:
        stream_id = conn.execute(
            "INSERT INTO streams (name, source) VALUES (%s, 'csv') RETURNING id", (STREAM,)
        ).fetchone()[0]  # type: ignore[index]
        step = 1_000_000
        for first in range(1, n + 1, step):
            last = min(n, first + step - 1)
            conn.execute(
                "INSERT INTO l1 (stream_id, seq, ts, bid_price, bid_size, ask_price, ask_size)"
                " SELECT %s, 1627942268920653170 + i, timestamptz '2021-08-03 01:00:00+00' + i * interval '1 ms',"
                " round(229 + ((i * 7) %% 300) / 100.0, 2), 100 * (1 + i %% 13),"
                " round(229.01 + ((i * 7) %% 300) / 100.0, 2),"
                " 50 * (1 + i %% 17) FROM generate_series(%s::bigint, %s::bigint) AS i",
                (stream_id, first, last),
            )
        conn.execute("ANALYZE l1")


def bench(n: int, server: str, workdir: Path) -> dict[str, object]:
    admin_url = make_url(server)
    admin = admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"ledger_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    libpq = admin_url.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"rows": n}
    try:
        subprocess.run([sys.executable, "-m", "ledger.cli", "db", "upgrade"], env={**os.environ,
                       "LEDGER_DATABASE_URL": url}, check=True, capture_output=True)  # fmt: skip
        started = time.perf_counter()
        _fill(libpq, n)
        results["fill_s"] = round(time.perf_counter() - started, 1)
        files = {kind: workdir / f"l1_{n}.{kind}" for kind in ("parquet", "copy", "csv")}
        for kind, code, target in (
            ("parquet", _PARQUET, url),
            ("copy", _COPY, libpq),
            ("csv", _CSV, url),
        ):
            wall, peak, rows = _child(code, target, STREAM, str(files[kind]))
            assert rows == n, (kind, rows, n)
            size = files[kind].stat().st_size
            results[kind] = {
                "rows_per_s": round(n / wall),
                "wall_s": round(wall, 2),
                "peak_mib": peak,
                "bytes_per_row": round(size / n, 2),
            }
            files[kind].unlink()
            print(f"  {n:,} rows, {kind}: {results[kind]}", file=sys.stderr, flush=True)
        parquet, copy = results["parquet"], results["copy"]
        assert isinstance(parquet, dict) and isinstance(copy, dict)
        results["parquet_wall_vs_copy"] = round(parquet["wall_s"] / copy["wall_s"], 2)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=10_000_000, help="L1 rows")
    parser.add_argument("--json", action="store_true", help="one JSON object per size")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ledger-bench")
    args = parser.parse_args()
    server = os.environ.get("LEDGER_BENCH_DATABASE_URL") or DEFAULT_SERVER
    if "LEDGER_BENCH_DATABASE_URL" not in os.environ and os.environ.get("LEDGER_DATABASE_URL"):
        server = make_url(os.environ["LEDGER_DATABASE_URL"]).set(database="postgres").render_as_string(False)
    for n in (max(1, args.n // 10), args.n):
        result = bench(n, server, args.workdir)
        if args.json:
            print(json.dumps(result))
            continue
        print(f"{n:,} L1 rows (made in {result['fill_s']} s)")
        for kind, label in (("parquet", "Parquet export"), ("copy", "COPY TO (baseline)"), ("csv", "L1 CSV export")):
            r = result[kind]
            assert isinstance(r, dict)
            print(
                f"  {label:<20} {r['rows_per_s']:>10,} rows/s  {r['wall_s']:>7} s  "
                f"peak {r['peak_mib']:>5} MiB  {r['bytes_per_row']:>6} bytes/row"
            )
        print(f"  Parquet export wall / COPY wall: {result['parquet_wall_vs_copy']}")


if __name__ == "__main__":
    main()
