"""Benchmark the CSV pipeline: ingest and project N generated L3 events.

For each size N it generates a seeded L3 CSV (``generate_l3.py``), creates a fresh
database, then runs ``ledger ingest csv`` and ``ledger project`` as child processes and
prints, for each, events/s, wall time and the child's peak memory (max RSS). Running two
sizes shows whether memory grows with N.

    python benchmarks/bench_csv.py                       # N = 1,000,000
    python benchmarks/bench_csv.py --sizes 200000,1000000 --repeat 3

The server: LEDGER_BENCH_DATABASE_URL (an admin URL on which a scratch database is
created and dropped), else LEDGER_DATABASE_URL's server; postgres on 127.0.0.1 otherwise.
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
from generate_l3 import generate

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _run(args: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Run ledger with ``args``; return (wall seconds, peak RSS in MiB, stdout)."""
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
    return wall, usage.ru_maxrss // 1024, out.decode()


def bench(n: int, seed: int, server: str, workdir: Path) -> dict[str, object]:
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
    try:
        _run(["db", "upgrade"], env)
        wall_i, rss_i, out_i = _run(["ingest", "csv", str(csv_path), "--stream", "csv:bench", "--json"], env)
        ingest = json.loads(out_i)
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
        "project_events_per_s": round(n / wall_p),
        "project_wall_s": round(wall_p, 2),
        "project_peak_mib": rss_p,
        "l1_rows": proj["l1_rows"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000", help="comma-separated event counts (default 1000000)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; the best is printed too")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ledger-bench")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    args = parser.parse_args()
    server = os.environ.get("LEDGER_BENCH_DATABASE_URL") or DEFAULT_SERVER
    if "LEDGER_BENCH_DATABASE_URL" not in os.environ and os.environ.get("LEDGER_DATABASE_URL"):
        server = make_url(os.environ["LEDGER_DATABASE_URL"]).set(database="postgres").render_as_string(False)
    args.workdir.mkdir(parents=True, exist_ok=True)
    for n in (int(s) for s in args.sizes.split(",")):
        results = [bench(n, args.seed, server, args.workdir) for _ in range(args.repeat)]
        for r in results:
            if args.json:
                print(json.dumps(r))
            else:
                print(
                    f"N={r['events']:>10,}  ingest {r['ingest_events_per_s']:>8,} ev/s {r['ingest_wall_s']:>7}s "
                    f"peak {r['ingest_peak_mib']:>4} MiB | project {r['project_events_per_s']:>8,} ev/s "
                    f"{r['project_wall_s']:>7}s peak {r['project_peak_mib']:>4} MiB"
                )
        if len(results) > 1 and not args.json:
            print(
                f"best of {len(results)}: ingest {max(int(r['ingest_events_per_s']) for r in results):,} ev/s, "  # type: ignore[call-overload]
                f"project {max(int(r['project_events_per_s']) for r in results):,} ev/s"  # type: ignore[call-overload]
            )


if __name__ == "__main__":
    main()
