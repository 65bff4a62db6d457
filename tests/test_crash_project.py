"""kill -9 of `ledger project` at random points, some of them in the middle of writing a
book snapshot, then a re-run with --from-snapshot: the L1 export is byte-identical to an
undisturbed run's, and no half-written snapshot is ever loaded. The L1 also equals an
expectation independent of ledger's code: the naive model of tests/naive_l1.py for
generated data, the reference L1 file for the real sample."""

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

from benchmarks.generate_l3 import generate
from tests.children import track
from tests.conftest import V31, V31_EXPECTED
from tests.naive_l1 import assert_same_l1, export_lines, naive_l1_of_file
from tests.test_snapshots import export

# Runs the CLI with Snapshots.save slowed down: it leaves a marker file while a snapshot
# row is written but not yet committed, so the test can kill the process right there.
_SLOW_SNAPSHOTS = """
import pathlib, sys, time
from ledger.storage import projection
marker = pathlib.Path(sys.argv[1])
save = projection.Snapshots.save
def slow_save(self, *args, **kwargs):
    save(self, *args, **kwargs)
    marker.touch()
    time.sleep(0.05)
    marker.unlink()
projection.Snapshots.save = slow_save
from ledger.cli import main
sys.argv = ["ledger", *sys.argv[2:]]
main()
"""


def _project(url: URL, stream: str, marker: Path, every: int = 7000) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LEDGER_DATABASE_URL": url.render_as_string(hide_password=False)}
    args = ["project", "--stream", stream, "--snapshot-every", str(every), "--from-snapshot"]
    return track(
        subprocess.Popen(
            [sys.executable, "-c", _SLOW_SNAPSHOTS, str(marker), *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    )


def _ingest(url: URL, path: Path, stream: str) -> None:
    env = {**os.environ, "LEDGER_DATABASE_URL": url.render_as_string(hide_password=False)}
    subprocess.run(
        [sys.executable, "-m", "ledger.cli", "ingest", "csv", str(path), "--stream", stream],
        env=env,
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def l3_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crash") / "l3.csv"
    with path.open("w", encoding="utf-8", newline="\n") as out:
        generate(150_000, 11, out)
    return path


@pytest.fixture(scope="module")
def naive_l1(l3_file: Path) -> list[str]:
    return naive_l1_of_file(l3_file)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_projector_resumes_to_the_undisturbed_l1(
    seed: int, database_url: URL, engine: Engine, tmp_path: Path, l3_file: Path, naive_l1: list[str]
) -> None:
    _ingest(database_url, l3_file, "csv:calm")
    _ingest(database_url, l3_file, "csv:killed")
    calm = _project(database_url, "csv:calm", tmp_path / "calm-marker")
    assert calm.wait(timeout=300) == 0, calm.stderr.read() if calm.stderr else ""
    rng = random.Random(seed)
    marker = tmp_path / "marker"
    kills = in_snapshot = 0
    for attempt in range(6):
        proc = _project(database_url, "csv:killed", marker)
        if attempt % 2 == 0:  # kill while a snapshot row is written but not committed
            deadline = time.monotonic() + 20
            while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
            in_snapshot += marker.exists()
        else:  # kill anywhere
            time.sleep(rng.uniform(0.2, 1.5))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        marker.unlink(missing_ok=True)
        kills += 1
    final = _project(database_url, "csv:killed", marker)
    assert final.wait(timeout=300) == 0, final.stderr.read() if final.stderr else ""
    assert kills >= 2 and in_snapshot >= 1
    assert export(engine, "csv:killed") == export(engine, "csv:calm")
    with engine.connect() as conn:
        counts = conn.execute(
            sa.text("SELECT s.name, count(*) FROM l1 JOIN streams s ON s.id = l1.stream_id GROUP BY s.name ORDER BY 1")
        ).all()
    assert counts[0][1] == counts[1][1] > 10_000
    # Independent of ledger's code: the naive model's L1 of the same file.
    assert_same_l1(export_lines(export(engine, "csv:killed")), naive_l1)


@pytest.mark.slow
def test_killed_projector_of_the_sample_gives_the_reference_l1(
    database_url: URL, engine: Engine, tmp_path: Path
) -> None:
    _ingest(database_url, V31, "csv:sample")
    rng = random.Random(5)
    marker = tmp_path / "marker"
    kills = 0
    for attempt in range(5):
        proc = _project(database_url, "csv:sample", marker, every=3000)
        deadline = time.monotonic() + 20
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        if attempt % 2:  # after the snapshot's commit, somewhere in the next chunks
            time.sleep(rng.uniform(0.06, 0.1))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        marker.unlink(missing_ok=True)
        kills += 1
    final = _project(database_url, "csv:sample", marker, every=3000)
    assert final.wait(timeout=300) == 0, final.stderr.read() if final.stderr else ""
    assert kills >= 3
    # The reference file is row for row what the sample's L1 must be.
    assert_same_l1(export_lines(export(engine, "csv:sample")), export_lines(V31_EXPECTED.read_bytes()))
