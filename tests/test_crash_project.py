"""kill -9 of `ledger project` at random points, some of them in the middle of writing a
book snapshot, then a re-run with --from-snapshot: the L1 export is byte-identical to an
undisturbed run's, and no half-written snapshot is ever loaded."""

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


def _project(url: URL, stream: str, marker: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LEDGER_DATABASE_URL": url.render_as_string(hide_password=False)}
    args = ["project", "--stream", stream, "--snapshot-every", "7000", "--from-snapshot"]
    return subprocess.Popen(
        [sys.executable, "-c", _SLOW_SNAPSHOTS, str(marker), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
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


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_projector_resumes_to_the_undisturbed_l1(
    seed: int, database_url: URL, engine: Engine, tmp_path: Path, l3_file: Path
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
