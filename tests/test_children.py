"""A test that fails leaves no child process running (tests/children.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_FAILING_TEST = """
import subprocess, sys
from pathlib import Path
from tests.children import track

IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(300)"
)

def test_fails_with_children_running():
    polite = track(subprocess.Popen(["sleep", "300"]))
    stubborn = track(subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE))
    stubborn.stdout.readline()  # its SIGTERM handler is in place
    Path(PIDS).write_text(f"{polite.pid} {stubborn.pid}")
    assert False, "a test that fails half-way"
"""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] if Path(f"/proc/{pid}").exists() else ""
    return state != "Z"


def test_children_of_a_failed_test_are_stopped_before_its_teardown(tmp_path: Path) -> None:
    pids = tmp_path / "children.pids"
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(_FAILING_TEST.replace("PIDS", repr(str(pids))))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.children", "-p", "no:cacheprovider", "-c", os.devnull,
         "--rootdir", str(tmp_path), str(test_file)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "a test that fails half-way" in done.stdout, done.stdout + done.stderr
    polite, stubborn = (int(p) for p in pids.read_text().split())
    deadline = time.monotonic() + 5
    while (_running(polite) or _running(stubborn)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(polite), "the child was left running"
    assert not _running(stubborn), "a child that ignores SIGTERM was left running"
