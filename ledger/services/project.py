"""The projector: replays each stream's events in seq order into a book and writes every
best bid/offer change as an L1 row, with its position, in one transaction per chunk.

Run again, it rebuilds the book up to its position (writing nothing) and goes on from
there, so a crash at any moment neither loses nor repeats an L1 row. At a gap in the log
it stops that stream and names the missing seqs, unless told to skip gaps, in which case
it goes on and marks the gap rows as skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger.domain.book import Book
from ledger.domain.events import Add, Delete, Event, Trade, Update
from ledger.domain.l1 import L1Tracker
from ledger.errors import DatabaseError, StreamError
from ledger.storage.log import EventLog, GapStore, Streams
from ledger.storage.projection import L1Row, L1Rows, Position, Positions

__all__ = ["ProjectSummary", "event_from_row", "project"]

_PROJECT_LOCK_CLASS = 0x1ED7


@dataclass
class ProjectSummary:
    """What one projector run did to one stream."""

    stream: str
    status: str = "ok"  # ok | stopped_at_gap | error_threshold | empty | busy
    message: str | None = None
    events_applied: int = 0
    l1_rows: int = 0
    last_seq: int | None = None
    gaps_skipped: list[tuple[int, int]] = field(default_factory=list)
    anomalies: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        return self.events_applied / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["events_per_second"] = round(self.events_per_second, 1)
        out["seconds"] = round(self.seconds, 3)
        return out


def event_from_row(row: Sequence[Any]) -> Event:
    """A book event from an event-log row (seq, kind, order_id, side, price, size, ...)."""
    seq, kind, order_id, side, price, size = row[:6]
    if kind == "add":
        return Add(seq, order_id, side, _exact(price), _exact(size))
    if kind == "delete":
        return Delete(seq, order_id, side)
    if kind == "trade":
        return Trade(seq, order_id, side, _exact(price), _exact(size))
    if kind == "update":
        return Update(seq, order_id, side, _exact(price), _exact(size))
    raise StreamError(f"seq {seq}: the projector does not know the event kind {kind!r}")


def _exact(value: Decimal | None) -> Decimal:
    if value is None:
        raise StreamError("an event lacks a price or size it needs")
    return value


def project(
    engine: Engine,
    *,
    streams: Sequence[str] | None = None,
    skip_gaps: bool = False,
    error_threshold: int | None = None,
    chunk: int = 20_000,
    progress: Callable[[str, int], None] | None = None,
) -> list[ProjectSummary]:
    """Bring the projection of each stream (all when None) up to the head of its log."""
    with engine.connect() as conn:
        known = Streams(conn).all()
        conn.commit()
    wanted = known
    if streams:
        by_name = {name: (sid, name, src) for sid, name, src in known}
        with engine.connect() as conn:
            for name in streams:
                Streams(conn).get(name)  # raises with the list of known streams
        wanted = [by_name[name] for name in streams]
    summaries = []
    for stream_id, name, _source in wanted:
        summaries.append(
            _project_stream(
                engine,
                stream_id,
                name,
                skip_gaps=skip_gaps,
                error_threshold=error_threshold,
                chunk=chunk,
                progress=progress,
            )
        )
    return summaries


class _StreamProjector:
    """The book of one stream and the bookkeeping around it."""

    def __init__(self, name: str, error_threshold: int | None) -> None:
        self.name = name
        self.book = Book()
        self.tracker = L1Tracker()
        self.error_threshold = error_threshold
        self.crossed = False

    def apply(self, rows: Sequence[Sequence[Any]], out: list[L1Row] | None) -> int:
        """Apply rows in order; append L1 changes to ``out`` (None: replay, write nothing).
        Return how many rows were applied (fewer than given when the threshold stops it)."""
        book = self.book
        tracker = self.tracker
        threshold = self.error_threshold
        applied = 0
        for row in rows:
            if threshold is not None and out is not None and book.anomalies.total() > threshold:
                return applied
            book.apply(event_from_row(row))
            applied += 1
            top = tracker.observe(book.top())
            if top is not None:
                crossed = top.bid_price > top.ask_price
                if crossed and not self.crossed:
                    book.anomalies["crossed_book"] += 1
                self.crossed = crossed
                if out is not None:
                    out.append((row[0], row[6], top.bid_price, top.bid_size, top.ask_price, top.ask_size))
        return applied

    def over_threshold(self) -> bool:
        return self.error_threshold is not None and self.book.anomalies.total() > self.error_threshold


def _project_stream(
    engine: Engine,
    stream_id: int,
    name: str,
    *,
    skip_gaps: bool,
    error_threshold: int | None,
    chunk: int,
    progress: Callable[[str, int], None] | None,
) -> ProjectSummary:
    started = time.perf_counter()
    summary = ProjectSummary(stream=name)
    with engine.connect() as conn:
        if not conn.execute(
            sa.text("SELECT pg_try_advisory_lock(:c, :o)"), {"c": _PROJECT_LOCK_CLASS, "o": stream_id}
        ).scalar():
            conn.commit()
            summary.status = "busy"
            summary.message = f"stream {name!r} is being projected by another process"
            return summary
        conn.commit()
        try:
            _run(conn, stream_id, name, summary, skip_gaps, error_threshold, chunk, progress)
        except sa.exc.OperationalError as e:
            raise DatabaseError(
                f"lost the database while projecting stream {name!r} after seq {summary.last_seq}: "
                f"{str(e.orig).strip().splitlines()[0] if e.orig else e}. Run the same command again: "
                "it goes on from the last committed position"
            ) from e
        finally:
            if not conn.closed and not conn.invalidated:
                conn.rollback()
                conn.execute(sa.text("SELECT pg_advisory_unlock(:c, :o)"), {"c": _PROJECT_LOCK_CLASS, "o": stream_id})
                conn.commit()
    summary.seconds = time.perf_counter() - started
    return summary


def _run(
    conn: Connection,
    stream_id: int,
    name: str,
    summary: ProjectSummary,
    skip_gaps: bool,
    error_threshold: int | None,
    chunk: int,
    progress: Callable[[str, int], None] | None,
) -> None:
    log = EventLog(conn)
    positions = Positions(conn)
    proj = _StreamProjector(name, error_threshold)
    pos = positions.get(stream_id)
    if pos is not None:
        # Rebuild the book up to the position; gaps before it were handled by earlier runs.
        for rows in _chunks(log.read(stream_id, after=pos.first_seq - 1, upto=pos.last_seq, chunk=chunk), chunk):
            proj.apply(rows, None)
        summary.last_seq = pos.last_seq
    conn.commit()
    for rows in _chunks(log.read(stream_id, after=None if pos is None else pos.last_seq, chunk=chunk), chunk):
        if pos is None:
            pos = Position(first_seq=rows[0][0], last_seq=rows[0][0] - 1)
        out: list[L1Row] = []
        applied_in_chunk = 0
        status, message = "ok", None
        rest = rows
        while rest:
            segment, gap = _contiguous(rest, pos.last_seq + 1)
            applied = proj.apply(segment, out)
            applied_in_chunk += applied
            if applied:
                pos.last_seq = segment[applied - 1][0]
                pos.events_applied += applied
            if proj.over_threshold():
                status = "error_threshold"
                message = (
                    f"stream {name!r} stopped after seq {pos.last_seq}: {proj.book.anomalies.total()} book "
                    f"anomalies exceed --error-threshold {error_threshold} ({_describe(proj.book.anomalies)})"
                )
                break
            if gap is None:
                break
            if not skip_gaps:
                status = "stopped_at_gap"
                message = (
                    f"stream {name!r} stopped after seq {pos.last_seq}: seqs {gap[0]}..{gap[1]} "
                    f"({gap[1] - gap[0] + 1}) are missing from the log; ingest them, or run with --skip-gaps"
                )
                break
            GapStore(conn).mark_skipped(stream_id, gap[0], gap[1])
            pos.gaps_skipped += 1
            summary.gaps_skipped.append(gap)
            pos.last_seq = gap[1]
            rest = rest[len(segment) :]
        pos.status, pos.message = status, message
        pos.l1_rows += len(out)
        pos.anomalies = dict(proj.book.anomalies)
        summary.events_applied += applied_in_chunk
        summary.l1_rows += len(out)
        L1Rows(conn).copy(stream_id, out)
        positions.put(stream_id, pos)
        conn.commit()
        summary.last_seq = pos.last_seq
        if progress is not None:
            progress(name, applied_in_chunk)
        if pos.status != "ok":
            break
    if pos is None:
        summary.status = "empty"
        return
    summary.status, summary.message = pos.status, pos.message
    summary.anomalies = dict(pos.anomalies)


def _contiguous(rows: list[Sequence[Any]], expected: int | None) -> tuple[list[Sequence[Any]], tuple[int, int] | None]:
    """The leading rows that follow on from ``expected`` without a hole, and the first hole."""
    if expected is None:
        return rows, None
    for i, row in enumerate(rows):
        if row[0] != expected + i:
            return rows[:i], (expected + i, row[0] - 1)
    return rows, None


def _chunks(rows: Any, size: int) -> Any:
    batch: list[Sequence[Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _describe(anomalies: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(anomalies.items()) if v) or "none"
