"""Benchmark the Databento pipeline: ``ledger ingest dbn`` and ``ledger project`` on the real
ESH4 day, copied K times (each copy shifted by whole days, so it is a later day of the same
instrument that opens with its own snapshot), against two baselines run in the same script:

- ingest against ``psql \\copy`` of the same rows (ledger's own COPY text, made beforehand)
  into a table like ``event_rows`` with its keys and indexes: the pace of PostgreSQL's COPY;
- projection against a plain in-memory book fed straight from the decoder (a dict of orders
  and a sorted map of level sizes per side, the best bid and offer at each event end: no
  database, no queue order, no exact numbers).

Each ledger command runs as a child process; the script prints records/s, wall time and peak
memory (max RSS) and the ratios; for the projection also its CPU time and the ratio by CPU
time (the projection's every thread against the plain book's process), which other work on
the machine sways less than the wall clock, and the ratio by the projection's own time for
the stream (``seconds`` of its summary: without the process's start-up, as the plain book,
timed inside this process, is).

    python benchmarks/bench_dbn.py                  # 15 copies: 1,031,880 records
    python benchmarks/bench_dbn.py --copies 30 --repeat 3
    python benchmarks/bench_dbn.py --files 100      # also: the same records as 100 files

With ``--files F`` it also ingests the same records cut into F files (each with the
metadata), all named in one command, and prints the ratio to the one-file ingest.

The server: LEDGER_BENCH_DATABASE_URL (an admin URL on which a scratch database is created
and dropped), else postgres on 127.0.0.1. Needs ``psql`` on PATH for the baseline.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import databento_dbn
import psycopg
from psycopg import sql
from sortedcontainers import SortedDict
from sqlalchemy.engine import make_url

from ledger.storage.copy import EVENT_COPY_COLUMNS, VENUE_FIELDS, events_chunks
from ledger.venues.databento.dbn import MboReader, MboRecord, Sequencer

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
ESH4 = Path(__file__).parent.parent / "tests" / "data" / "databento" / "nautilus__esh4-glbx-mdp3-20231225.mbo.dbn.zst"
DAY_NS = 86_400 * 1_000_000_000
STREAM = "databento:GLBX.MDP3:ESH4"


def make_input(copies: int, path: Path) -> int:
    """Write ``copies`` shifted copies of the ESH4 day as one plain DBN file; its records."""
    reader = MboReader(ESH4)
    records = [r for r in reader if isinstance(r, MboRecord)]
    with path.open("wb") as out:
        out.write(bytes(reader.metadata.encode()))
        for k in range(copies):
            for r in records:
                raw = bytearray(r.raw)
                # ts_event at bytes 8..16, ts_recv at 40..48 (little-endian u64)
                raw[8:16] = (int.from_bytes(raw[8:16], "little") + k * DAY_NS).to_bytes(8, "little")
                raw[40:48] = (int.from_bytes(raw[40:48], "little") + k * DAY_NS).to_bytes(8, "little")
                out.write(raw)
    return copies * len(records)


def split_input(path: Path, files: int, folder: Path) -> None:
    """Cut ``path`` into ``files`` DBN files of about as many records each, each cut where a
    record has its own time's key (not inside one microsecond's records or a snapshot's
    spill: there a later file would key its first records as the earlier one's last)."""
    reader = MboReader(path)
    records = [r for r in reader if isinstance(r, MboRecord)]
    head = bytes(reader.metadata.encode())
    sequencer = Sequencer()
    clean = [
        i
        for i, r in enumerate(records)
        if sequencer("s", r.ts_recv) == r.ts_recv // 1000 * 1000
        and (i == 0 or records[i - 1].ts_recv // 1000 < r.ts_recv // 1000)
    ]
    per = len(records) / files
    cuts = sorted({next(i for i in clean if i >= k * per) for k in range(files)} | {len(records)})
    folder.mkdir(parents=True, exist_ok=True)
    for k, (start, end) in enumerate(itertools.pairwise(cuts)):
        (folder / f"part{k:04d}.dbn").write_bytes(head + b"".join(r.raw for r in records[start:end]))


def copy_text(path: Path, stream_id: int, out: Path) -> None:
    """ledger's own COPY rows of every record of ``path`` (the baseline's input)."""
    with out.open("wb") as fp:
        for chunk in MboReader(path).copy_lines(Sequencer()):
            for lines in chunk.lines.values():
                fp.write(b"".join(events_chunks(stream_id, [line for _, _, line in lines])))


def _run(args: list[str], env: dict[str, str]) -> tuple[float, int, str, float]:
    """Run ``args`` as a child; (wall seconds, peak RSS in MiB, stdout, CPU seconds: user
    and system, all its threads)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{err.read().decode()}")
    return wall, int(usage.ru_maxrss // 1024), out.decode(), usage.ru_utime + usage.ru_stime


def plain_book_rate(path: Path) -> tuple[float, float]:
    """Records/s of the plain in-memory book fed from the decoder (see the module), by the
    wall clock and by this process's CPU time."""
    started = time.perf_counter()
    cpu = time.process_time()
    orders: dict[int, tuple[str, int, int]] = {}
    levels = {"B": SortedDict(), "A": SortedDict()}
    last = None
    count = 0
    decoder = databento_dbn.DBNDecoder()
    with path.open("rb") as fp:
        while chunk := fp.read(1 << 20):
            decoder.write(chunk)
            for record in decoder.decode():
                if not isinstance(record, databento_dbn.MBOMsg):
                    continue
                count += 1
                action, side, flags = record.action, record.side, record.flags
                if action == "A":
                    orders[record.order_id] = (side, record.price, record.size)
                    level = levels[side]
                    level[record.price] = level.get(record.price, 0) + record.size
                elif action == "C" or action == "M":
                    found = orders.pop(record.order_id, None)
                    if found is not None:
                        level = levels[found[0]]
                        left = level[found[1]] - found[2]
                        if left:
                            level[found[1]] = left
                        else:
                            del level[found[1]]
                    if action == "M" and record.size:
                        orders[record.order_id] = (side, record.price, record.size)
                        level = levels[side]
                        level[record.price] = level.get(record.price, 0) + record.size
                elif action == "R":
                    orders.clear()
                    levels = {"B": SortedDict(), "A": SortedDict()}
                if flags & 128 and levels["B"] and levels["A"]:
                    bid, ask = levels["B"].peekitem(-1), levels["A"].peekitem(0)
                    if (bid, ask) != last:
                        last = (bid, ask)
    return count / (time.perf_counter() - started), count / (time.process_time() - cpu)


def bench(copies: int, files: int, server: str, workdir: Path) -> dict[str, object]:
    path = workdir / f"esh4_x{copies}.dbn"
    records = make_input(copies, path) if not path.exists() else sum(1 for _ in MboReader(path))
    admin_url = make_url(server)
    admin = admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"ledger_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = admin_url.set(database=name)
    env = {**os.environ, "LEDGER_DATABASE_URL": url.render_as_string(hide_password=False)}
    libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
    ledger = [sys.executable, "-m", "ledger.cli"]
    try:
        _run([*ledger, "db", "upgrade"], env)
        wall_i, rss_i, out_i, _ = _run([*ledger, "ingest", "dbn", str(path), "-f", "json"], env)
        [ingest] = json.loads(out_i)
        wall_p, rss_p, out_p, cpu_p = _run([*ledger, "project", STREAM, "-f", "json"], env)
        [proj] = json.loads(out_p)
        wall_f = 0.0
        if files:
            parts = workdir / f"esh4_x{copies}_in{files}"
            if not parts.exists():
                split_input(path, files, parts)
            with psycopg.connect(libpq, autocommit=True) as conn:  # the same records again, as new
                conn.execute("DELETE FROM streams")
                conn.execute("DELETE FROM event_rows")
            wall_f, _, out_f, _ = _run([*ledger, "ingest", "dbn", str(parts), "-f", "json"], env)
            assert sum(s["events_stored"] for s in json.loads(out_f)) == records
        # The baseline: the same rows, made by ledger's own encoder beforehand, by psql \copy.
        rows = workdir / f"esh4_x{copies}.copy"
        if not rows.exists():
            copy_text(path, 1, rows)
        with psycopg.connect(libpq, autocommit=True) as conn:
            # event_rows, the table ingest writes, with its keys and indexes (events is a view)
            conn.execute("CREATE TABLE bench_events (LIKE event_rows INCLUDING ALL)")
        columns = ", ".join(EVENT_COPY_COLUMNS + VENUE_FIELDS)
        wall_c, _, _, _ = _run(["psql", "-q", libpq, "-c", f"\\copy bench_events ({columns}) FROM '{rows}'"], env)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    assert ingest["events_stored"] == records and proj["events_applied"] == records, (ingest, proj)
    plain, plain_cpu = plain_book_rate(path)
    return {
        "records": records,
        "ingest_records_per_s": round(records / wall_i),
        "ingest_wall_s": round(wall_i, 2),
        "ingest_peak_mib": rss_i,
        "psql_copy_records_per_s": round(records / wall_c),
        "ingest_vs_psql_copy": round(wall_c / wall_i, 2),
        **({f"ingest_{files}_files_records_per_s": round(records / wall_f)} if files else {}),
        **({"files_vs_one_file": round(wall_i / wall_f, 2)} if files else {}),
        "project_records_per_s": round(records / wall_p),
        "project_wall_s": round(wall_p, 2),
        "project_peak_mib": rss_p,
        "plain_book_records_per_s": round(plain),
        "project_vs_plain_book": round(records / wall_p / plain, 2),
        # Like for like with the plain book, which is timed inside its process (no start-up,
        # no imports): the projection's own time for the stream, from its summary.
        "project_own_s": round(proj["seconds"], 2),
        "project_own_vs_plain_book": round(records / proj["seconds"] / plain, 2),
        # By CPU time (less swayed by other work on the machine than the wall clock): the
        # projection's counts every thread of it (its reader and committer too).
        "project_cpu_s": round(cpu_p, 2),
        "project_vs_plain_book_cpu": round(records / cpu_p / plain_cpu, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=15, help="copies of the ESH4 day (68,792 records each)")
    parser.add_argument("--repeat", type=int, default=1, help="runs; medians are printed")
    parser.add_argument("--files", type=int, default=0, help="also ingest the records cut into this many files")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated files here")
    args = parser.parse_args()
    if shutil.which("psql") is None:
        raise SystemExit("psql is not on PATH: it is the baseline")
    server = os.environ.get("LEDGER_BENCH_DATABASE_URL") or DEFAULT_SERVER
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        runs = [bench(args.copies, args.files, server, workdir) for _ in range(args.repeat)]
    result = {key: statistics.median(run[key] for run in runs) for key in runs[0]}  # type: ignore[type-var]
    result = {k: round(v) if isinstance(runs[0][k], int) else round(v, 2) for k, v in result.items()}  # type: ignore[call-overload]
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value:>12,}" if isinstance(value, int) else f"{key:<{width}}  {value:>12}")


if __name__ == "__main__":
    main()
