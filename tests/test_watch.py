"""``ledger watch``: the live top levels follow ingest, woken by its notifications."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy.engine import Engine

from ledger.services.ingest.csv_file import ingest_csv
from ledger.services.read.book import book_at
from ledger.services.read.watch import BookFollower, follow_top
from tests.children import track

V31 = Path(__file__).parent / "data" / "l3-l1" / "v3.1" / "l3_data_v3.1.csv"


def _ingest(engine: Engine, text: str, stream: str) -> None:
    ingest_csv(engine, io.BytesIO(text.encode()), stream=stream, source="stdin", resumable=False)


def _top(engine: Engine, stream: str, depth: int) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    book = book_at(engine, stream).book
    return (
        [{"price": str(lv.price), "size": str(lv.size), "orders": lv.orders} for lv in book.levels("B", depth)],
        [{"price": str(lv.price), "size": str(lv.size), "orders": lv.orders} for lv in book.levels("S", depth)],
    )


def test_watch_follows_ingest_and_catches_late_events(db_env: dict[str, str], engine: Engine) -> None:
    header, *rows = V31.read_text(encoding="utf-8").splitlines(keepends=True)
    half = len(rows) // 2
    held_back = rows[2000:2600]  # a gap the first book goes across, filled later
    _ingest(engine, header + "".join(rows[:2000] + rows[2600:half]), "csv:live")
    proc = track(
        subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", "watch", "csv:live", "--depth", "1000", "--json", "--fps", "50"],
            env=db_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    lines: list[dict[str, object]] = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(line) for line in proc.stdout or []))
    reader.start()
    deadline = time.monotonic() + 30
    while not lines and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lines, "no first frame"
    assert [lines[0]["bids"], lines[0]["asks"]] == list(_top(engine, "csv:live", 1000))
    for start in range(half, len(rows), 2000):  # the rest in slices
        _ingest(engine, header + "".join(rows[start : start + 2000]), "csv:live")
        if start == half:
            _ingest(engine, header + "".join(held_back), "csv:live")
    expected = list(_top(engine, "csv:live", 1000))
    deadline = time.monotonic() + 30
    while [lines[-1]["bids"], lines[-1]["asks"]] != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.wait(20)
    reader.join(5)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert [lines[-1]["bids"], lines[-1]["asks"]] == expected
    assert len(lines) > 3


def test_frames_are_throttled_to_the_latest_state(db_env: dict[str, str], engine: Engine) -> None:
    header, *rows = V31.read_text(encoding="utf-8").splitlines(keepends=True)
    rows.sort(key=lambda r: int(r.split(",", 1)[0]))  # in seq order: no gaps, many top changes
    _ingest(engine, header + "".join(rows[:100]), "csv:fast")
    frames = []
    stop = threading.Event()

    def watch() -> None:
        for view in follow_top(engine, "csv:fast", depth=1, max_fps=4, poll=0.2, stop=stop.is_set):
            frames.append((time.monotonic(), view))

    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    for start in range(100, len(rows), 500):
        _ingest(engine, header + "".join(rows[start : start + 500]), "csv:fast")
    elapsed = time.monotonic() - started
    time.sleep(1.0)
    stop.set()
    thread.join(10)
    shown = [t for t, _ in frames if t >= started]
    assert len(shown) <= elapsed * 4 + 6  # never more than max_fps, whatever the rate of changes
    follower = BookFollower(engine, "csv:fast")
    last = frames[-1][1]
    assert last.seq == follower.seq and last.bids == follower.top(1).bids  # type: ignore[union-attr]


def test_watch_waits_for_a_stream_that_does_not_exist_yet(db_env: dict[str, str], engine: Engine) -> None:
    """Like ``tail -F``: it says it waits, then shows the stream's first frame once it appears."""
    proc = track(
        subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", "watch", "csv:later", "--depth", "3", "--json"],
            env=db_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    time.sleep(3)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    header, *rows = V31.read_text(encoding="utf-8").splitlines(keepends=True)
    _ingest(engine, header + "".join(rows[:3000]), "csv:later")
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    assert first["stream"] == "csv:later" and [first["bids"], first["asks"]] == list(_top(engine, "csv:later", 3))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "waiting for stream csv:later to appear" in err
