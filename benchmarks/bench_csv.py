r"""Benchmark the CSV pipeline: ingest and project N generated L3 events.

For each size N it generates a seeded L3 CSV (``generate_l3.py``), creates a fresh
database, then runs ``ledger ingest csv`` and ``ledger project`` as child processes and
prints, for each, events/s, wall time and the child's peak memory (max RSS). Running two
sizes shows whether memory grows with N.

In the same database it also times ``psql \copy`` of the same file into a table of 16 text
columns keyed on seq_num (``CREATE TABLE copy_baseline (seq_num text PRIMARY KEY, ...)``),
the fastest PostgreSQL itself takes the file, and prints ingest's events/s as a ratio of
it; with ``--repeat`` the two alternate (which goes first alternates too) and the median
ratio is printed. ``--no-project`` leaves ``ledger project`` out.

Wall time on a busy machine says more about the neighbours than about ingest, so the CPU
time of each side is printed too (when the server runs on this machine): the client's
(``ledger``, ``psql``) and the server's (its backends for the scratch database, read from
/proc while they run). On an idle machine with a core for each, a pipeline runs at the pace
of its busier side: ``cpu ratio`` is psql's server CPU over the larger of ledger's client
and server CPU, the ratio such a machine would show.

    python benchmarks/bench_csv.py                       # N = 1,000,000
    python benchmarks/bench_csv.py --sizes 200000,1000000 --repeat 3
    python benchmarks/bench_csv.py --sizes 1000000,5000000 --repeat 5 --no-project

The server: LEDGER_BENCH_DATABASE_URL (an admin URL on which a scratch database is
created and dropped), else LEDGER_DATABASE_URL's server; postgres on 127.0.0.1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).parent))
from generate_l3 import generate

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


class _ServerCpu:
    """The CPU seconds the server's backends for one database spend while it runs (read
    from /proc every 50 ms: a backend that ends keeps its last reading); None when the
    server's processes cannot be read (another machine)."""

    def __init__(self, admin: str, database: str) -> None:
        self._admin, self._database = admin, database
        self._seen: dict[int, float] = {}
        self._done = threading.Event()
        self._readable = True
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _ServerCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def seconds(self) -> float | None:
        return sum(self._seen.values()) if self._readable and self._seen else None

    def _watch(self) -> None:
        query = "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
        with psycopg.connect(self._admin, autocommit=True) as conn:
            while not self._done.is_set():
                for (pid,) in conn.execute(query, (self._database,)).fetchall():
                    try:
                        with open(f"/proc/{pid}/stat") as stat:
                            fields = stat.read().rsplit(")", 1)[1].split()
                    except OSError:
                        continue
                    ticks = os.sysconf("SC_CLK_TCK")
                    self._seen[pid] = (int(fields[11]) + int(fields[12])) / ticks
                if not self._seen and not os.path.exists("/proc/self/stat"):
                    self._readable = False
                time.sleep(0.05)


def _run(args: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Run ledger with ``args``; return (wall seconds, peak RSS in MiB, stdout)."""
    wall, rss, out, _ = _run_timed(args, env)
    return wall, rss, out


def _run_timed(args: list[str], env: dict[str, str]) -> tuple[float, int, str, float]:
    """:func:`_run`, and the child's CPU seconds."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 3):
        raise SystemExit(f"ledger {' '.join(args)} failed ({proc.returncode}):\n{err.decode()}")
    return wall, usage.ru_maxrss // 1024, out.decode(), usage.ru_utime + usage.ru_stime


_BASELINE_COLUMNS = (
    "seq_num text PRIMARY KEY, add_order_id text, add_side text, add_price text, add_qty text, "
    "update_order_id text, update_side text, update_price text, update_qty text, delete_order_id text, "
    "delete_side text, trade_order_id text, trade_side text, trade_price text, trade_qty text, time text"
)


def _psql_copy(dsn: str, csv_path: Path, admin: str, database: str) -> tuple[float, float, float | None]:
    r"""``psql \copy`` of the file into a new keyed table of 16 text columns: its wall
    seconds, psql's CPU seconds and the server's."""
    psql = shutil.which("psql")
    if psql is None:
        raise SystemExit("psql is not on PATH (the baseline needs it); pass --no-copy")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS copy_baseline")
        conn.execute(f"CREATE TABLE copy_baseline ({_BASELINE_COLUMNS})")
        conn.execute("CHECKPOINT")
    copy = f"\\copy copy_baseline FROM '{csv_path}' WITH (FORMAT csv, HEADER true)"
    with _ServerCpu(admin, database) as server:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [psql, dsn, "-q", "-v", "ON_ERROR_STOP=1", "-c", copy], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"psql \\copy failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE copy_baseline")
    return wall, usage.ru_utime + usage.ru_stime, server.seconds


def bench(
    n: int, seed: int, server: str, workdir: Path, *, copy: bool = True, project: bool = True, copy_first: bool = False
) -> dict[str, object]:
    csv_path = workdir / f"l3_{n}_{seed}.csv"
    if not csv_path.exists():
        with csv_path.open("w", encoding="utf-8", newline="\n") as out:
            generate(n, seed, out)
    admin_url = make_url(server)
    admin = admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"ledger_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    env = {**os.environ, "LEDGER_DATABASE_URL": admin_url.set(database=name).render_as_string(hide_password=False)}
    dsn = admin_url.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    wall_c = cpu_c = server_c = None
    try:
        _run(["db", "upgrade"], env)
        if copy and copy_first:
            wall_c, cpu_c, server_c = _psql_copy(dsn, csv_path, admin, name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        with _ServerCpu(admin, name) as server_i:
            wall_i, rss_i, out_i, cpu_i = _run_timed(
                ["ingest", "csv", str(csv_path), "--stream", "csv:bench", "--json"], env
            )
        ingest = json.loads(out_i)
        if copy and not copy_first:
            wall_c, cpu_c, server_c = _psql_copy(dsn, csv_path, admin, name)
        proj = {"events_applied": n, "l1_rows": None}
        wall_p, rss_p = 0.0, 0
        if project:
            wall_p, rss_p, out_p = _run(["project", "--json"], env)
            [proj] = json.loads(out_p)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    assert ingest["events_stored"] == n and proj["events_applied"] == n, (ingest, proj)
    return {
        "events": n,
        "ingest_events_per_s": round(n / wall_i),
        "ingest_wall_s": round(wall_i, 2),
        "ingest_peak_mib": rss_i,
        "project_events_per_s": round(n / wall_p) if project else None,
        "project_wall_s": round(wall_p, 2) if project else None,
        "project_peak_mib": rss_p,
        "l1_rows": proj["l1_rows"],
        "copy_events_per_s": None if wall_c is None else round(n / wall_c),
        "ingest_to_copy": None if wall_c is None else round(wall_c / wall_i, 3),
        "ingest_client_cpu_s": round(cpu_i, 2),
        "ingest_server_cpu_s": None if server_i.seconds is None else round(server_i.seconds, 2),
        "copy_client_cpu_s": None if cpu_c is None else round(cpu_c, 2),
        "copy_server_cpu_s": None if server_c is None else round(server_c, 2),
        "cpu_ratio": (
            None if server_c is None or server_i.seconds is None else round(server_c / max(cpu_i, server_i.seconds), 3)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000", help="comma-separated event counts (default 1000000)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; the best is printed too")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ledger-bench")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    parser.add_argument("--no-copy", action="store_true", help="leave out the psql \\copy baseline")
    parser.add_argument("--no-project", action="store_true", help="leave out ledger project")
    args = parser.parse_args()
    server = os.environ.get("LEDGER_BENCH_DATABASE_URL") or DEFAULT_SERVER
    if "LEDGER_BENCH_DATABASE_URL" not in os.environ and os.environ.get("LEDGER_DATABASE_URL"):
        server = make_url(os.environ["LEDGER_DATABASE_URL"]).set(database="postgres").render_as_string(False)
    args.workdir.mkdir(parents=True, exist_ok=True)
    for n in (int(s) for s in args.sizes.split(",")):
        results = [
            bench(
                n,
                args.seed,
                server,
                args.workdir,
                copy=not args.no_copy,
                project=not args.no_project,
                copy_first=i % 2 == 1,
            )
            for i in range(args.repeat)
        ]
        for r in results:
            if args.json:
                print(json.dumps(r))
            else:
                print(
                    f"N={r['events']:>10,}  ingest {r['ingest_events_per_s']:>8,} ev/s {r['ingest_wall_s']:>7}s "
                    f"peak {r['ingest_peak_mib']:>4} MiB"
                    + (
                        ""
                        if r["project_events_per_s"] is None
                        else f" | project {r['project_events_per_s']:>8,} ev/s "
                        f"{r['project_wall_s']:>7}s peak {r['project_peak_mib']:>4} MiB"
                    )
                    + (
                        ""
                        if r["copy_events_per_s"] is None
                        else f" | psql \\copy {r['copy_events_per_s']:>9,} ev/s, ingest/copy {r['ingest_to_copy']}"
                    )
                    + (
                        ""
                        if r["cpu_ratio"] is None
                        else f"\n    cpu: ledger {r['ingest_client_cpu_s']} s + server {r['ingest_server_cpu_s']} s; "
                        f"psql {r['copy_client_cpu_s']} s + server {r['copy_server_cpu_s']} s; "
                        f"cpu ratio {r['cpu_ratio']}"
                    )
                )
        ratios = [float(r["ingest_to_copy"]) for r in results if r["ingest_to_copy"] is not None]  # type: ignore[arg-type]
        if ratios and not args.json:
            print(
                f"N={n:,}: ingest / psql \\copy, median of {len(ratios)}: {statistics.median(ratios):.3f} "
                f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
            )
        cpu = [float(r["cpu_ratio"]) for r in results if r["cpu_ratio"] is not None]  # type: ignore[arg-type]
        if cpu and not args.json:
            print(f"N={n:,}: cpu ratio, median of {len(cpu)}: {statistics.median(cpu):.3f}")
        if len(results) > 1 and not args.json:
            print(
                f"best of {len(results)}: ingest {max(int(r['ingest_events_per_s']) for r in results):,} ev/s"  # type: ignore[call-overload]
                + (
                    ""
                    if args.no_project
                    else f", project {max(int(r['project_events_per_s']) for r in results):,} ev/s"  # type: ignore[call-overload]
                )
            )


if __name__ == "__main__":
    main()
