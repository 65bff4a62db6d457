"""Soak test: kill -9 and resume, again and again, for a given number of minutes.

Each round ingests a generated L3 file into a new stream and projects it, killing each
command with SIGKILL at random moments and starting it again until it completes; then it
compares the round's events, gaps, rejects and L1 export with an undisturbed run's. The
undisturbed run's L1 is itself compared with an expectation independent of ledger's code,
the naive model of tests/naive_l1.py. It prints the number of kills survived and every
difference found (there should be none).

    python benchmarks/soak.py --minutes 10
    python benchmarks/soak.py --minutes 2 -n 100000 --seed 3
    python benchmarks/soak.py --minutes 5 --follow

With ``--follow`` the projection of each round is ``ledger project --follow``, running
while the ingest runs (both killed at random moments and started again); once the ingest
is done, a last follower catches up and is stopped with SIGTERM. The data then has rows
out of order but no missing ones, so the follower waits at each passing gap instead of
skipping it.

The server: LEDGER_BENCH_DATABASE_URL (an admin URL; a scratch database is created and
dropped), else postgres on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import secrets
import signal
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
sys.path.insert(1, str(Path(__file__).parents[1]))
from bench_csv import DEFAULT_SERVER
from generate_l3 import generate

from tests.naive_l1 import assert_same_l1, export_lines, naive_l1_of_file

_STATE = {
    "events": "SELECT seq, kind, order_id, side, price, size, ts, raw FROM events WHERE stream_id = %s ORDER BY seq",
    "gaps": "SELECT first_seq, last_seq, status FROM gaps WHERE stream_id = %s ORDER BY first_seq, status",
    "rejects": "SELECT line_no, raw, reason FROM rejects WHERE stream_id = %s ORDER BY line_no",
    "l1": "SELECT seq, ts, bid_price, bid_size, ask_price, ask_size FROM l1 WHERE stream_id = %s ORDER BY seq",
}


def _digest(conn: psycopg.Connection, stream: str) -> dict[str, str]:
    [sid] = conn.execute("SELECT id FROM streams WHERE name = %s", (stream,)).fetchone() or [None]
    out = {}
    for key, query in _STATE.items():
        digest = hashlib.sha256()
        for row in conn.execute(query, (sid,)):  # type: ignore[arg-type]
            digest.update(repr(row).encode())
        out[key] = digest.hexdigest()
    return out


def _until_done(args: list[str], env: dict[str, str], rng: random.Random, max_wait: float) -> int:
    """Run ledger with ``args``, killing it at random moments until a run completes; return kills."""
    kills = 0
    while True:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            code = proc.wait(timeout=rng.uniform(0.3, max_wait))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        if code not in (0, 3):
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise SystemExit(f"ledger {' '.join(args)} failed with {code}:\n{err}")
        return kills


def _head_projected(url: str, stream: str) -> bool:
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        row = conn.execute(
            "SELECT (SELECT max(seq) FROM events e WHERE e.stream_id = s.id),"
            " (SELECT last_seq FROM projector_positions p WHERE p.stream_id = s.id) FROM streams s WHERE s.name = %s",
            (stream,),
        ).fetchone()
    return row is not None and row[0] is not None and row[0] == row[1]


def _follow_round(
    ingest: list[str], follow: list[str], env: dict[str, str], url: str, rng: random.Random, stream: str
) -> int:
    """Ingest (killed and resumed) while followers are killed and restarted; then one last
    follower catches up. Returns the kills."""
    kills: list[int] = []
    ingesting = threading.Thread(target=lambda: kills.append(_until_done([*ingest, "--stream", stream], env, rng, 1.5)))
    ingesting.start()
    followers = 0
    cmd = [sys.executable, "-m", "ledger.cli", *follow, "--stream", stream]
    while ingesting.is_alive():
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        followers += 1
    ingesting.join()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started = time.monotonic()
    deadline = started + 300
    # Caught up, and running long enough to have its signal handlers (a SIGTERM while
    # Python starts ends the process the default way).
    while not _head_projected(url, stream) or time.monotonic() - started < 2.0:
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise SystemExit(f"the last follower of {stream} did not catch up:\n{err}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    if proc.wait(timeout=60) != 0:
        raise SystemExit(f"the last follower of {stream} exited with {proc.returncode}")
    return kills[0] + followers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("-n", type=int, default=200_000, help="events per round")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--follow", action="store_true", help="project with --follow while ingesting")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ledger-soak-"))
    data = workdir / "l3.csv"
    with data.open("w", encoding="utf-8", newline="\n") as out:
        generate(args.n, args.seed, out, swap_rate=0.01, gap_rate=0.0 if args.follow else 0.0005)
    server = make_url(os.environ.get("LEDGER_BENCH_DATABASE_URL") or DEFAULT_SERVER)
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"ledger_soak_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = server.set(database=name).render_as_string(hide_password=False)
    env = {**os.environ, "LEDGER_DATABASE_URL": url}
    rng = random.Random(args.seed)
    rounds = kills = 0
    differences: list[str] = []
    try:
        ingest = ["ingest", "csv", str(data), "--batch-size", "5000"]
        project = ["project", "--skip-gaps", "--snapshot-every", "20000"]
        _until_done([*ingest, "--stream", "csv:calm"], env, rng, float("inf"))
        _until_done([*project, "--stream", "csv:calm"], env, rng, float("inf"))
        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            reference = _digest(conn, "csv:calm")
        # The undisturbed run, which every round must equal, against the naive model.
        calm_l1 = workdir / "l1_calm.csv"
        _until_done(["export", "l1", "csv:calm", "-o", str(calm_l1)], env, rng, float("inf"))
        try:
            assert_same_l1(export_lines(calm_l1.read_bytes()), naive_l1_of_file(data))
        except AssertionError as e:
            differences.append(f"the undisturbed run's L1 is not the naive model's: {e}")
        deadline = time.monotonic() + args.minutes * 60
        while time.monotonic() < deadline:
            rounds += 1
            stream = f"csv:round{rounds}"
            if args.follow:
                follow = ["project", "--follow", "--snapshot-every", "20000", "--poll", "0.2"]
                kills += _follow_round(ingest, follow, env, url, rng, stream)
            else:
                kills += _until_done([*ingest, "--stream", stream], env, rng, 1.5)
                kills += _until_done([*project, "--stream", stream], env, rng, 1.5)
            with psycopg.connect(url.replace("+psycopg", "")) as conn:
                got = _digest(conn, stream)
                for key in reference:
                    if got[key] != reference[key]:
                        differences.append(f"round {rounds} ({stream}): {key} differs")
                for table in ("l1", "book_snapshots", "projector_positions", "gaps", "rejects", "ingest_checkpoints"):
                    conn.execute(
                        sql.SQL("DELETE FROM {} WHERE stream_id = (SELECT id FROM streams WHERE name = %s)").format(
                            sql.Identifier(table)
                        ),
                        (stream,),
                    )
                conn.execute(
                    "DELETE FROM event_rows WHERE stream_id = (SELECT id FROM streams WHERE name = %s)", (stream,)
                )
                conn.commit()
            print(f"round {rounds}: {kills} kills survived so far, {len(differences)} differences", flush=True)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    print(f"soak: {rounds} rounds, {kills} kills survived, {len(differences)} differences")
    for line in differences:
        print("  " + line)
    sys.exit(1 if differences else 0)


if __name__ == "__main__":
    main()
