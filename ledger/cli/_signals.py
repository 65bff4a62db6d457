"""How a ``ledger`` command ends on a signal.

Rules:

* **SIGTERM and SIGHUP** end any command the way an exception does: ``SystemExit`` with
  code 128 + the signal's number (143, 129: what a shell shows for a process the signal
  killed) is raised in the main thread, so every ``finally`` block and atexit hook runs.
  In particular the command lets go of the embedded PostgreSQL, which stops when this was
  its last user (a process killed outright by the signal would leave it running until some
  later ``ledger`` command exits). A signal the parent set to be ignored (``nohup``, a
  background job) stays ignored. :func:`end_on_termination` installs this for ``main()``.
* **SIGINT** (Ctrl-C) keeps Python's ``KeyboardInterrupt`` (click says ``Aborted!``),
  except in the commands that stop cleanly (below).
* **Commands that stop cleanly** use :func:`stopping_on_signals`: the first SIGINT, SIGTERM
  or SIGHUP only records a request, which the command checks at its next safe point
  (between chunks of lines or events, between two rounds of a report). Commands with an
  end of their own (``ingest csv``, ``project``) then commit what is complete, print their
  summary and how to resume, and exit 128 + the signal's number (130 for Ctrl-C); commands
  that run until stopped (``status --watch``, ``watch``, ``project --follow``) exit 0.
* **A second signal** while a command stops cleanly stops it at once (``SystemExit``,
  128 + its number): what was committed stays committed.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["STOP_SIGNALS", "StopRequest", "Terminated", "end_on_termination", "stopping_on_signals"]

#: The signals a clean stop answers to.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(SystemExit):
    """Raised in the main thread by a signal that ends the command (see the rules above)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


def end_on_termination() -> None:
    """SIGTERM and SIGHUP raise :class:`Terminated` from now on (unless they are ignored)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _terminate)


class StopRequest:
    """The first stop signal a command got, if any."""

    def __init__(self, on_request: Callable[[], None] | None = None) -> None:
        self.signum: int | None = None
        self._on_request = on_request

    def is_set(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return "" if self.signum is None else signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal's number (0 when no signal came)."""
        return 0 if self.signum is None else 128 + self.signum

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None:  # the second one: stop at once
            # os.write, not print: the main thread may be inside a write to stderr right now
            os.write(2, f"ledger: {signal.Signals(signum).name} again: stopping at once\n".encode())
            raise Terminated(signum)
        self.signum = signum
        if self._on_request is not None:
            self._on_request()


@contextmanager
def stopping_on_signals(on_request: Callable[[], None] | None = None) -> Iterator[StopRequest]:
    """Within the block, the first SIGINT, SIGTERM or SIGHUP is recorded in the yielded
    :class:`StopRequest` (and ``on_request`` is called, from the signal handler, in the main
    thread: it may raise to cut a blocking call short); a second one raises
    :class:`Terminated`. The previous handlers come back after the block. Signals that are
    ignored stay ignored; outside the main thread nothing is installed."""
    request = StopRequest(on_request)
    previous: dict[int, signal.Handlers | Callable[[int, FrameType | None], object] | int | None] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, request._handle)
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
