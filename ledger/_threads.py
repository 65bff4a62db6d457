"""A thread and a bounded queue between it and the thread that made it, in either direction.

:class:`Worker`: items handed to a thread. ``submit`` puts an item in the queue (blocking
while ``maxsize`` items wait: back-pressure on a caller faster than the work) and the
thread hands the items, in order, to ``work(items)``; ``flush`` waits until everything
submitted so far is done. When ``work`` raises, the items after it are dropped and the
error is raised in the caller, by its next ``submit``, ``flush`` or ``close``: the thread
that hands out work hears of its failure. ``abandon`` stops it without a word, for a caller
failing itself. The projector's committer and the CSV ingest's writer are workers.

:func:`ahead`: the other way round. The items of an iterable are made on a thread
ahead of the caller, at most ``maxsize`` waiting; an error there is raised in the caller,
where the next item would have come; leaving the loop early stops the thread.

Both threads are daemons: a process that exits does not wait for them.

:func:`prompt_handoffs`: while a pipeline runs, a thread that got a reply from the database
takes the GIL back within half a millisecond rather than five.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["Worker", "ahead", "prompt_handoffs"]

T = TypeVar("T")


class _Flush:
    """A marker in a worker's queue: everything before it is done when it is reached."""

    def __init__(self) -> None:
        self.reached = threading.Event()


class _Stop:
    """The marker that ends a worker's queue."""


class _Abandoned(Exception):
    """Marks a worker told to stop without a word; never raised."""


class _Failed:
    """An error on the reading thread, on its way to the caller."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_STOP = _Stop()


class Worker(Generic[T]):
    """A thread that does ``work(items)`` with the items submitted (see the module's text).

    ``work`` gets an iterator of the items, in the order submitted, and may set up around
    it whatever the work needs (a connection); the iterator ends at :meth:`close`."""

    def __init__(self, work: Callable[[Iterator[T]], None], *, name: str, maxsize: int = 2) -> None:
        self._work = work
        self._queue: queue.Queue[T | _Flush | _Stop] = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, item: T) -> None:
        """Hand ``item`` over, waiting while the queue is full; raise what failed before."""
        self._raise_error()
        self._queue.put(item)

    def flush(self) -> None:
        """Wait until every item submitted so far is done; raise what failed."""
        if self._thread.is_alive():
            flush = _Flush()
            self._queue.put(flush)
            flush.reached.wait()
        self._raise_error()

    def close(self) -> None:
        """Do what is queued, end the thread, and raise what failed."""
        self._stop()
        self._raise_error()

    def abandon(self) -> None:
        """End the thread after the item in hand, dropping those still queued, and keep
        quiet about any failure: the caller is failing itself."""
        self._error = self._error or _Abandoned()  # the items left are dropped once an error is set
        self._stop()
        self._error = None

    # -- the thread --------------------------------------------------------------------------------

    def _serve(self) -> None:
        ended = threading.Event()  # the items ran out: the stop marker was taken
        try:
            self._work(self._items(ended))
        except BaseException as e:  # handed to the caller, which raises it
            self._error = e
        while not ended.is_set():  # drop what is left, but let every flush through
            item = self._queue.get()
            if isinstance(item, _Flush):
                item.reached.set()
            elif isinstance(item, _Stop):
                ended.set()

    def _items(self, ended: threading.Event) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if isinstance(item, _Stop):
                ended.set()
                return
            if isinstance(item, _Flush):
                item.reached.set()  # what came before it is done: the work asked for more
            elif self._error is None:
                yield item
            # else: abandoned, so the item is dropped

    # -- the caller --------------------------------------------------------------------------------

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._stop()
            raise error


def ahead(items: Callable[[], Iterable[T]], *, name: str, maxsize: int = 2) -> Iterator[T]:
    """The items of ``items()``, made on a thread of its own ahead of the caller (see the
    module's text). ``items`` is called on that thread, so what it opens belongs there."""
    handover: queue.Queue[T | _Failed | _Stop] = queue.Queue(maxsize)
    stop = threading.Event()

    def make() -> None:
        try:
            made = iter(items())
            try:
                for item in made:
                    while not stop.is_set():
                        try:
                            handover.put(item, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            finally:
                close = getattr(made, "close", None)
                if close is not None:
                    close()  # a generator's own cleanup (a connection it holds) runs here
            handover.put(_STOP)
        except BaseException as e:  # handed over to the caller, which raises it
            handover.put(_Failed(e))

    thread = threading.Thread(target=make, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = handover.get()
            if isinstance(item, _Stop):
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                handover.get(timeout=0.1)
        thread.join()


#: The GIL switch interval while a pipeline runs (seconds; CPython's default is 0.005).
HANDOFF_INTERVAL = 0.0005
_handoffs = {"depth": 0, "saved": 0.0}
_handoffs_lock = threading.Lock()


@contextlib.contextmanager
def prompt_handoffs() -> Iterator[None]:
    """Lower the interpreter's GIL switch interval to :data:`HANDOFF_INTERVAL` while the
    block runs (never raise it), and put it back when the last such block ends.

    Why: in an ingest one thread parses without a pause while another talks to PostgreSQL.
    Each time the talking thread's socket wait ends (a reply, room to send), it needs the
    GIL back, and the parsing thread lets go of it only when asked and the switch interval
    has passed: 5 ms by default, for a reply that took 0.2 ms. A commit of several
    statements waited so about 15 ms a statement, and the writer, not the parser, set the
    pace (1M CSV events: 3.3 s with the default, 2.4 s at 0.5 ms, the parser's CPU
    hardly changed). The same holds for the Coinbase capture (its event loop decodes, a
    thread commits): p99 receipt-to-commit at 80,000 msg/s 45-50 ms rather than 60-68. Not
    for a projection, whose threads all do Python work: there it measured no better.
    Process-wide, as the interval is: nested and concurrent blocks share one lowering,
    undone by the last to end."""
    with _handoffs_lock:
        if _handoffs["depth"] == 0:
            _handoffs["saved"] = sys.getswitchinterval()
            sys.setswitchinterval(min(_handoffs["saved"], HANDOFF_INTERVAL))
        _handoffs["depth"] += 1
    try:
        yield
    finally:
        with _handoffs_lock:
            _handoffs["depth"] -= 1
            if _handoffs["depth"] == 0:
                sys.setswitchinterval(_handoffs["saved"])
