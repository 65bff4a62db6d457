"""Signals: Ctrl-C (and SIGTERM, SIGHUP) stop `ingest csv` and `project` cleanly, with what
is complete committed, a summary, how to resume, and exit code 128 + the signal; the
commands that run until stopped end with 0; and whatever the command and the signal, the
embedded PostgreSQL is stopped when the command was its last user."""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from benchmarks.generate_l3 import generate
from ledger.services.project.batch import project, rebuild
from tests.children import track
from tests.test_embedded import alive, postmaster_pid, wait_until
from tests.test_snapshots import export


def _rows(n: int, seed: int) -> tuple[str, list[str]]:
    out = io.StringIO()
    generate(n, seed, out)
    header, *rows = out.getvalue().splitlines(keepends=True)
    return header, rows


def _ledger(env: dict[str, str], *args: str, stdin: int | None = None) -> subprocess.Popen[bytes]:
    return track(
        subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", *args],
            env=env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    )


def _wrapped(env: dict[str, str], wrapper: str, marker: Path, *args: str) -> subprocess.Popen[bytes]:
    """The CLI run by ``wrapper`` (which patches something first) with ``marker`` as argv[1]."""
    return track(
        subprocess.Popen(
            [sys.executable, "-c", wrapper, str(marker), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    )


def _until(condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"the command exited ({proc.returncode}) while waiting for {what}: {err}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _drained(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the child has read everything written to its stdin pipe so far."""
    assert proc.stdin is not None
    unread = bytearray(4)
    fcntl.ioctl(proc.stdin.fileno(), termios.FIONREAD, unread)
    return int.from_bytes(unread, sys.byteorder) == 0


def _count(engine: Engine, query: str, **params: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(query), params).scalar_one())


def _events(engine: Engine, stream: str) -> int:
    return _count(
        engine, "SELECT count(*) FROM events WHERE stream_id = (SELECT id FROM streams WHERE name = :n)", n=stream
    )


# --------------------------------------------------------------------------- ingest csv


@pytest.mark.parametrize("flush", [None, "0.2"], ids=["no-flush-interval", "flush-interval"])
def test_ctrl_c_of_ingest_from_a_pipe_stores_what_was_read_and_says_how_to_resume(
    db_env: dict[str, str], engine: Engine, flush: str | None
) -> None:
    """The README's `tail -f file | ledger ingest csv -` can only end this way."""
    header, rows = _rows(2000, seed=21)
    extra = ["--flush-interval", flush] if flush else []
    proc = _ledger(db_env, "ingest", "csv", "-", "--stream", "csv:live", *extra, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    # 1500 whole lines and the start of the next one; the pipe stays open, as under `tail -f`
    proc.stdin.write((header + "".join(rows[:1500]) + rows[1500][:12]).encode())
    proc.stdin.flush()
    _until(lambda: _drained(proc), "the lines to be read", proc)
    if flush:
        _until(lambda: _events(engine, "csv:live") == 1500, "the lines to be stored", proc)
    time.sleep(0.5)  # parsed into a batch
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert "events stored   1500" in out.decode(), out.decode()
    assert "run the same command again to resume" in err.decode(), err.decode()
    assert "Traceback" not in err.decode() and "Aborted" not in err.decode()
    assert _events(engine, "csv:live") == 1500
    assert _count(engine, "SELECT count(*) FROM rejects") == 0, "the unfinished last line is not stored"


def test_ctrl_c_of_ingest_of_a_file_commits_and_the_next_run_resumes(
    db_env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    header, rows = _rows(200_000, seed=22)
    path = tmp_path / "big.csv"
    path.write_text(header + "".join(rows), encoding="utf-8")
    proc = _ledger(db_env, "ingest", "csv", str(path), "--stream", "csv:big", "--batch-size", "1000", "--json")
    _until(lambda: _events(engine, "csv:big") > 0, "a first batch", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    stored = _events(engine, "csv:big")
    assert stored < len(rows), "the ingest finished before it could be interrupted: make the file larger"
    assert proc.returncode == 130, err.decode()
    summary = json.loads(out)
    assert summary["interrupted"] is True and summary["events_stored"] == stored
    assert "run the same command again to resume" in err.decode(), err.decode()
    again = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "ingest", "csv", str(path), "--stream", "csv:big", "--json"],
        env=db_env,
        capture_output=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr.decode()
    resumed = json.loads(again.stdout)
    assert resumed["resumed_from_line"] == stored + 2  # after the header and the lines stored
    assert resumed["duplicates"] == 0 and resumed["interrupted"] is False
    assert _events(engine, "csv:big") == len(rows)


# --------------------------------------------------------------------------- project

# Runs the CLI with each snapshot save slowed down, so the projection takes seconds.
_SLOW_SNAPSHOTS = """
import pathlib, sys, time
from ledger.storage import projection
marker = pathlib.Path(sys.argv[1])
save = projection.Snapshots.save
def slow_save(self, *args, **kwargs):
    save(self, *args, **kwargs)
    marker.touch()
    time.sleep(0.2)
projection.Snapshots.save = slow_save
from ledger.cli import main
sys.argv = ["ledger", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_of_project_commits_reports_and_the_next_run_goes_on(
    db_env: dict[str, str], engine: Engine, tmp_path: Path, sig: signal.Signals
) -> None:
    header, rows = _rows(40_000, seed=23)
    path = tmp_path / "p.csv"
    path.write_text(header + "".join(rows), encoding="utf-8")
    assert (
        subprocess.run(
            [sys.executable, "-m", "ledger.cli", "ingest", "csv", str(path), "--stream", "csv:p"],
            env=db_env,
            capture_output=True,
            timeout=120,
        ).returncode
        == 0
    )
    marker = tmp_path / "snapshot-taken"
    proc = _wrapped(db_env, _SLOW_SNAPSHOTS, marker, "project", "--stream", "csv:p", "--snapshot-every", "2000")
    _until(marker.exists, "a first snapshot", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err.decode()
    position = _count(engine, "SELECT last_seq FROM projector_positions")
    head = _count(engine, "SELECT max(seq) FROM events")
    assert position < head, "the projection finished before it could be interrupted"
    assert "stream csv:p: ok" in out.decode() and f"position {position}" in out.decode(), out.decode()
    assert "run the same command again to resume" in err.decode(), err.decode()
    assert "Traceback" not in err.decode() and "Aborted" not in err.decode()
    again = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "project", "--stream", "csv:p"],
        env=db_env,
        capture_output=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr.decode()
    assert _count(engine, "SELECT last_seq FROM projector_positions") == head
    resumed = export(engine, "csv:p")
    rebuild(engine, ["csv:p"])
    project(engine, streams=["csv:p"])
    assert export(engine, "csv:p") == resumed  # nothing lost or repeated


# --------------------------------------------------------------------------- status --watch

# Runs the CLI with each status query taking a second, a marker file telling when one runs.
_SLOW_STATUS = """
import pathlib, sys
import sqlalchemy as sa
from ledger.services.read import status
marker = pathlib.Path(sys.argv[1])
real = status.stream_status
def slow(conn, name=None):
    marker.touch()
    conn.execute(sa.text("SELECT pg_sleep(1)"))
    return real(conn, name)
status.stream_status = slow
from ledger.cli import main
sys.argv = ["ledger", *sys.argv[2:]]
main()
"""


def test_ctrl_c_of_status_watch_during_a_query_ends_it_cleanly(
    db_env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO streams (name, source) VALUES ('coinbase:X-USD', 'coinbase')"))
    marker = tmp_path / "querying"
    proc = _wrapped(db_env, _SLOW_STATUS, marker, "status", "--watch", "--interval", "0.1", "--json")
    _until(marker.exists, "a first query", proc)
    time.sleep(0.2)  # inside pg_sleep
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert err.decode() == "", err.decode()
    assert json.loads(out.decode().splitlines()[-1])[0]["stream"] == "coinbase:X-USD"


# --------------------------------------------------------------------------- the embedded server


@pytest.fixture(scope="module")
def embedded_env() -> Iterator[tuple[dict[str, str], Path]]:
    """The environment of a ledger using its embedded PostgreSQL in a home of its own, with
    one stream ingested (which created the cluster)."""
    home = Path(tempfile.mkdtemp(prefix="ledger-signals-"))
    os.chmod(home, 0o755)  # the server's own user enters it when run as root
    env = {k: v for k, v in os.environ.items() if k != "LEDGER_DATABASE_URL"} | {"LEDGER_HOME": str(home)}
    header, rows = _rows(2000, seed=24)
    sample = home / "e.csv"
    sample.write_text(header + "".join(rows), encoding="utf-8")
    try:
        for args in (["ingest", "csv", str(sample), "--stream", "csv:e"], ["project"]):
            done = subprocess.run(
                [sys.executable, "-m", "ledger.cli", *args], env=env, capture_output=True, timeout=300
            )
            assert done.returncode == 0, done.stderr.decode()
        assert postmaster_pid(home) is None, "a command that ends normally stops the server"
        yield env, home
    finally:
        _kill_server(home)
        shutil.rmtree(home, ignore_errors=True)


def _kill_server(home: Path) -> None:
    pid = postmaster_pid(home)
    if pid is not None:
        os.kill(pid, signal.SIGQUIT)
        wait_until(lambda: not alive(pid), 10)


@pytest.fixture
def embedded(embedded_env: tuple[dict[str, str], Path]) -> Iterator[tuple[dict[str, str], Path]]:
    yield embedded_env
    _kill_server(embedded_env[1])  # a server a failed test left running


def _client_registered(home: Path, proc: subprocess.Popen[bytes]) -> bool:
    clients = home / "pg" / "clients"
    return clients.is_dir() and any(p.name.startswith(f"{proc.pid}-") for p in clients.iterdir())


def _start_ingest(env: dict[str, str], home: Path) -> subprocess.Popen[bytes]:
    header, rows = _rows(500, seed=25)
    proc = _ledger(env, "ingest", "csv", "-", "--stream", "csv:pipe", "--flush-interval", "0.1", stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write((header + "".join(rows)).encode())
    proc.stdin.flush()
    _until(lambda: _client_registered(home, proc) and _drained(proc), "the ingest to read its input", proc)
    time.sleep(0.5)
    return proc


def _start_first_line(env: dict[str, str], home: Path, *args: str) -> subprocess.Popen[bytes]:
    proc = _ledger(env, *args)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read().decode() if proc.stderr else ""
    return proc


def _start_blocked_export(env: dict[str, str], home: Path) -> subprocess.Popen[bytes]:
    fifo = home / f"nobody-reads-{time.monotonic_ns()}"
    os.mkfifo(fifo)
    proc = _ledger(env, "export", "l1", "csv:e", "-o", str(fifo))
    _until(lambda: _client_registered(home, proc), "the export to use the server", proc)
    time.sleep(1.0)  # blocked opening the FIFO: nobody reads it
    return proc


COMMANDS: dict[str, Callable[[dict[str, str], Path], subprocess.Popen[bytes]]] = {
    "ingest csv -": _start_ingest,
    "status --watch": lambda env, home: _start_first_line(env, home, "status", "--watch", "--json"),
    "watch": lambda env, home: _start_first_line(env, home, "watch", "csv:e", "--json"),
    "export to a FIFO nobody reads": _start_blocked_export,
}
CASES = [
    ("ingest csv -", signal.SIGTERM, 143),
    ("ingest csv -", signal.SIGHUP, 129),
    ("status --watch", signal.SIGTERM, 0),
    ("status --watch", signal.SIGHUP, 0),
    ("watch", signal.SIGTERM, 0),
    ("export to a FIFO nobody reads", signal.SIGTERM, 143),
    ("export to a FIFO nobody reads", signal.SIGHUP, 129),
]


@pytest.mark.parametrize(("command", "sig", "code"), CASES, ids=[f"{c}-{s.name}" for c, s, _ in CASES])
def test_a_signal_stops_the_embedded_server_of_its_last_user(
    embedded: tuple[dict[str, str], Path], command: str, sig: signal.Signals, code: int
) -> None:
    env, home = embedded
    proc = COMMANDS[command](env, home)
    server = postmaster_pid(home)
    assert server is not None
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err.decode()
    assert "Traceback" not in err.decode(), err.decode()
    assert not alive(server), "the embedded PostgreSQL was left running"
    assert list((home / "pg" / "clients").iterdir()) == []


def test_a_signal_leaves_the_server_to_its_other_users(embedded: tuple[dict[str, str], Path]) -> None:
    env, home = embedded
    watching = _start_first_line(env, home, "status", "--watch", "--json")
    ingesting = _start_ingest(env, home)
    server = postmaster_pid(home)
    assert server is not None
    ingesting.send_signal(signal.SIGTERM)
    ingesting.communicate(timeout=60)
    assert ingesting.returncode == 143
    assert alive(server), "stopped under another user"
    watching.send_signal(signal.SIGTERM)
    watching.communicate(timeout=60)
    assert watching.returncode == 0
    assert not alive(server)
