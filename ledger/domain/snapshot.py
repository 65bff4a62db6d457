"""Book snapshots: a projector's state as compact bytes, and back.

A snapshot holds what a projector needs to go on after seq S exactly as if it had never
stopped: every resting order (side, price, size, id) in queue order, the last L1 row it
emitted, whether the book was crossed, its anomaly counts, and the venue's marks that
outlive a record: inside a run of snapshot records (``in_snapshot``) and the book possibly
wrong (``maybe_bad``). These two are written only when true, and read as false when absent
(snapshots written before them).

Format version 1 is zlib-compressed UTF-8 text::

    ledger-book 1
    {"orders": 2, "l1_last": ["228", "50", "230.2", "300"], "crossed": false, "anomalies": {}}
    B<TAB>228<TAB>50<TAB>7455201758497478055
    S<TAB>230.2<TAB>300<TAB>7457972527797789252

Orders come bids best first, then asks best first, each level in queue order, so adding
them back in file order rebuilds the same queues. A payload that is not exactly this
(unknown version, truncated, corrupt, a count that does not match) raises
:class:`~ledger.errors.SnapshotError`; a misread book is never returned.
"""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation, localcontext

from ledger.domain.book import ANOMALY_KINDS, Book, Top
from ledger.domain.events import BUY, EXACT, SELL, Number, Side
from ledger.errors import SnapshotError

__all__ = ["FORMAT_VERSION", "ProjectorState", "decode", "encode"]

FORMAT_VERSION = 1
_MAGIC = "ledger-book 1"
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n"})
_NEEDS_ESCAPE = re.compile(r"[\\\t\n]").search


@dataclass
class ProjectorState:
    """A book and the L1 bookkeeping that goes with it."""

    book: Book = field(default_factory=Book)
    l1_last: Top | None = None
    crossed: bool = False
    in_snapshot: bool = False
    maybe_bad: bool = False


def encode(state: ProjectorState) -> bytes:
    """The state as a version-1 payload."""
    book = state.book
    last = state.l1_last
    header = {
        "orders": len(book),
        "l1_last": None if last is None else [str(v) for v in last],
        "crossed": state.crossed,
        "anomalies": {k: v for k, v in book.anomalies.items() if v},
    }
    if state.in_snapshot:
        header["in_snapshot"] = True
    if state.maybe_bad:
        header["maybe_bad"] = True
    lines = [_MAGIC, json.dumps(header, sort_keys=True)]
    _order_lines(book, lines)
    return zlib.compress("\n".join(lines).encode("utf-8"), 1)


def _order_lines(book: Book, out: list[str]) -> None:
    """Append a line per resting order, bids best first then asks, each level in queue order
    (the order of :meth:`Book.iter_orders`). A level's price is formatted once, as the level
    keeps it: orders whose prices are equal but spelled otherwise (``228.8``, ``228.800``)
    are written with the level's spelling, which is the one a decoded book keys it by."""
    append = out.append
    for side in (BUY, SELL):
        for price, level in book.all_levels(side):
            head = f"{side}\t{price}\t"
            orders = level.orders
            ids = "".join(orders)
            if "\\" not in ids and "\t" not in ids and "\n" not in ids:  # the usual level: no id to escape
                out.extend([f"{head}{order.size}\t{order_id}" for order_id, order in orders.items()])
                continue
            for order_id, order in orders.items():
                if _NEEDS_ESCAPE(order_id) is not None:
                    order_id = _escape(order_id)
                append(f"{head}{order.size}\t{order_id}")


def decode(payload: bytes, format_version: int, *, where: str = "snapshot") -> ProjectorState:
    """The state in ``payload``; ``where`` (e.g. "stream X, seq S") goes in error messages."""
    if format_version != FORMAT_VERSION:
        raise SnapshotError(f"{where}: format version {format_version} is not one this ledger reads ({FORMAT_VERSION})")
    try:
        text = zlib.decompress(payload).decode("utf-8")
    except (zlib.error, UnicodeDecodeError) as e:
        raise SnapshotError(f"{where}: the payload is corrupt ({e})") from None
    lines = text.split("\n")
    if len(lines) < 2 or lines[0] != _MAGIC:
        raise SnapshotError(f"{where}: not a version-1 book snapshot")
    try:
        header = json.loads(lines[1])
        count = int(header["orders"])
        last = header["l1_last"]
        l1_last = None if last is None else Top(*(_number(v) for v in last))
        anomalies = {str(k): int(v) for k, v in header["anomalies"].items()}
        crossed = bool(header["crossed"])
        in_snapshot = header.get("in_snapshot", False) is True
        maybe_bad = header.get("maybe_bad", False) is True
    except (ValueError, KeyError, TypeError, InvalidOperation) as e:
        raise SnapshotError(f"{where}: the header is corrupt ({e})") from None
    body = lines[2:] if len(lines) > 2 or count else []
    if len(body) != count:
        raise SnapshotError(f"{where}: {len(body)} orders where the header says {count} (truncated?)")
    if set(anomalies) - set(ANOMALY_KINDS):
        raise SnapshotError(f"{where}: unknown anomaly kinds {sorted(set(anomalies) - set(ANOMALY_KINDS))}")
    numbers: dict[str, Number] = {}

    def orders() -> Iterator[tuple[Side, str, Number, Number]]:
        for line in body:
            side, price, size, order_id = line.split("\t")
            p = numbers.get(price)
            if p is None:
                p = numbers[price] = _number(price)
            s = numbers.get(size)
            if s is None:
                s = numbers[size] = _number(size)
            yield side, _unescape(order_id), p, s  # type: ignore[misc]

    try:
        with localcontext(EXACT):
            book = Book.from_orders(orders())
    except (ValueError, InvalidOperation) as e:
        raise SnapshotError(f"{where}: an order line is corrupt ({e})") from None
    book.anomalies = Counter(anomalies)
    return ProjectorState(book=book, l1_last=l1_last, crossed=crossed, in_snapshot=in_snapshot, maybe_bad=maybe_bad)


def _number(text: str) -> Number:
    value = Decimal(text) if "." in text or "E" in text or "e" in text else int(text)
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError(f"not a finite number: {text!r}")
    return value


def _escape(order_id: str) -> str:
    return order_id.translate(_ESCAPES) if ("\\" in order_id or "\t" in order_id or "\n" in order_id) else order_id


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out, chars = [], iter(text)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            out.append({"t": "\t", "n": "\n", "\\": "\\"}.get(nxt, "\\" + nxt))
        else:
            out.append(ch)
    return "".join(out)
