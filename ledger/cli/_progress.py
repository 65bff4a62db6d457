"""Progress of input whose size is unknown (``ledger ingest csv -``): lines read and lines/s.

Rule: on a terminal only. While the input is read, one line of stderr says how many lines
have been read and how fast (lines/s over the last few seconds), rewritten in place four
times a second; it is erased when the reading ends, before the summary is printed. When
stderr is not a terminal (a pipe, a file, a CI log) nothing at all is written, so logs get
no carriage returns and no escape sequences.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, BinaryIO

__all__ = ["CountingReader", "line_ticker"]

_EVERY = 0.25  # seconds between two updates
_WINDOW = 3.0  # seconds the rate is measured over


class CountingReader:
    """A binary file that counts the line ends in what is read from it (the reads go to the
    file as they are: same sizes, same blocking, same errors)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.newlines = 0
        if hasattr(raw, "read1"):  # only what the file has: readers pick read1 when it is there
            self.read1 = self._read1

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data:
            self.newlines += data.count(b"\n")
        return data

    def _read1(self, size: int = -1) -> bytes:
        data: bytes = self._raw.read1(size)  # type: ignore[attr-defined]
        if data:
            self.newlines += data.count(b"\n")
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self._raw.readline(size)
        if data.endswith(b"\n"):
            self.newlines += 1
        return data

    def readinto(self, buffer: Any) -> int | None:
        n: int | None = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self.newlines += bytes(memoryview(buffer)[:n]).count(b"\n")
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __enter__(self) -> CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()


def _line(label: str, lines: int, rate: float) -> str:
    return f"{label}: {lines:,} lines read, {rate:,.0f} lines/s"


@contextmanager
def line_ticker(counter: CountingReader, label: str, *, out: IO[str] | None = None) -> Iterator[None]:
    """Within the block, the line of the rule above on ``out`` (stderr), if it is a terminal.
    The first line of the input (the CSV header) is not counted."""
    stream = sys.stderr if out is None else out
    if not stream.isatty():
        yield
        return
    done = threading.Event()
    samples: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])

    def show() -> None:
        while not done.wait(_EVERY):
            now, lines = time.monotonic(), max(0, counter.newlines - 1)
            samples.append((now, lines))
            while now - samples[0][0] > _WINDOW:
                samples.popleft()
            then, before = samples[0]
            rate = (lines - before) / (now - then) if now > then else 0.0
            stream.write("\r" + _line(label, lines, rate) + "\x1b[K")
            stream.flush()

    thread = threading.Thread(target=show, name="ledger-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        stream.write("\r\x1b[K")
        stream.flush()
