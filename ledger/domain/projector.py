"""The projector: typed events in, a book and its L1 rows out. Pure: no I/O, no clocks.

This is the code production runs (batch, follow mode, ``ledger book``, ``watch``) and the
code the property tests drive against a naive model. Each venue turns its stored records
into :mod:`ledger.domain.events`; :meth:`Projector.apply` maps each event to one book
operation and, at the end of each exchange event, applies the two rules that hold for every
venue, written here only:

**L1.** After an event ends (its :data:`~ledger.domain.events.LAST` record), when both sides
of the book have a level, the best bid and best ask with the total size at each form the
top of book; a row is emitted when any of the four differs from the last row emitted. A
locked or crossed book is still emitted; a book with an empty side emits nothing and leaves
the last row as it was. A level whose total is 0 (orders resting at size 0) is not a level.

**Crossed book.** A book whose best bid is above its best ask counts one ``crossed_book``
anomaly when it becomes crossed (at an event end); staying crossed counts nothing more.
Locked (bid == ask) is not crossed.

Records inside an event (no ``LAST`` flag) change the book but are never looked at: no L1
row, no crossed count. A run of :data:`~ledger.domain.events.SNAPSHOT` records replaces the
book (it is cleared at the run's first record, with or without a ``Clear`` before it); the
run ends at a record without the flag or after a snapshot record that ends an event (so a
snapshot that directly follows another one replaces it);
:data:`~ledger.domain.events.MAYBE_BAD_BOOK` marks the book as possibly wrong until the next
clear or snapshot (:attr:`Projector.maybe_bad`).

    >>> p = Projector()
    >>> out = []
    >>> p.apply([add(1, "a", BUY, 228, 50), add(2, "b", SELL, 230, 300)], out)
    2
    >>> out
    [(2, None, 228, 50, 230, 300)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import localcontext
from typing import Any, NoReturn, Protocol

from ledger.domain.book import Book, Level, Top
from ledger.domain.events import EXACT, LAST, MAYBE_BAD_BOOK, SNAPSHOT, Number, Record
from ledger.domain.marks import step
from ledger.domain.snapshot import ProjectorState

__all__ = [
    "ADD",
    "CLEAR",
    "DELETE",
    "FILL",
    "MARK",
    "MODIFY",
    "PRICED",
    "REDUCE",
    "L1Row",
    "Projector",
    "StoredKinds",
]

#: One L1 row: seq, time (as the event carried it), bid price, bid size, ask price, ask size;
#: and a seventh element, True, while the venue says the book may be wrong
#: (:data:`~ledger.domain.events.MAYBE_BAD_BOOK`, until the next clear or snapshot).
L1Row = tuple[int, Any, Number, Number, Number, Number] | tuple[int, Any, Number, Number, Number, Number, bool]

#: What a stored record does to the book, for :meth:`Projector.apply_stored` (a venue's
#: :class:`StoredKinds` maps each of its stored kinds to one; compared by identity): ``ADD``
#: rests an order (price and size); ``REDUCE`` takes the size off a resting order, which
#: keeps its place (at 0 it goes); ``MODIFY`` gives it a new absolute price and size by the
#: common priority rule; ``DELETE`` removes a resting order; ``FILL`` takes a traded size off
#: a resting order (at 0 it goes; the trade's price is made a number, never used);
#: ``CLEAR`` empties the book; ``PRICED`` (a record with a price, such as a trade) and
#: ``MARK`` change nothing. Each is the book operation of the event of the same name
#: (``PRICED`` and ``MARK``: ``trade`` and ``mark``).
ADD = "add"
REDUCE = "reduce"
MODIFY = "modify"
DELETE = "delete"
FILL = "fill"
CLEAR = "clear"
PRICED = "priced"
MARK = "mark"


class StoredKinds(Protocol):
    """A venue's rules whose stored records each are one book operation, told by the
    record's kind alone (see :meth:`Projector.apply_stored`)."""

    #: The book operation of each stored kind (a kind not in it is refused).
    ops: Mapping[str, str]
    #: Whether the rows carry the record's flags (``(seq, kind, order_id, side, price, size,
    #: ts, flags, ts_event, ...)``); without, a row is ``(seq, kind, order_id, side, price,
    #: size, ts)`` and each record is a whole event (:data:`~ledger.domain.events.LAST`).
    flagged: bool
    #: Stored price and size texts already made exact numbers.
    known: dict[str, Number]

    #: The exact number of a price or size not in ``known`` (kept there when it is text).
    def number(self, known: dict[str, Number], value: Any, /) -> Any: ...

    #: Raise the venue's own error for a row it refuses.
    def refuse(self, row: Sequence[Any], /) -> NoReturn: ...


_NO_LEVEL = Level()
_RARE = SNAPSHOT | MAYBE_BAD_BOOK
_MARKS = SNAPSHOT | MAYBE_BAD_BOOK | LAST


class Projector:
    """One stream's book and the L1 and crossed-book rules around it (see the module)."""

    __slots__ = ("book", "crossed", "error_threshold", "in_snapshot", "last", "maybe_bad")

    def __init__(self, error_threshold: int | None = None) -> None:
        self.book = Book()
        #: The top of the last L1 row emitted (None: none yet).
        self.last: Top | None = None
        self.crossed = False
        #: Stop (apply no more) once the book's anomalies exceed this many (None: never).
        self.error_threshold = error_threshold
        self.in_snapshot = False
        #: The venue said the book may be wrong; cleared by the next clear or snapshot.
        self.maybe_bad = False

    # -- applying ------------------------------------------------------------------------

    def apply(self, events: Iterable[Record], out: list[L1Row] | None, *, l1: bool = True) -> int:
        """Apply ``events`` in order (any iterable: a venue's rules hand them over one at a
        time) and append each L1 row to ``out`` (None: a replay that writes nothing, and no
        error threshold). Return how many were applied: fewer when the anomalies went past
        the error threshold. Without ``l1`` only the book changes (a book wanted at one
        point, not a projection that goes on)."""
        threshold = self.error_threshold if out is not None else None
        with localcontext(EXACT):
            return self._apply(events, out, l1, threshold)

    def _apply(self, events: Iterable[Record], out: list[L1Row] | None, l1: bool, threshold: int | None) -> int:
        book = self.book
        anomalies = book.anomalies
        add, delete, trade, update = book.add, book.delete, book.trade, book.update
        side_of = book.side_of
        # The flags looked at before a record is applied: a snapshot's or a warning's, and any
        # record's inside a snapshot run (one without the flag, or the run's last, ends it).
        rare = _RARE
        whole = LAST  # the flags of a record that is a whole event
        in_snapshot = self.in_snapshot
        # The L1 rule, inlined (it runs after every event). While the best levels are the
        # same objects with the same totals as at the last check, the top has not moved:
        # a level keeps its price for life.
        last: tuple[Any, ...] | None = self.last
        seen_bid: Level = _NO_LEVEL  # (never a level of a book)
        seen_ask: Level = _NO_LEVEL
        look = LAST if l1 else -1
        seen_bid_size: Any = None
        seen_ask_size: Any = None
        bid_price: Any = None
        ask_price: Any = None
        applied = 0
        # The tests of the last flags seen (a record's flags is an int: None is never one).
        seen_flags: Any = None
        seen_rare: Any = False
        seen_end: Any = False
        seen_within: Any = False
        # Events are read by position (the layout of ledger.domain.events: kind, seq, ts,
        # flags, ts_event, then the kind's own fields), the most frequent kinds first.
        try:
            for event in events:
                if threshold is not None and anomalies.total() > threshold:
                    return applied
                kind = event[0]
                flags = event[3]
                if flags != seen_flags:  # a venue's records come in runs of a few flag values
                    seen_flags = flags
                    seen_rare = flags != whole and flags & rare  # a whole event: one test
                    seen_end = flags == look or (l1 and flags & LAST)
                    # A snapshot record that neither ends the run nor warns changes no mark
                    # inside a run (marks.step): the run's records, but its first and last.
                    seen_within = flags & _MARKS == SNAPSHOT
                if (in_snapshot and not seen_within) or (seen_rare and not in_snapshot):
                    self._flags(flags)
                    in_snapshot = self.in_snapshot
                # An order given by its id alone (side None) is found on either side: some
                # venues' messages do not say the side of the order they act on.
                if kind == "add":
                    add(event[6], event[5], event[7], event[8])
                elif kind == "delete":
                    side = event[6]
                    if side is None and (side := side_of(event[5])) is None:
                        if not event[7]:  # if_resting: an order that never rested is no anomaly
                            anomalies["delete_unknown_order"] += 1
                    else:
                        delete(side, event[5], event[7])
                elif kind == "fill":
                    side = event[6]
                    if side is None and (side := side_of(event[5])) is None:
                        anomalies["trade_unknown_order"] += 1
                    else:
                        trade(side, event[5], event[8], event[9])
                elif kind == "modify":
                    side = event[6]
                    if side is None and (side := side_of(event[5])) is None:
                        if not event[11]:
                            anomalies["update_unknown_order"] += 1
                    else:
                        update(side, event[5], event[7], event[8], event[9], event[10], event[11])
                elif kind == "mark" or kind == "trade":
                    pass
                elif kind == "reduce":
                    side = event[6]
                    if side is None and (side := side_of(event[5])) is None:
                        anomalies["reduce_unknown_order"] += 1
                    else:
                        book.reduce(side, event[5], event[7])
                elif kind == "clear":
                    book.clear()
                    self.maybe_bad = False
                elif kind == "replace":
                    _, _, _, _, _, order_id, side, new_id, price, size = event
                    if side is None and (side := side_of(order_id)) is None:
                        anomalies["replace_unknown_order"] += 1
                    else:
                        book.replace(side, order_id, new_id, price, size)
                else:
                    raise TypeError(f"not an event: {event!r}")
                applied += 1
                # Look at the book only at an event's end (a whole event: flags == LAST).
                if not seen_end:
                    continue
                bid_level = book.best_bid_level
                ask_level = book.best_ask_level
                if bid_level is seen_bid and ask_level is seen_ask:  # the usual case
                    bid_size = seen_bid.total
                    ask_size = seen_ask.total
                    if bid_size == seen_bid_size and ask_size == seen_ask_size:
                        continue
                    # After every check the last row is the seen levels at their seen sizes:
                    # the same prices at other sizes differ from it, and are as crossed.
                    seen_bid_size, seen_ask_size = bid_size, ask_size
                elif bid_level is None or ask_level is None:
                    seen_bid = _NO_LEVEL
                    continue
                else:
                    seen_bid, seen_ask, bid_price, ask_price = bid_level, ask_level, book.best_bid, book.best_ask
                    seen_bid_size = bid_size = bid_level.total
                    seen_ask_size = ask_size = ask_level.total
                    if (bid_price, bid_size, ask_price, ask_size) == last:
                        continue
                    crossed = bid_price > ask_price
                    if crossed and not self.crossed:
                        anomalies["crossed_book"] += 1
                    self.crossed = crossed
                last = (bid_price, bid_size, ask_price, ask_size)
                if out is not None:
                    if self.maybe_bad:
                        out.append((event[1], event[2], bid_price, bid_size, ask_price, ask_size, True))
                    else:
                        out.append((event[1], event[2], bid_price, bid_size, ask_price, ask_size))
        finally:
            self.last = None if last is None else Top(*last)
        return applied

    def apply_stored(
        self, rows: Iterable[Sequence[Any]], kinds: StoredKinds, out: list[L1Row] | None, *, l1: bool = True
    ) -> int:
        """:meth:`apply` of the events a venue's rules make of its stored rows ``(seq, kind,
        order_id, side, price, size, ts, flags, ts_event, ...)`` (or the first seven, when
        not ``kinds.flagged``: whole events), where each record is one book operation told
        by its kind (``kinds.ops``; the fields after ``flags`` are not read): the rows are
        applied as they are, with no event made of them, under the same rules (flags, L1,
        crossed book, error threshold; an order without a side is looked up on either). A
        row the venue refuses (an unknown kind; an add without a side, a price or a size; a
        modify or fill without a price or a size) raises its own error when its turn comes
        (``kinds.refuse``)."""
        threshold = self.error_threshold if out is not None else None
        with localcontext(EXACT):
            return self._apply_stored(rows, kinds, out, l1, threshold)

    def _apply_stored(
        self,
        rows: Iterable[Sequence[Any]],
        kinds: StoredKinds,
        out: list[L1Row] | None,
        l1: bool,
        threshold: int | None,
    ) -> int:
        # _apply with the venue's decoding written in: keep the two in step.
        book = self.book
        anomalies = book.anomalies
        add, update, reduce, delete, trade = book.add, book.update, book.reduce, book.delete, book.trade
        side_of = book.side_of
        ops = dict(kinds.ops)  # (a plain dict: the subscript CPython specialises)
        flagged = kinds.flagged
        known = kinds.known
        number = kinds.number
        rare = _RARE
        whole = LAST
        in_snapshot = self.in_snapshot
        last: tuple[Any, ...] | None = self.last
        seen_bid: Level = _NO_LEVEL
        seen_ask: Level = _NO_LEVEL
        look = LAST if l1 else -1
        seen_bid_size: Any = None
        seen_ask_size: Any = None
        bid_price: Any = None
        ask_price: Any = None
        applied = 0
        seen_flags: Any = None
        seen_rare: Any = False
        seen_end: Any = False
        seen_within: Any = False
        try:
            for row in rows:
                if flagged:
                    try:  # a row as the log returns it: exactly the nine fields read
                        seq, kind, order_id, side, price, size, ts, flags, _ = row
                    except ValueError:
                        seq, kind, order_id, side, price, size, ts, flags, _ = row[:9]
                else:
                    seq, kind, order_id, side, price, size, ts = row
                    flags = whole
                try:
                    op = ops[kind]
                except KeyError:
                    kinds.refuse(row)
                if threshold is not None and anomalies.total() > threshold:
                    return applied
                if flags != seen_flags:
                    seen_flags = flags
                    seen_rare = flags != whole and flags & rare
                    seen_end = flags == look or (l1 and flags & LAST)
                    seen_within = flags & _MARKS == SNAPSHOT
                if (in_snapshot and not seen_within) or (seen_rare and not in_snapshot):
                    self._flags(flags)
                    in_snapshot = self.in_snapshot
                if op is ADD or op is MODIFY or op is FILL:  # the operations with a price and a size
                    try:
                        price = known[price]
                    except KeyError:
                        price = number(known, price)
                    try:
                        size = known[size]
                    except KeyError:
                        size = number(known, size)
                    if price is None or size is None:
                        kinds.refuse(row)
                    if op is ADD:
                        if side is None:
                            kinds.refuse(row)
                        add(side, order_id, price, size)
                    elif side is None and (side := side_of(order_id)) is None:
                        anomalies["update_unknown_order" if op is MODIFY else "trade_unknown_order"] += 1
                    elif op is MODIFY:
                        update(side, order_id, price, size, None, False, False)
                    else:
                        trade(side, order_id, size, False)
                elif op is DELETE:
                    if side is None and (side := side_of(order_id)) is None:
                        anomalies["delete_unknown_order"] += 1
                    else:
                        delete(side, order_id, False)
                elif op is REDUCE:
                    try:
                        size = known[size]
                    except KeyError:
                        size = number(known, size)
                    if side is None and (side := side_of(order_id)) is None:
                        anomalies["reduce_unknown_order"] += 1
                    else:
                        reduce(side, order_id, size)
                elif op is CLEAR:
                    book.clear()
                    self.maybe_bad = False
                applied += 1
                if not seen_end:
                    continue
                bid_level = book.best_bid_level
                ask_level = book.best_ask_level
                if bid_level is seen_bid and ask_level is seen_ask:
                    bid_size = seen_bid.total
                    ask_size = seen_ask.total
                    if bid_size == seen_bid_size and ask_size == seen_ask_size:
                        continue
                    seen_bid_size, seen_ask_size = bid_size, ask_size
                elif bid_level is None or ask_level is None:
                    seen_bid = _NO_LEVEL
                    continue
                else:
                    seen_bid, seen_ask, bid_price, ask_price = bid_level, ask_level, book.best_bid, book.best_ask
                    seen_bid_size = bid_size = bid_level.total
                    seen_ask_size = ask_size = ask_level.total
                    if (bid_price, bid_size, ask_price, ask_size) == last:
                        continue
                    crossed = bid_price > ask_price
                    if crossed and not self.crossed:
                        anomalies["crossed_book"] += 1
                    self.crossed = crossed
                last = (bid_price, bid_size, ask_price, ask_size)
                if out is not None:
                    if self.maybe_bad:
                        out.append((seq, ts, bid_price, bid_size, ask_price, ask_size, True))
                    else:
                        out.append((seq, ts, bid_price, bid_size, ask_price, ask_size))
        finally:
            self.last = None if last is None else Top(*last)
        return applied

    def _flags(self, flags: int) -> None:
        """The rare flags, looked at before the record is applied (the rule of
        :func:`ledger.domain.marks.step`; a clear lifts the warning as it is applied): the
        first record of a run of snapshot records clears the book (the run rebuilds it); a
        venue's warning that the book may be wrong holds until the next clear or snapshot."""
        self.in_snapshot, self.maybe_bad, starts = step(self.in_snapshot, self.maybe_bad, flags, clear=False)
        if starts:
            self.book.clear()

    # -- state ---------------------------------------------------------------------------

    def over_threshold(self) -> bool:
        return self.over_threshold_with(self.book.anomalies)

    def over_threshold_with(self, anomalies: Mapping[str, int]) -> bool:
        return self.error_threshold is not None and sum(anomalies.values()) > self.error_threshold

    def state(self) -> ProjectorState:
        return ProjectorState(
            book=self.book,
            l1_last=self.last,
            crossed=self.crossed,
            in_snapshot=self.in_snapshot,
            maybe_bad=self.maybe_bad,
        )

    def restore(self, state: ProjectorState) -> None:
        self.book = state.book
        self.last = state.l1_last
        self.crossed = state.crossed
        self.in_snapshot = state.in_snapshot
        self.maybe_bad = state.maybe_bad

    def reset(self, book: Book) -> None:
        """Take ``book`` (a venue's own book, at a seq) as the book; anomaly counts go on."""
        book.anomalies = self.book.anomalies
        self.book = book
        self.in_snapshot = False

    def emit_l1(self, seq: int, ts: Any, out: list[L1Row] | None) -> None:
        """After a reset: an L1 row at ``seq`` when the top of the new book differs from the
        last row (the same rule as :meth:`apply`, at a point no event marks)."""
        top = self.book.top()
        if top is None or top == self.last:
            return
        self.last = top
        self.crossed = top.bid_price > top.ask_price
        if out is not None:
            out.append((seq, ts, *top, True) if self.maybe_bad else (seq, ts, *top))
