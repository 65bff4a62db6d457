"""kill -9 of `ledger ingest csv` at random moments, then a re-run: the log, gaps and
rejects end up exactly as an undisturbed run leaves them, and the L1 projected from the
log equals an expectation independent of ledger's code: the reference L1 file for the
real sample, a naive model (tests/naive_l1.py) for the altered copies of it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from ledger.services.project.batch import ProjectOptions, project
from ledger.venues.csv.format import HEADER
from tests.children import track
from tests.conftest import V31, V31_EXPECTED
from tests.naive_l1 import assert_same_l1, export_lines, naive_l1_of_file
from tests.test_snapshots import export


def _messy_file(path: Path, copies: int) -> Path:
    """Copies of the v3.1 sample with shifted seqs, some bad rows, some missing rows and
    some rows swapped, so gaps, late arrivals and rejects all occur."""
    rng = random.Random(7)
    lines = V31.read_text(encoding="utf-8-sig").splitlines()[1:]
    with path.open("w", encoding="utf-8") as out:
        out.write("\ufeff" + HEADER + "\n")
        for k in range(copies):
            shift = k * 100_000
            block = []
            for line in lines:
                seq, rest = line.split(",", 1)
                block.append(f"{int(seq) + shift},{rest}")
            for _ in range(20):
                i = rng.randrange(len(block) - 1)
                block[i], block[i + 1] = block[i + 1], block[i]
            for _ in range(5):
                del block[rng.randrange(len(block))]
            for _ in range(3):
                block.insert(rng.randrange(len(block)), "1.62794E+18,1,BUY,1,1,,,,,,,,,,,2021-08-03 01:00:01 UTC")
            out.write("\n".join(block) + "\n")
    return path


def _ingest(url: URL, path: Path, stream: str, batch_size: int = 3000) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LEDGER_DATABASE_URL": url.render_as_string(hide_password=False)}
    args = ["ingest", "csv", str(path), "--stream", stream, "--batch-size", str(batch_size)]
    return track(
        subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    )


def _state(engine: Engine, stream: str) -> dict[str, list[tuple[object, ...]]]:
    queries = {
        "events": "SELECT seq, kind, order_id, side, price, size, ts, raw FROM events"
        " WHERE stream_id = :s ORDER BY seq",
        "gaps": "SELECT first_seq, last_seq, status FROM gaps WHERE stream_id = :s ORDER BY first_seq, status",
        "rejects": "SELECT source, line_no, raw, reason FROM rejects WHERE stream_id = :s ORDER BY line_no",
    }
    with engine.connect() as conn:
        sid = conn.execute(sa.text("SELECT id FROM streams WHERE name = :n"), {"n": stream}).scalar_one()
        return {k: [tuple(r) for r in conn.execute(sa.text(q), {"s": sid})] for k, q in queries.items()}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])  # 4 kills each: 20 kill points
def test_killed_ingest_resumes_to_the_undisturbed_result(
    seed: int, database_url: URL, engine: Engine, tmp_path: Path
) -> None:
    path = _messy_file(tmp_path / "messy.csv", copies=16)
    started = time.monotonic()
    assert _ingest(database_url, path, "csv:calm").wait(timeout=300) == 0
    calm = time.monotonic() - started
    rng = random.Random(seed)
    kills = 0
    for _ in range(4):
        proc = _ingest(database_url, path, "csv:killed")
        # Each run resumes after the last batch of the one before, so four runs of at most a
        # fifth of an undisturbed run's time are all killed, however fast the machine is.
        time.sleep(rng.uniform(0.05, 0.2) * calm + 0.2)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    final = _ingest(database_url, path, "csv:killed")
    assert final.wait(timeout=300) == 0, final.stderr.read() if final.stderr else ""
    assert kills >= 3, "the ingest finished before it could be killed: make the file larger"
    calm, killed = _state(engine, "csv:calm"), _state(engine, "csv:killed")
    assert len(calm["events"]) > 200_000
    assert killed["events"] == calm["events"]
    assert killed["rejects"] == calm["rejects"]
    assert killed["gaps"] == calm["gaps"]
    # Independent of ledger's code: the book of the surviving log, by the naive model.
    # (The copies miss rows, so the projector skips gaps; both ignore unknown orders.)
    project(engine, streams=["csv:killed"], options=ProjectOptions(skip_gaps=True))
    assert_same_l1(export_lines(export(engine, "csv:killed")), naive_l1_of_file(path))


def _events(engine: Engine, stream: str) -> int:
    with engine.connect() as conn:
        query = "SELECT count(*) FROM events WHERE stream_id = (SELECT id FROM streams WHERE name = :n)"
        return int(conn.execute(sa.text(query), {"n": stream}).scalar_one())


@pytest.mark.slow
def test_killed_ingest_of_the_sample_projects_to_the_reference_l1(
    database_url: URL, engine: Engine, tmp_path: Path
) -> None:
    rng = random.Random(9)
    kills = 0
    for _ in range(4):
        proc = _ingest(database_url, V31, "csv:sample", batch_size=500)
        # Kill it once it has committed a batch more than the run before: mid-file.
        before = _events(engine, "csv:sample")
        while proc.poll() is None and _events(engine, "csv:sample") == before:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.03))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    final = _ingest(database_url, V31, "csv:sample", batch_size=500)
    assert final.wait(timeout=300) == 0, final.stderr.read() if final.stderr else ""
    assert kills >= 2, "the ingest finished before it could be killed"
    project(engine, streams=["csv:sample"])
    # The reference file is row for row what the sample's L1 must be.
    assert_same_l1(export_lines(export(engine, "csv:sample")), export_lines(V31_EXPECTED.read_bytes()))
