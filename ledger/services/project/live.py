"""``ledger run``: capture a live feed and project it in one process.

The capture (:mod:`ledger.venues.coinbase.capture`) runs on the main thread's event loop;
a follower (:mod:`ledger.services.project.follow`) runs on a thread of its own. Events go through
the log, so what is projected is exactly what was committed, and a crash of either side
loses nothing. Between the two, a bounded queue carries the ids of the streams each
commit grew: it wakes the follower at once, without a round trip through PostgreSQL's
LISTEN/NOTIFY. When it is full the wake-up is dropped, which costs nothing: the follower
drains the queue and looks at every stream on each slow poll anyway.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from sqlalchemy.engine import Engine

from ledger.services.project.follow import FollowOptions, follow
from ledger.services.project.run import ProjectOptions, ProjectSummary
from ledger.venues.coinbase.capture import Capture, capture
from ledger.venues.coinbase.options import ApiCredentials, CaptureSummary, CoinbaseOptions, stream_name

__all__ = ["run_live"]

log = logging.getLogger(__name__)
_WAKEUPS = 10_000


def run_live(
    engine: Engine,
    options: CoinbaseOptions,
    credentials: ApiCredentials,
    project: ProjectOptions,
    *,
    on_summary: Callable[[CaptureSummary], None] | None = None,
) -> tuple[CaptureSummary, list[ProjectSummary]]:
    """Capture ``options.products`` and follow their streams until the capture stops."""
    wakeups: queue.Queue[int] = queue.Queue(maxsize=_WAKEUPS)
    stop = threading.Event()
    failed = threading.Event()  # the follower failed: stop the capture too
    results: list[ProjectSummary] = []
    errors: list[BaseException] = []
    streams = tuple(stream_name(p) for p in options.products)

    def projector() -> None:
        try:
            following = FollowOptions(streams=streams, poll=1.0, project=project)
            results.extend(follow(engine, following, stop, wakeups=wakeups))
        except BaseException as e:  # raised on the main thread below
            errors.append(e)
            failed.set()

    def woken(stream_ids: list[int]) -> None:
        for sid in stream_ids:
            try:
                wakeups.put_nowait(sid)
            except queue.Full:
                break

    thread = threading.Thread(target=projector, name="ledger-follow", daemon=True)
    thread.start()
    try:
        summary = capture(Capture(engine, options, credentials, on_summary=on_summary, on_commit=woken, halt=failed))
    finally:
        stop.set()
        thread.join()
    if errors:
        raise errors[0]
    return summary, results
