"""Child processes never outlive the test that started them.

A test that starts ``ledger`` (or anything else) as a child process registers it with
:func:`track`. Rule: whatever way the test ends (passed, failed, an error in a helper), each
tracked child still running is stopped before any fixture is torn down: SIGTERM first,
SIGKILL if it has not exited within a few seconds. So a failed test cannot leave, say, a
``project --follow`` holding a stream's advisory lock while the next test waits for it, nor
a process holding a table lock while the ``engine`` fixture empties the tables.

Loaded by ``tests/conftest.py`` (``pytest_plugins``).
"""

from __future__ import annotations

import contextlib
import subprocess
from typing import Any, TypeVar

import pytest

__all__ = ["stop_children", "track"]

P = TypeVar("P", bound="subprocess.Popen[Any]")

_children: list[subprocess.Popen[Any]] = []
_GRACE = 5.0  # seconds a child gets to exit on SIGTERM before SIGKILL


def track(proc: P) -> P:
    """Register ``proc`` to be stopped when the current test ends; returns it."""
    _children.append(proc)
    return proc


def stop_children() -> None:
    """Stop every tracked child still running, and forget them all."""
    while _children:
        proc = _children.pop()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    # tryfirst: before pytest's own implementation tears the fixtures down.
    stop_children()
