"""``ledger ingest coinbase`` as a process: credentials, a refused subscription, kill -9 and
restart, SIGTERM, the level3 channel, a silent connection, a restart of PostgreSQL.

The local exchange runs on an event loop in a thread of the test, the capture in a
subprocess (or, for the watchdog and the level3 channel, in the test's own loop)."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from ledger.errors import ConfigError
from ledger.services.project.batch import project, rebuild
from ledger.testing import Credentials, LocalExchange
from ledger.venues.coinbase.capture import ApiCredentials, Capture, CoinbaseOptions
from tests.children import track
from tests.test_ingest_coinbase import _capture, _check_projection, _options
from tests.test_pg_restart import _restart_command

T = TypeVar("T")
BOTH = ("BTC-USD", "ETH-USD")


class ExchangeThread:
    """A LocalExchange on its own event loop in a thread, driven from the test."""

    def __init__(self, products: tuple[str, ...], **kw: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.exchange = LocalExchange(products, **kw)
        self.run(self.exchange.start())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrapped() -> T:
            return fn()

        return self.run(wrapped())

    def close(self) -> None:
        self.run(self.exchange.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@contextmanager
def exchange_thread(products: tuple[str, ...], **kw: Any) -> Iterator[ExchangeThread]:
    ex = ExchangeThread(products, **kw)
    try:
        yield ex
    finally:
        ex.close()


def _env(db_env: dict[str, str], ex: LocalExchange) -> dict[str, str]:
    c = ex.credentials
    return db_env | {
        "LEDGER_COINBASE_KEY": c.key,
        "LEDGER_COINBASE_SECRET": c.secret,
        "LEDGER_COINBASE_PASSPHRASE": c.passphrase,
    }


def _start(env: dict[str, str], ex: LocalExchange, *extra: str) -> subprocess.Popen[str]:
    products = [arg for p in ex.products for arg in ("--product", p)]
    urls = ["--ws-url", ex.ws_url, "--rest-url", ex.rest_url]
    return track(
        subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", "ingest", "coinbase", *products, *urls, "--json", *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )


def _wait(condition: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the capture exited ({proc.returncode}) waiting for {what}: {proc.stderr.read()}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _stored_up_to(engine: Engine, th: ExchangeThread) -> bool:
    """Each stream has the exchange's last sequence as an event or a book, and no open gap."""
    with engine.connect() as conn:
        for product in th.exchange.products:
            row = conn.execute(
                sa.text(
                    "SELECT greatest((SELECT max(seq) FROM events WHERE stream_id = s.id),"
                    " (SELECT max(seq) FROM source_snapshots WHERE stream_id = s.id)),"
                    " (SELECT count(*) FROM gaps WHERE stream_id = s.id AND status = 'open')"
                    " FROM streams s WHERE s.name = :n"
                ),
                {"n": f"coinbase:{product}"},
            ).one_or_none()
            if row is None or row[0] is None or row[1] or row[0] < th.call(lambda p=product: th.exchange.sequence(p)):
                return False
    return True


def _count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())


def test_missing_credentials_fail_before_connecting(db_env: dict[str, str]) -> None:
    env = {k: v for k, v in db_env.items() if not k.startswith("LEDGER_COINBASE_")}
    env["LEDGER_COINBASE_KEY"] = "k"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger.cli",
            "ingest",
            "coinbase",
            "--product",
            "BTC-USD",
            "--ws-url",
            "ws://127.0.0.1:9/",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "LEDGER_COINBASE_SECRET, LEDGER_COINBASE_PASSPHRASE are not set" in done.stderr
    assert "websocket" not in done.stderr  # it never tried to connect


def test_refused_subscription_stops_with_the_exchange_message(db_env: dict[str, str]) -> None:
    with exchange_thread(("BTC-USD",), seed=3) as th:
        env = _env(db_env, th.exchange) | {"LEDGER_COINBASE_PASSPHRASE": "not-the-passphrase"}
        proc = _start(env, th.exchange)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "the exchange refused the subscription" in err and "invalid passphrase" in err
    assert "not-the-passphrase" not in err + out and th.exchange.credentials.secret not in err + out


def test_kill9_then_restart_continues_the_streams(db_env: dict[str, str], engine: Engine) -> None:
    with exchange_thread(BOTH, seed=5, heartbeat_interval=0.2) as th:
        ex = th.exchange
        env = _env(db_env, ex)
        proc = _start(env, ex)
        _wait(lambda: _count(engine, "SELECT count(*) FROM source_snapshots") == 2 or ex.rest_calls >= 2, 30, "books")
        th.run(ex.run_random_flow(300, rate=1500))
        _wait(lambda: _count(engine, "SELECT count(*) FROM events") > 100, 30, "events", proc)
        proc.kill()  # SIGKILL: nothing flushed, nothing cleaned up
        proc.wait(10)
        th.run(ex.run_random_flow(200, rate=2000))  # lost while it is down
        proc = _start(env, ex)
        _wait(lambda: _stored_up_to(engine, th), 30, "the restart to resync", proc)
        th.run(ex.run_random_flow(300, rate=1500))
        _wait(lambda: _stored_up_to(engine, th), 30, "the capture to catch up", proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        summary = json.loads(out)
        assert summary["stopped_by"] == "SIGTERM"
        assert all(p["resyncs"] >= 1 for p in summary["products"])
        with engine.connect() as conn:
            statuses = dict(conn.execute(sa.text("SELECT status, count(*) FROM gaps GROUP BY 1")).all())
        assert statuses.get("snapshot", 0) >= 2 and "open" not in statuses  # the down time, one per stream
        th.call(lambda: _check_projection(engine, ex, BOTH))


def test_sigint_commits_what_was_received(db_env: dict[str, str], engine: Engine) -> None:
    with exchange_thread(("BTC-USD",), seed=6) as th:
        proc = _start(_env(db_env, th.exchange), th.exchange)
        _wait(lambda: th.exchange.rest_calls >= 1, 30, "the first book", proc)
        th.run(th.exchange.run_random_flow(200, rate=4000))
        _wait(lambda: _stored_up_to(engine, th), 30, "the capture to catch up", proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    [product] = summary["products"]
    assert summary["stopped_by"] == "SIGINT"
    assert product["events_stored"] == _count(engine, "SELECT count(*) FROM events") > 0


def test_compact_every_folds_the_captured_streams(db_env: dict[str, str], engine: Engine) -> None:
    """ledger ingest coinbase --compact-every: the products' streams (coinbase:<product>)
    go into blocks while it captures; every event is still there once it stops."""
    with exchange_thread(("BTC-USD", "ETH-USD"), seed=8) as th:
        proc = _start(_env(db_env, th.exchange), th.exchange, "--compact-every", "100ms")
        _wait(lambda: th.exchange.rest_calls >= 2, 30, "the first books", proc)
        th.run(th.exchange.run_random_flow(300, rate=4000))
        _wait(lambda: _stored_up_to(engine, th), 30, "the capture to catch up", proc)
        folded = "SELECT count(DISTINCT stream_id) FROM event_blocks"
        _wait(lambda: _count(engine, folded) == 2, 30, "both streams folded", proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    stored = sum(product["events_stored"] for product in json.loads(out)["products"])
    assert stored == _count(engine, "SELECT count(*) FROM events") > 0


def test_level3_channel(engine: Engine) -> None:
    summary, ex = asyncio.run(_capture(engine, BOTH, seed=7, options={"channel": "level3"}, orders=500))
    assert all(p.events_stored > 0 and p.rejects == 0 for p in summary.products)
    with engine.connect() as conn:
        raw = conn.execute(sa.text("SELECT raw FROM events LIMIT 1")).scalar_one()
    assert raw.startswith("[")  # stored as received: the compact array
    _check_projection(engine, ex, BOTH)


def test_silent_connection_is_detected_and_replaced(engine: Engine) -> None:
    async def scenario() -> Capture:
        async with LocalExchange(("BTC-USD",), seed=8, heartbeat_interval=30) as ex:
            c = ex.credentials
            options = _options(ex, ("BTC-USD",), idle_timeout=0.4)
            cap = Capture(engine, options, ApiCredentials(c.key, c.secret, c.passphrase))
            task = asyncio.create_task(cap.run())
            await asyncio.sleep(1.5)  # no heartbeat, no trade: the watchdog gives up on the connection
            cap.stop()
            await task
            return cap

    cap = asyncio.run(scenario())
    assert cap.summary.reconnects >= 2 and cap.summary.connections >= 3


@pytest.mark.pgrestart
def test_postgres_restart_under_capture(db_env: dict[str, str], database_url: URL, engine: Engine) -> None:
    restart = _restart_command(database_url)
    if restart is None:
        pytest.skip("cannot restart this PostgreSQL here: set LEDGER_TEST_PG_RESTART to the command that does")
    with exchange_thread(BOTH, seed=9, heartbeat_interval=0.2) as th:
        proc = _start(_env(db_env, th.exchange), th.exchange)
        _wait(lambda: th.exchange.rest_calls >= 2, 30, "the first books", proc)
        flow = threading.Thread(target=lambda: th.run(th.exchange.run_random_flow(1500, rate=500), timeout=120))
        flow.start()
        time.sleep(1.0)
        subprocess.run(restart, check=True, capture_output=True, timeout=120)
        flow.join()
        engine.dispose()
        _wait(lambda: _stored_up_to(engine, th), 60, "the capture to catch up after the restart", proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        summary = json.loads(out)
        assert summary["db_retries"] >= 1, err
        th.call(lambda: _check_projection(engine, th.exchange, BOTH))


def test_status_watch_prints_a_round_per_interval(db_env: dict[str, str], engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO streams (name, source) VALUES ('coinbase:X-USD', 'coinbase')"))
    proc = track(
        subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", "status", "--watch", "--interval", "0.2", "--json"],
            env=db_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    rounds = [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == 0, err
    assert len(rounds) >= 3 and all(r[0]["stream"] == "coinbase:X-USD" for r in rounds)
    assert {"lag_seconds", "latest_snapshot_seq", "last_ingest"} <= rounds[0][0].keys()


def test_ledger_run_captures_and_projects_live(db_env: dict[str, str], engine: Engine) -> None:
    with exchange_thread(BOTH, seed=10, heartbeat_interval=0.2) as th:
        ex = th.exchange
        products = [arg for p in ex.products for arg in ("--product", p)]
        urls = ["--ws-url", ex.ws_url, "--rest-url", ex.rest_url]
        proc = track(
            subprocess.Popen(
                [sys.executable, "-m", "ledger.cli", "run", *products, *urls, "--json", "--snapshot-every", "200"],
                env=_env(db_env, ex),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        _wait(lambda: ex.rest_calls >= 2, 30, "the first books", proc)
        th.run(ex.run_random_flow(600, rate=2000))
        _wait(lambda: _stored_up_to(engine, th), 30, "the capture to catch up", proc)
        _wait(lambda: _projected_to_head(engine), 30, "the projection to catch up", proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["capture"]["stopped_by"] == "SIGTERM"
    assert sorted(s["stream"] for s in result["projection"]) == ["coinbase:BTC-USD", "coinbase:ETH-USD"]
    assert all(s["status"] == "ok" and s["l1_rows"] > 0 for s in result["projection"])
    live = _l1(engine)
    rebuild(engine)
    project(engine)
    assert _l1(engine) == live  # the live projection equals a batch one over the same log


def _projected_to_head(engine: Engine) -> bool:
    with engine.connect() as conn:
        behind = conn.execute(
            sa.text(
                "SELECT count(*) FROM streams s LEFT JOIN projector_positions p ON p.stream_id = s.id"
                " WHERE coalesce(p.last_seq, -1) < (SELECT max(seq) FROM events e WHERE e.stream_id = s.id)"
            )
        ).scalar_one()
    return behind == 0


def _l1(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT * FROM l1 ORDER BY stream_id, seq"))]


def _fake_key_env(db_env: dict[str, str]) -> dict[str, str]:
    key = Credentials.generate(random.Random(0))
    return db_env | {
        "LEDGER_COINBASE_KEY": key.key,
        "LEDGER_COINBASE_SECRET": key.secret,
        "LEDGER_COINBASE_PASSPHRASE": key.passphrase,
    }


@pytest.mark.parametrize(
    ("urls", "option"),
    [
        (["--ws-url", "ws://192.0.2.10:8080/"], "--ws-url"),
        (["--rest-url", "http://192.0.2.10"], "--rest-url"),
        (["--ws-url", "ws://feed.example.com/", "--rest-url", "https://api.example.com"], "--ws-url"),
    ],
)
def test_plaintext_urls_to_another_host_are_refused_before_connecting(
    db_env: dict[str, str], engine: Engine, urls: list[str], option: str
) -> None:
    env = _fake_key_env(db_env)
    done = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "ingest", "coinbase", "--product", "BTC-USD", *urls, "--duration", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert option in done.stderr and "plain text" in done.stderr and "unencrypted" in done.stderr, done.stderr
    assert "websocket" not in done.stderr and "stopped by" not in done.stdout  # it never tried to connect
    assert env["LEDGER_COINBASE_PASSPHRASE"] not in done.stderr + done.stdout
    assert _count(engine, "SELECT count(*) FROM streams") == 0


@pytest.mark.parametrize(
    "url", ["ws://127.0.0.1:9/", "ws://127.1.2.3:9/", "ws://[::1]:9/", "ws://localhost:9/", "wss://ws.example.com/"]
)
def test_plaintext_is_allowed_to_loopback_and_tls_anywhere(url: str) -> None:
    options = CoinbaseOptions(products=("BTC-USD",), ws_url=url, rest_url=url.replace("ws", "http", 1))
    assert options.ws_url == url
    with pytest.raises(ConfigError, match="--rest-url"):
        CoinbaseOptions(products=("BTC-USD",), ws_url=url, rest_url="http://10.1.2.3/")


def test_a_feed_never_reached_fails_with_the_connection_error_and_leaves_no_stream(
    db_env: dict[str, str], engine: Engine
) -> None:
    with socket.socket() as closed:  # bound, never listening: every connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                *("-m", "ledger.cli", "ingest", "coinbase", "--product", "BTC-USD", "--duration", "2"),
                *("--ws-url", f"ws://127.0.0.1:{port}/", "--rest-url", f"http://127.0.0.1:{port}"),
            ],
            env=_fake_key_env(db_env),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, (done.stdout, done.stderr)
    error = done.stderr.strip().splitlines()[-1]
    assert "nothing was received" in error and f"127.0.0.1:{port}" in error, done.stderr
    assert "Cannot connect" in error or "refused" in error.lower(), error  # the last connection error
    assert "stopped by" not in done.stdout
    assert _count(engine, "SELECT count(*) FROM streams") == 0
