"""The venue's marks that outlive a record: a run of snapshot records under way, and the
book possibly wrong. One rule, used by the projector as it applies records and by
``ledger gaps`` as it reads the marked records back (``ledger.services.read.status``).

Rule, for each record in order:

1. A record flagged :data:`~ledger.domain.events.SNAPSHOT` that comes when no run is under
   way starts one: the book is cleared (the run rebuilds it) and the warning is lifted. The
   run goes on through the following snapshot records and ends after one that also carries
   :data:`~ledger.domain.events.LAST`, or at a record without the flag.
2. A record flagged :data:`~ledger.domain.events.MAYBE_BAD_BOOK` raises the warning.
3. A clear (the record empties the book) lifts it.

    >>> step(False, False, SNAPSHOT | MAYBE_BAD_BOOK, clear=False)  # a run starts, flagged
    (True, True, True)
    >>> step(False, False, LAST | MAYBE_BAD_BOOK, clear=True)  # a flagged clear lifts it again
    (False, False, False)
"""

from __future__ import annotations

from ledger.domain.events import LAST, MAYBE_BAD_BOOK, SNAPSHOT

__all__ = ["step"]


def step(in_snapshot: bool, maybe_bad: bool, flags: int, *, clear: bool) -> tuple[bool, bool, bool]:
    """(in a snapshot run, book maybe wrong, this record starts a snapshot run) after a
    record with ``flags`` (``clear``: the record clears the book), given the two marks
    before it (see the module's rule)."""
    starts = False
    if flags & SNAPSHOT:
        if not in_snapshot:
            starts = True
            maybe_bad = False
        in_snapshot = not flags & LAST  # the run's last record ends it
    else:
        in_snapshot = False
    if flags & MAYBE_BAD_BOOK:
        maybe_bad = True
    if clear:
        maybe_bad = False
    return in_snapshot, maybe_bad, starts
