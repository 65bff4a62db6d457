"""Venues: everything ledger knows of one data source lives in ``ledger/venues/<name>/``.

A venue is registered here under the name its streams carry (``streams.source``). It gives:

- ``rules()``: a fresh decoder of its stored records into typed events
  (:mod:`ledger.domain.events`), one event per record; that is where the venue's book rules
  live (which kinds add, fill, modify or delete, and how);
- ``source_book(raw, where=...)``: the :class:`~ledger.domain.book.Book` of a book the venue
  published (a stored source snapshot), for venues that publish them;
- ``fields``: the venue fields of the event log (:data:`~ledger.storage.copy.VENUE_FIELDS`)
  its rules read after ``ts``, in that order;
- ``dense_seqs``: whether its seqs are consecutive, so that a missing number is a missing
  event (a gap); a venue keyed otherwise (Databento: by receive time) says False;
- ``fill_taker(raw)``: the taker's order id of a fill, read from its stored raw message,
  for venues whose messages name it but whose stored columns do not (Coinbase's
  ``match``); None where the message does not say.

Its ingest (file parsing, live capture) lives in its folder too. The projector, storage and
the command line's core never name a venue: adding one is a new folder and one line in
``_BUILT_IN`` (``docs/architecture.md``).

    >>> venue("csv").rules().events([(1, "delete", "7", "B", None, None, None)])
    [('delete', 1, None, 128, None, '7', 'B', False)]
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ledger.domain.book import Book
from ledger.domain.events import Record
from ledger.errors import StreamError

__all__ = ["Rules", "Venue", "names", "venue"]


class Rules(Protocol):
    """Stored records ``(seq, kind, order_id, side, price, size, ts)`` to typed events:
    ``iter_events`` makes them one at a time, as the projector takes them (a list of a
    chunk's events is more for the cyclic GC to walk: 8% more instructions at Python's
    default threshold, 1% at the command line's); ``events`` is the same as a list."""

    def events(self, rows: Iterable[Sequence[Any]]) -> list[Record]: ...

    def iter_events(self, rows: Iterable[Sequence[Any]]) -> Iterator[Record]: ...


@dataclass(frozen=True)
class Venue:
    """What the core needs of a venue (see the module docstring)."""

    name: str
    rules: Callable[[], Rules]
    source_book: Callable[..., Book] | None = None
    fields: tuple[str, ...] = ()
    dense_seqs: bool = True
    fill_taker: Callable[[str], str | None] | None = None


#: Every venue ledger knows: its name -> the module that defines its ``VENUE``.
_BUILT_IN = {
    "csv": "ledger.venues.csv",
    "coinbase": "ledger.venues.coinbase",
    "databento": "ledger.venues.databento",
}


def venue(name: str) -> Venue:
    """The venue registered under ``name`` (a stream's ``source``)."""
    module = _BUILT_IN.get(name)
    if module is None:
        raise StreamError(f"no venue is registered as {name!r} (known: {', '.join(sorted(_BUILT_IN))})")
    found: Venue = importlib.import_module(module).VENUE
    return found


def names() -> list[str]:
    return sorted(_BUILT_IN)
