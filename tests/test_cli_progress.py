"""``ledger ingest csv -`` shows lines read and lines/s on a terminal, and nothing in a pipe
(#14 item 8): the rule of ledger/cli/_progress.py, through a real pseudo-terminal."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from ledger.cli._progress import CountingReader
from tests.children import track
from tests.conftest import V31

HEADER, *ROWS = V31.read_text(encoding="utf-8").splitlines(keepends=True)
_TICK = re.compile(r"\ringesting stdin: ([\d,]+) lines read, ([\d,]+) lines/s\x1b\[K")


def _ingest_stdin(env: dict[str, str], stderr: int) -> subprocess.Popen[bytes]:
    return track(
        subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", "ingest", "csv", "-", "-s", "csv:tty", "--flush-interval", "0.1"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    )


def _feed(proc: subprocess.Popen[bytes], shown: Callable[[], bool] = lambda: True) -> None:
    """The header and 1,000 lines, a pause (until ``shown()`` says the ticker has shown
    them, at least 1.5 s), then 2,000 more, in a trickle."""
    assert proc.stdin is not None
    proc.stdin.write((HEADER + "".join(ROWS[:1000])).encode())
    proc.stdin.flush()
    time.sleep(1.5)
    deadline = time.monotonic() + 60  # the command may take long to start on a loaded machine
    while not shown() and time.monotonic() < deadline:
        time.sleep(0.1)
    for start in range(1000, 3000, 500):
        proc.stdin.write("".join(ROWS[start : start + 500]).encode())
        proc.stdin.flush()
        time.sleep(0.3)
    proc.stdin.close()


def _finish(proc: subprocess.Popen[bytes]) -> bytes:
    """What the ingest printed on stdout (a short summary), once it has ended."""
    assert proc.stdout is not None
    proc.wait(60)
    return proc.stdout.read()


def test_stdin_shows_lines_and_rate_on_a_terminal(db_env: dict[str, str]) -> None:
    main, terminal = pty.openpty()
    proc = _ingest_stdin(db_env, terminal)
    os.close(terminal)
    shown = bytearray()

    def read() -> None:
        while True:
            try:
                data = os.read(main, 4096)
            except OSError:  # EIO: the last writer has gone
                return
            if not data:
                return
            shown.extend(data)

    reader = threading.Thread(target=read)
    reader.start()
    _feed(proc, lambda: b"1,000 lines read" in shown)
    out = _finish(proc)
    reader.join(10)
    os.close(main)
    assert proc.returncode == 0, shown.decode(errors="replace")
    text = shown.decode()
    ticks = [(int(n.replace(",", "")), int(r.replace(",", ""))) for n, r in _TICK.findall(text)]
    assert len(ticks) >= 4, text  # a few times a second while the input trickles in
    counts = [n for n, _ in ticks]
    assert counts == sorted(counts) and 1000 in counts and counts[-1] <= 3000, counts
    assert any(rate > 0 for _, rate in ticks), ticks
    assert text.rindex("\r\x1b[K") > text.rindex("lines/s")  # the line is erased at the end
    assert b"3000 lines read from -" in out  # the summary, on stdout as always


def test_stdin_progress_stays_out_of_pipes_and_logs(db_env: dict[str, str]) -> None:
    proc = _ingest_stdin(db_env, subprocess.PIPE)
    _feed(proc)
    out = _finish(proc)
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    assert b"lines/s" not in err and b"\r" not in err and b"\x1b" not in err, err
    assert b"3000 lines read from -" in out


def test_the_counting_reader_counts_line_ends_whatever_reads() -> None:
    data = b"h\n" + b"".join(b"%d,x\n" % i for i in range(1000)) + b"no end"
    reader = CountingReader(io.BufferedReader(io.BytesIO(data)))  # type: ignore[arg-type]
    assert reader.readline() == b"h\n" and reader.newlines == 1
    assert reader.read(10).count(b"\n") + 1 == reader.newlines
    reader.read1(100)
    buffer = bytearray(50)
    reader.readinto(buffer)
    reader.read()
    assert reader.newlines == 1001
    raw = CountingReader(io.FileIO(os.devnull))  # type: ignore[arg-type]
    assert not hasattr(raw, "read1")  # a raw file keeps not having one: readers fall back to read
