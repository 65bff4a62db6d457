"""The bounded-queue worker and read-ahead of ledger._threads: order, back-pressure, flush,
errors handed to the other thread, abandon, and clean stops; prompt_handoffs, and the
ingests and the Coinbase capture that run inside it."""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from ledger._threads import HANDOFF_INTERVAL, Worker, ahead, prompt_handoffs
from ledger.services.ingest.csv_file import ingest_csv
from ledger.services.ingest.dbn_file import ingest_dbn

DATA = Path(__file__).parent / "data"
V31 = DATA / "l3-l1" / "v3.1" / "l3_data_v3.1.csv"
XNAS = DATA / "databento" / "databento-python__XNAS.ITCH__test_data.mbo.dbn.zst"


def _about(seconds: float) -> object:
    """A switch interval as read back (the interpreter keeps whole microseconds)."""
    return pytest.approx(seconds, rel=0.02)


def _until(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_worker_does_the_items_in_order_on_its_thread_inside_its_setup() -> None:
    done: list[tuple[str, int]] = []
    events: list[str] = []

    def work(items: Iterator[int]) -> None:
        events.append("open")
        for item in items:
            done.append((threading.current_thread().name, item))
        events.append("closed")

    worker = Worker(work, name="test-worker")
    worker.start()
    for i in range(20):
        worker.submit(i)
    worker.flush()
    assert [i for _, i in done] == list(range(20)) and {n for n, _ in done} == {"test-worker"}
    worker.close()
    assert events == ["open", "closed"] and not worker.is_alive()


def test_submit_waits_while_the_queue_is_full() -> None:
    release = threading.Event()
    taken: list[int] = []

    def work(items: Iterator[int]) -> None:
        for item in items:
            taken.append(item)
            release.wait()

    worker = Worker(work, name="test-slow", maxsize=2)
    worker.start()
    for i in range(3):  # one in hand, two waiting
        worker.submit(i)
    _until(lambda: taken == [0])
    fourth = threading.Thread(target=worker.submit, args=(3,))
    fourth.start()
    time.sleep(0.1)
    assert fourth.is_alive()  # back-pressure: the caller waits
    release.set()
    fourth.join(5)
    assert not fourth.is_alive()
    worker.close()
    assert taken == [0, 1, 2, 3]


def test_flush_waits_until_everything_before_it_is_done() -> None:
    done: list[int] = []

    def work(items: Iterator[int]) -> None:
        for item in items:
            time.sleep(0.02)
            done.append(item)

    worker = Worker(work, name="test-flush")
    worker.start()
    for i in range(5):
        worker.submit(i)
    worker.flush()
    assert done == [0, 1, 2, 3, 4]
    worker.close()
    worker.flush()  # a stopped worker: nothing to wait for


def test_an_error_is_raised_in_the_caller_and_the_items_after_it_are_dropped() -> None:
    done: list[int] = []
    closed = threading.Event()
    go = threading.Event()

    def work(items: Iterator[int]) -> None:
        go.wait()
        try:
            for item in items:
                if item == 2:
                    raise ValueError("item 2 is bad")
                done.append(item)
        finally:
            closed.set()

    worker = Worker(work, name="test-error", maxsize=4)
    worker.start()
    for i in range(4):
        worker.submit(i)
    go.set()
    with pytest.raises(ValueError, match="item 2 is bad"):
        worker.flush()
    assert done == [0, 1] and closed.is_set() and not worker.is_alive()
    worker.close()  # raised once: nothing more to say

    worker = Worker(work, name="test-error-on-submit")
    worker.start()
    worker.submit(2)
    _until(lambda: worker._error is not None)
    with pytest.raises(ValueError):
        worker.submit(3)
    assert not worker.is_alive()

    worker = Worker(work, name="test-error-on-close")
    worker.start()
    worker.submit(2)
    with pytest.raises(ValueError):
        worker.close()


def test_a_worker_that_cannot_start_its_work_says_so_at_the_next_call() -> None:
    def work(items: Iterator[int]) -> None:
        raise ConnectionError("no database")

    worker = Worker(work, name="test-no-setup")
    worker.start()
    _until(lambda: worker._error is not None)
    with pytest.raises(ConnectionError):
        worker.submit(1)
    worker.flush()  # said once


@pytest.mark.parametrize("fails", [False, True], ids=["quiet", "failing"])
def test_abandon_drops_what_waits_and_keeps_quiet(fails: bool) -> None:
    release = threading.Event()
    done: list[int] = []

    def work(items: Iterator[int]) -> None:
        for item in items:
            release.wait()
            done.append(item)
            if fails:
                raise RuntimeError("not to be heard")

    worker = Worker(work, name="test-abandon")
    worker.start()
    for i in range(3):
        worker.submit(i)
    _until(lambda: worker._queue.qsize() == 2)
    threading.Timer(0.1, release.set).start()
    worker.abandon()
    assert done == [0] and not worker.is_alive()  # the item in hand is finished, the two waiting dropped
    worker.close()  # nothing raised: a failure is abandoned with the rest


def test_ahead_makes_the_items_on_its_own_thread_in_order() -> None:
    names: set[str] = set()

    def items() -> Iterator[int]:
        for i in range(50):
            names.add(threading.current_thread().name)
            yield i

    assert list(ahead(items, name="test-ahead")) == list(range(50))
    assert names == {"test-ahead"}


def test_ahead_stays_at_most_maxsize_ahead() -> None:
    made: list[int] = []

    def items() -> Iterator[int]:
        for i in range(100):
            made.append(i)
            yield i

    got = ahead(items, name="test-bounded", maxsize=2)
    assert next(got) == 0
    time.sleep(0.2)
    assert len(made) <= 1 + 2 + 1  # the one taken, two waiting, one in the maker's hand
    got.close()


def test_an_error_in_ahead_is_raised_where_the_next_item_would_come() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise LookupError("the third is missing")

    got = ahead(items, name="test-ahead-error")
    assert next(got) == 1 and next(got) == 2
    with pytest.raises(LookupError, match="the third is missing"):
        next(got)


def test_leaving_ahead_early_stops_the_maker_and_lets_it_clean_up() -> None:
    cleaned = threading.Event()
    makers: list[threading.Thread] = []

    def items() -> Iterator[int]:
        makers.append(threading.current_thread())
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            cleaned.set()

    for i in ahead(items, name="test-ahead-stop"):
        if i == 3:
            break
    assert cleaned.wait(5) and not makers[0].is_alive()


def test_prompt_handoffs_lowers_the_switch_interval_while_any_block_runs_and_puts_it_back() -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        with prompt_handoffs():
            assert sys.getswitchinterval() == _about(HANDOFF_INTERVAL)
            with prompt_handoffs():  # nested (or on another thread): one lowering
                assert sys.getswitchinterval() == _about(HANDOFF_INTERVAL)
            assert sys.getswitchinterval() == _about(HANDOFF_INTERVAL)
        assert sys.getswitchinterval() == _about(0.005)
        sys.setswitchinterval(0.0001)  # already lower: never raised
        with prompt_handoffs():
            assert sys.getswitchinterval() == _about(0.0001)
        assert sys.getswitchinterval() == _about(0.0001)
        sys.setswitchinterval(0.005)
        with pytest.raises(RuntimeError), prompt_handoffs():  # put back when the block fails too
            raise RuntimeError
        assert sys.getswitchinterval() == _about(0.005)
    finally:
        sys.setswitchinterval(before)


def test_blocks_on_two_threads_share_one_lowering_undone_by_the_last() -> None:
    before = sys.getswitchinterval()
    entered, leave = threading.Event(), threading.Event()
    seen: list[float] = []

    def other() -> None:
        with prompt_handoffs():
            entered.set()
            leave.wait(5)
        seen.append(sys.getswitchinterval())

    try:
        sys.setswitchinterval(0.005)
        thread = threading.Thread(target=other)
        with prompt_handoffs():
            thread.start()
            assert entered.wait(5)
        assert sys.getswitchinterval() == _about(HANDOFF_INTERVAL)  # the other block still runs
        leave.set()
        thread.join(5)
        assert seen == [_about(0.005)] and sys.getswitchinterval() == _about(0.005)
    finally:
        sys.setswitchinterval(before)


def test_the_csv_and_dbn_ingests_run_with_prompt_handoffs_and_put_the_interval_back(engine: Engine) -> None:
    """The two ingest pipelines (a parsing thread beside a writer waiting on PostgreSQL)
    run inside prompt_handoffs: the interval seen while they read is the lowered one."""
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        seen: list[float] = []
        csv_summary = ingest_csv(
            engine,
            io.BytesIO(V31.read_bytes()),
            stream="handoffs-csv",
            source="v3.1",
            progress=lambda _: seen.append(sys.getswitchinterval()),
        )
        assert csv_summary.events_stored > 0 and seen
        assert all(s == _about(HANDOFF_INTERVAL) for s in seen) and sys.getswitchinterval() == _about(0.005)
        seen.clear()
        dbn_summary = ingest_dbn(engine, XNAS, progress=lambda _: seen.append(sys.getswitchinterval()))
        assert dbn_summary.records > 0 and seen
        assert all(s == _about(HANDOFF_INTERVAL) for s in seen) and sys.getswitchinterval() == _about(0.005)
    finally:
        sys.setswitchinterval(before)


def test_a_coinbase_capture_runs_with_prompt_handoffs_and_puts_the_interval_back(engine: Engine) -> None:
    """The capture decodes on its event loop while a thread commits: it runs inside
    prompt_handoffs too (seen by its summary callback while it runs)."""
    from tests.test_ingest_coinbase import _capture

    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        seen: list[float] = []
        summary, _ = asyncio.run(
            _capture(
                engine,
                ("BTC-USD",),
                seed=3,
                orders=100,
                options={"summary_every": 0.05},
                on_summary=lambda _: seen.append(sys.getswitchinterval()),
            )
        )
        assert summary.frames > 0 and seen
        assert all(s == _about(HANDOFF_INTERVAL) for s in seen) and sys.getswitchinterval() == _about(0.005)
    finally:
        sys.setswitchinterval(before)
