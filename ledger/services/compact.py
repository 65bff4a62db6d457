"""Folding streams into blocks while a long-running command runs (``--compact-every`` of
``ledger ingest coinbase``, ``ledger run`` and ``ledger project --follow``): every interval,
each named stream that exists (or every stream, when none is named) is folded up to its
projector's position, or to its highest seq when it has none
(:func:`ledger.storage.blocks.compact_stream`). The folds run in a background thread
(APScheduler) on connections of their own, beside the capture and the projector; a fold
changes no event a reader sees (see ``docs/storage.md``). A fold that fails is logged and
tried again at the next interval: it never stops the command.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Engine

from ledger.storage.blocks import Folded, compact_stream
from ledger.storage.log import Streams

__all__ = ["PeriodicCompaction"]

log = logging.getLogger(__name__)


class PeriodicCompaction:
    """Folds ``streams`` (None or empty: every stream there is at each round) every
    ``every`` seconds between ``__enter__`` and ``__exit__``. ``folded`` and ``failures``
    count what the folds did."""

    def __init__(self, engine: Engine, streams: Sequence[str] | None, every: float) -> None:
        if every <= 0:
            raise ValueError(f"every must be more than 0 seconds, not {every}")
        self._engine = engine
        self._streams = list(streams or ())
        self._every = every
        self._scheduler: Any = None
        self._lock = threading.Lock()  # one round at a time, the last one included
        self.folded = 0
        self.failures = 0

    def run_once(self) -> dict[str, Folded]:
        """One round: fold each of the streams that exists; what each fold did."""
        done: dict[str, Folded] = {}
        with self._lock:
            with self._engine.connect() as conn:
                known = {name: sid for sid, name, _ in Streams(conn).all()}
            for name in self._streams or sorted(known):
                if name not in known:
                    continue  # not created yet: the capture makes it with its first book
                try:
                    done[name] = compact_stream(self._engine, known[name])
                except Exception as e:  # logged and tried again: the command goes on
                    self.failures += 1
                    log.warning("folding stream %r into blocks failed (tried again in %gs): %s", name, self._every, e)
                    continue
                self.folded += done[name].events
        return done

    def __enter__(self) -> PeriodicCompaction:
        from apscheduler.schedulers.background import BackgroundScheduler

        self._scheduler = BackgroundScheduler(daemon=True)
        self._scheduler.add_job(self.run_once, "interval", seconds=self._every, id="compact", max_instances=1)
        self._scheduler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)  # a round under way ends first
            self._scheduler = None
