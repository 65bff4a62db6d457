"""``ledger project --follow``: live projection equals the batch one, byte for byte; many
followers split the streams and take over those of one that dies."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from benchmarks.generate_l3 import generate
from ledger.errors import DatabaseError
from ledger.services.project.batch import project, rebuild
from ledger.services.project.follow import FollowOptions, follow
from ledger.storage.database import create_engine
from ledger.storage.log import Streams
from ledger.storage.projection import L1Rows
from tests.children import track
from tests.test_ingest_coinbase import BOTH, _capture
from tests.test_pg_restart import _restart_command, _wait_for_server


def _csv(n: int, seed: int) -> str:
    out = io.StringIO()
    generate(n, seed, out)
    return out.getvalue()


def _export(engine: Engine, stream: str) -> bytes:
    with engine.connect() as conn:
        out = io.BytesIO()
        L1Rows(conn).export_csv(Streams(conn).get(stream), out)
    return out.getvalue()


def _positions(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT s.name, p.last_seq FROM projector_positions p JOIN streams s ON s.id = p.stream_id")
        )
        return {name: seq for name, seq in rows}


def _heads(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        query = "SELECT s.name, max(e.seq) FROM events e JOIN streams s ON s.id = e.stream_id GROUP BY 1"
        rows = conn.execute(sa.text(query))
        return {name: seq for name, seq in rows}


def _wait_caught_up(engine: Engine, timeout: float, procs: Sequence[subprocess.Popen[bytes]] = ()) -> None:
    deadline = time.monotonic() + timeout
    while True:
        heads, positions = _heads(engine), _positions(engine)
        if heads and all(positions.get(name) == seq for name, seq in heads.items()):
            return
        for proc in procs:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, f"not caught up: heads {heads}, positions {positions}"
        time.sleep(0.05)


def _follower(env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    return track(
        subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", "project", "--follow", "--json", "--snapshot-every", "5000", *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    )


def _stdin_ingest(env: dict[str, str], stream: str) -> subprocess.Popen[bytes]:
    """ledger ingest csv - into ``stream``, committing at least every 0.1 s."""
    args = [sys.executable, "-m", "ledger.cli", "ingest", "csv", "-", "--stream", stream, "--flush-interval", "0.1"]
    return track(subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE))


def _batch_export(env: dict[str, str], engine: Engine, text: str) -> bytes:
    """The L1 export of ``text`` ingested and projected in batch (stream csv:batch)."""
    done = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "ingest", "csv", "-", "--stream", "csv:batch"],
        input=text.encode(),
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    project(engine, streams=["csv:batch"])
    return _export(engine, "csv:batch")


def test_follow_while_ingesting_from_stdin_equals_a_batch_run(db_env: dict[str, str], engine: Engine) -> None:
    text = _csv(30_000, seed=11)
    header, *lines = text.splitlines(keepends=True)
    proc = _follower(db_env)
    ingest = _stdin_ingest(db_env, "csv:live")
    assert ingest.stdin is not None
    ingest.stdin.write(header.encode())
    for start in range(0, len(lines), 1500):  # a trickle: the follower catches up many times
        ingest.stdin.write("".join(lines[start : start + 1500]).encode())
        ingest.stdin.flush()
        time.sleep(0.05)
    ingest.stdin.close()
    assert ingest.wait(60) == 0, ingest.stderr.read().decode() if ingest.stderr else ""
    _wait_caught_up(engine, 60, [proc])
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    with engine.connect() as conn:  # snapshots go on being taken while following (every 5,000 events)
        assert conn.execute(sa.text("SELECT count(*) FROM book_snapshots")).scalar_one() >= 5
    live = _export(engine, "csv:live")
    assert live == _batch_export(db_env, engine, text) and live.count(b"\n") > 1000  # the same file in batch


def test_a_follower_with_compact_every_folds_what_it_projected_and_equals_a_batch_run(
    db_env: dict[str, str], engine: Engine
) -> None:
    """project --follow --compact-every: while it follows a trickle of events, the events up
    to its position go into blocks (the ones after it stay rows until the next round), and
    its L1 rows are a batch run's."""
    text = _csv(20_000, seed=5)
    header, *lines = text.splitlines(keepends=True)
    proc = _follower(db_env, "--compact-every", "200ms")
    ingest = _stdin_ingest(db_env, "csv:live")
    assert ingest.stdin is not None
    ingest.stdin.write(header.encode())
    folded_while_ingesting = 0
    for start in range(0, len(lines), 2000):
        ingest.stdin.write("".join(lines[start : start + 2000]).encode())
        ingest.stdin.flush()
        time.sleep(0.15)
        with engine.connect() as conn:
            folded_while_ingesting = max(
                folded_while_ingesting,
                conn.execute(sa.text("SELECT coalesce(sum(n_events), 0) FROM event_blocks")).scalar_one(),
            )
    ingest.stdin.close()
    assert ingest.wait(60) == 0, ingest.stderr.read().decode() if ingest.stderr else ""
    _wait_caught_up(engine, 60, [proc])
    deadline = time.monotonic() + 30
    while True:  # the next rounds fold the rest, up to the position (the log's end)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT count(*) FROM event_rows")).scalar_one()
            in_blocks = conn.execute(sa.text("SELECT coalesce(sum(n_events), 0) FROM event_blocks")).scalar_one()
        if rows == 0:
            break
        assert proc.poll() is None and time.monotonic() < deadline, (rows, in_blocks)
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert in_blocks == len(lines) and 0 < folded_while_ingesting < len(lines)
    live = _export(engine, "csv:live")
    assert live == _batch_export(db_env, engine, text) and live.count(b"\n") > 1000


def test_compact_every_needs_follow(db_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "project", "--compact-every", "10m"],
        env=db_env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2 and b"--compact-every goes with --follow" in done.stderr, done.stderr.decode()


def test_two_followers_split_six_streams_and_take_over_from_a_dead_one(db_env: dict[str, str], engine: Engine) -> None:
    texts = {f"csv:s{i}": _csv(8_000, seed=20 + i) for i in range(6)}
    first = {name: text[: len(text) // 2] for name, text in texts.items()}
    a, b = _follower(db_env), _follower(db_env)
    try:
        for name, text in first.items():
            body = text[: text.rindex("\n") + 1]
            _ingest(db_env, body, name)
        _wait_caught_up(engine, 60, [a, b])
        deadline = time.monotonic() + 15  # a follower that started first hands back the excess
        while sorted(_owners(engine).values()) != [3, 3] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(_owners(engine).values()) == [3, 3], _owners(engine)  # a fair split
        a.kill()  # SIGKILL: no goodbye; its streams must move to b
        a.wait(10)
        for name, text in texts.items():
            _ingest(db_env, text, name)  # the rest (the first half again: duplicates)
        _wait_caught_up(engine, 60, [b])
        assert sorted(_owners(engine).values()) == [6]
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=30)
    assert b.returncode == 0
    live = {name: _export(engine, name) for name in texts}
    rebuild(engine)
    project(engine)
    for name in texts:  # each L1 row written once (the key forbids twice), and none missing
        assert live[name] == _export(engine, name), name


def _ingest(env: dict[str, str], text: str, stream: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "ingest", "csv", "-", "--stream", stream],
        input=text.encode(),
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()


def _owners(engine: Engine) -> dict[int, int]:
    """How many streams each backend (follower) holds the projector lock of."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT pid, count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :c"
                " AND objsubid = 2 AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) GROUP BY pid"
            ),
            {"c": 0x1ED7},
        )
        return {pid: n for pid, n in rows}


def test_follow_while_capturing_from_the_exchange_equals_a_batch_run(engine: Engine) -> None:
    stop = threading.Event()
    result: list[object] = []
    options = FollowOptions(poll=0.5)
    thread = threading.Thread(target=lambda: result.extend(follow(engine, options, stop)))
    thread.start()
    try:
        _, _ex = asyncio.run(_capture(engine, BOTH, seed=12, orders=800))
        _wait_caught_up(engine, 30)
    finally:
        stop.set()
        thread.join(30)
    assert result and all(s.status == "ok" for s in result), result  # type: ignore[attr-defined]
    live = {p: _export(engine, f"coinbase:{p}") for p in BOTH}
    rebuild(engine)
    project(engine)
    for p in BOTH:
        assert live[p] == _export(engine, f"coinbase:{p}") and live[p].count(b"\n") > 50, p


@pytest.mark.pgrestart
def test_follower_survives_a_server_restart(db_env: dict[str, str], database_url: URL, engine: Engine) -> None:
    restart = _restart_command(database_url)
    if restart is None:
        pytest.skip("cannot restart this PostgreSQL here: set LEDGER_TEST_PG_RESTART to the command that does")
    text = _csv(20_000, seed=31)
    cut = text.index("\n", len(text) // 2) + 1
    header = text[: text.index("\n") + 1]
    proc = _follower(db_env)
    _ingest(db_env, text[:cut], "csv:restart")
    _wait_caught_up(engine, 60, [proc])
    subprocess.run(restart, check=True, capture_output=True, timeout=120)
    engine.dispose()
    _wait_for_server(engine)
    _ingest(db_env, header + text[cut:], "csv:restart")
    _wait_caught_up(engine, 60, [proc])  # the follower came back by itself
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert b"lost the database" in err
    live = _export(engine, "csv:restart")
    rebuild(engine)
    project(engine)
    assert live == _export(engine, "csv:restart")


def test_a_write_for_a_stream_whose_lock_is_gone_is_refused(engine: Engine) -> None:
    from ledger.services.project.run import PROJECT_LOCK_CLASS, Committer, LockLost, _Job
    from ledger.storage.projection import Position

    with engine.begin() as conn:
        sid = Streams(conn).ensure("csv:fenced", "csv")
    holder = engine.connect()
    owner = int(holder.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
    holder.execute(sa.text("SELECT pg_advisory_lock(:c, :o)"), {"c": PROJECT_LOCK_CLASS, "o": sid})
    holder.commit()
    row = (1, None, 1, 1, 2, 1)  # seq, ts, bid price and size, ask price and size
    committer = Committer(engine)
    committer.start()
    committer.submit(_Job(sid, [row], Position(first_seq=1, last_seq=1), [], None, owner))
    committer.flush()  # the holder has the lock: written
    holder.invalidate()  # the lock connection dies, and the lock with it
    holder.close()
    while _owners(engine).get(owner):  # the server ends that session
        time.sleep(0.01)
    committer.submit(_Job(sid, [(2, None, 1, 1, 2, 1)], Position(first_seq=1, last_seq=2), [], None, owner))
    with pytest.raises(LockLost):
        committer.flush()
    committer.abandon()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT seq FROM l1 WHERE stream_id = :s"), {"s": sid}).scalars().all() == [1]


def test_a_write_that_does_not_follow_on_from_the_stored_position_is_refused(engine: Engine) -> None:
    from ledger.services.project.run import Committer, LockLost, _Job
    from ledger.storage.projection import Position

    with engine.begin() as conn:
        sid = Streams(conn).ensure("csv:moved", "csv")
    committer = Committer(engine)
    committer.start()
    committer.submit(_Job(sid, [(1, None, 1, 1, 2, 1)], Position(first_seq=1, last_seq=1), [], None, None, None))
    committer.submit(_Job(sid, [(5, None, 1, 1, 2, 1)], Position(first_seq=1, last_seq=5), [], None, None, 1))
    committer.flush()
    # another projector's view: it believes the position is still 1
    committer.submit(_Job(sid, [(3, None, 1, 1, 2, 1)], Position(first_seq=1, last_seq=3), [], None, None, 1))
    with pytest.raises(LockLost, match="not 1"):
        committer.flush()
    committer.abandon()
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT seq FROM l1 WHERE stream_id = :s ORDER BY 1"), {"s": sid})
        assert rows.scalars().all() == [1, 5]


@contextlib.contextmanager
def _role(engine: Engine, database_url: URL) -> Iterator[tuple[URL, str, str]]:
    """A login role that may read and write every ledger table: its URL, name and password."""
    role, password = f"ledger_follow_{secrets.token_hex(4)}", secrets.token_hex(12)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(sa.text(f'GRANT CONNECT ON DATABASE "{database_url.database}" TO {role}'))
        conn.execute(sa.text(f"GRANT USAGE ON SCHEMA public TO {role}"))
        conn.execute(sa.text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"))
        conn.execute(sa.text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}"))
    try:
        yield database_url.set(username=role, password=password), role, password
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refused the follower" in r.getMessage()]


def test_a_follower_refused_by_the_database_says_why_retries_and_goes_on_when_allowed(
    database_url: URL, db_env: dict[str, str], engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ledger.services.project.follow")
    _ingest(db_env, _csv(3_000, seed=41), "csv:granted")
    with _role(engine, database_url) as (url, role, password):
        with engine.begin() as conn:
            conn.execute(sa.text(f"REVOKE ALL ON projector_positions FROM {role}"))
        limited = create_engine(url)
        stop = threading.Event()
        result: list[object] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                result.extend(follow(limited, FollowOptions(poll=0.2, rebalance=0.5), stop))
            except BaseException as e:
                errors.append(e)

        thread = threading.Thread(target=run)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while len(_refusals(caplog)) < 2:  # it said why, waited, tried again, and said why again
                assert thread.is_alive(), errors
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.05)
            assert _positions(engine) == {}
            with engine.begin() as conn:
                conn.execute(sa.text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON projector_positions TO {role}"))
            _wait_caught_up(engine, 60)  # it came back by itself
        finally:
            stop.set()
            thread.join(30)
            limited.dispose()
    assert not errors and result and all(s.status == "ok" for s in result), (errors, result)  # type: ignore[attr-defined]
    assert all("permission denied for table projector_positions" in m for m in _refusals(caplog))
    assert password not in caplog.text
    live = _export(engine, "csv:granted")
    rebuild(engine, ["csv:granted"])
    project(engine, streams=["csv:granted"])
    assert live == _export(engine, "csv:granted") and live.count(b"\n") > 100


def test_a_follower_refused_for_longer_than_its_window_gives_up_with_a_clear_message(
    database_url: URL, db_env: dict[str, str], engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ledger.services.project.follow")
    _ingest(db_env, _csv(500, seed=42), "csv:refused")
    with _role(engine, database_url) as (url, role, password):
        with engine.begin() as conn:
            conn.execute(sa.text(f"REVOKE ALL ON projector_positions FROM {role}"))
        limited = create_engine(url)
        started = time.monotonic()
        try:
            with pytest.raises(DatabaseError) as failure:
                follow(limited, FollowOptions(poll=0.2, rebalance=0.5, retry_for=1.5), threading.Event())
        finally:
            limited.dispose()
    assert 1.5 < time.monotonic() - started < 30
    message = str(failure.value)
    assert "kept refusing the follower's work for 2s: permission denied for table projector_positions" in message
    assert "run the same command again" in message and password not in message
    assert len(_refusals(caplog)) >= 2


def test_a_bug_is_raised_at_once_not_retried(
    db_env: dict[str, str], engine: Engine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ledger.services.project import follow as following
    from ledger.services.project.run import StreamRun

    caplog.set_level(logging.WARNING, logger="ledger.services.project.follow")
    _ingest(db_env, _csv(500, seed=43), "csv:buggy")
    options = FollowOptions(poll=0.2, rebalance=0.5)

    def broken(self: StreamRun, stop: object = None) -> int:
        raise TypeError("a bug")

    monkeypatch.setattr(StreamRun, "catch_up", broken)
    with pytest.raises(TypeError, match="a bug"):
        follow(engine, options, threading.Event())
    monkeypatch.undo()

    def wrong_sql(self: object) -> None:  # SQL that does not fit the schema is a bug too
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT no_such_column FROM streams"))

    monkeypatch.setattr(following._Follower, "_balance", wrong_sql)
    with pytest.raises(DatabaseError, match=r"following the log failed: .*no_such_column"):
        follow(engine, options, threading.Event())
    assert not caplog.records  # no retry, no "trying again"


def test_passwords_are_hidden_in_what_the_follower_says() -> None:
    from ledger.services.project.follow import _without_credentials

    text = "connection to postgresql+psycopg://bob:s3cr%40t@db:5432/x failed: password=hunter2 host=db"
    shown = _without_credentials(text)
    assert "s3cr" not in shown and "hunter2" not in shown
    assert "postgresql+psycopg://bob:***@db:5432/x" in shown and "password=*** host=db" in shown
