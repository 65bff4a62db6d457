"""Benchmark book snapshots on a long log.

On a log of N generated events (default 10,000,000) it measures, each as a child process:

1. ``ledger project`` with snapshots off, from the first event;
2. ``ledger project --rebuild`` with snapshots off and with a snapshot every S events
   (default 1,000,000), alternating ``--repeat`` times: the cost of snapshots is the ratio
   of the means, less one;
3. a restart after a crash: K more events arrive (default 10,000), then
   ``ledger project --from-snapshot`` must rebuild the book from the newest snapshot and
   catch up; compared with the full rebuild (2);
4. ``ledger book --at-seq`` at R random seqs (default 5).

    python benchmarks/bench_snapshots.py                     # N = 10,000,000
    python benchmarks/bench_snapshots.py -n 2000000 --every 200000

The server: LEDGER_BENCH_DATABASE_URL (an admin URL; a scratch database is created and
dropped), else postgres on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sys
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).parent))
from bench_csv import DEFAULT_SERVER, _run
from generate_l3 import generate

FIRST_SEQ = 1627942268920653171


def _split(source: Path, first: Path, second: Path, n: int) -> None:
    with source.open("rb") as src, first.open("wb") as a, second.open("wb") as b:
        header = src.readline()
        a.write(header)
        b.write(header)
        for i, line in enumerate(src):
            (a if i < n else b).write(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=10_000_000, help="events in the log")
    parser.add_argument("--every", type=int, default=1_000_000, help="events between snapshots")
    parser.add_argument("--more", type=int, default=10_000, help="events arriving after the crash")
    parser.add_argument("--books", type=int, default=5, help="random seqs for ledger book --at-seq")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=2, help="alternating rebuilds with snapshots off and on")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ledger-bench")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    total = args.n + args.more
    whole = args.workdir / f"l3_{total}_{args.seed}.csv"
    if not whole.exists():
        print(f"generating {total:,} events ...", flush=True)
        with whole.open("w", encoding="utf-8", newline="\n") as out:
            generate(total, args.seed, out)
    first, second = args.workdir / "part1.csv", args.workdir / "part2.csv"
    _split(whole, first, second, args.n)

    server = make_url(os.environ.get("LEDGER_BENCH_DATABASE_URL") or DEFAULT_SERVER)
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"ledger_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    env = {**os.environ, "LEDGER_DATABASE_URL": server.set(database=name).render_as_string(hide_password=False)}
    stream = "csv:bench"
    try:
        wall, rss, _ = _run(["ingest", "csv", str(first), "--stream", stream, "--batch-size", "50000"], env)
        print(f"ingest {args.n:,} events: {wall:.1f}s ({args.n / wall:,.0f} ev/s), peak {rss} MiB", flush=True)
        first_run, rss_first, _ = _run(["project", "--snapshot-every", "0"], env)
        print(f"project, snapshots off: {first_run:.1f}s ({args.n / first_run:,.0f} ev/s), peak {rss_first} MiB")
        # Snapshots on against off, each a full --rebuild (which first deletes the L1 rows of
        # the run before), alternating, so that both pay the same for the deletion and the
        # table's dead rows.
        offs, ons = [], []
        for _ in range(args.repeat):
            off, rss_off, _ = _run(["project", "--rebuild", "--snapshot-every", "0"], env)
            on, rss_on, _ = _run(["project", "--rebuild", "--snapshot-every", str(args.every)], env)
            offs.append(off)
            ons.append(on)
            print(
                f"project --rebuild: snapshots off {off:.1f}s ({args.n / off:,.0f} ev/s), a snapshot every "
                f"{args.every:,} {on:.1f}s ({args.n / on:,.0f} ev/s), peak {max(rss_off, rss_on)} MiB",
                flush=True,
            )
        off, on = sum(offs) / len(offs), sum(ons) / len(ons)
        print(f"snapshots cost {100 * (on / off - 1):+.1f}% (mean of {args.repeat} alternating pairs)", flush=True)
        # The worst case: the crash came just before a snapshot was due, so the newest one is
        # almost `every` events behind the position.
        with psycopg.connect(env["LEDGER_DATABASE_URL"].replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute("DELETE FROM book_snapshots WHERE seq = (SELECT max(seq) FROM book_snapshots)")
            [[behind]] = conn.execute(
                "SELECT p.last_seq - max(b.seq) FROM projector_positions p JOIN book_snapshots b USING (stream_id)"
                " GROUP BY p.last_seq"
            ).fetchall()
        _run(["ingest", "csv", str(second), "--stream", stream], env)
        restart, rss_r, _ = _run(["project", "--from-snapshot", "--snapshot-every", str(args.every)], env)
        print(
            f"restart after a crash, newest snapshot {behind:,} events behind, {args.more:,} new events: "
            f"{restart:.1f}s = {restart / on:.3f} of the full rebuild, peak {rss_r} MiB",
            flush=True,
        )
        rng = random.Random(args.seed)
        for _ in range(args.books):
            seq = FIRST_SEQ + rng.randrange(args.n)
            wall, rss_b, _ = _run(["book", stream, "--at-seq", str(seq), "--depth", "5"], env)
            print(f"ledger book --at-seq {seq}: {wall:.2f}s, peak {rss_b} MiB", flush=True)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
