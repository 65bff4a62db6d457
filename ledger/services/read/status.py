"""Read-side reports: per-stream status, gaps and rejects."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from ledger.domain.marks import step
from ledger.services.read.times import iso_time
from ledger.storage.log import EventLog, GapStore, Rejects, Streams
from ledger.storage.projection import Positions
from ledger.storage.reports import StatusRows
from ledger.venues import names as venue_names
from ledger.venues import venue

__all__ = ["StreamStatus", "gap_rows", "reject_rows", "stream_status"]


# Rule: ``duplicates`` is the sum, over the stream's ingest checkpoints (one per source: a
# file's path, stdin, a capture), of the duplicates each one counts; ``duplicates_scope``
# says what that count covers, and the text report says it in words. CSV ingest counts per
# run of a source (a run it resumes included), so a CSV stream's figure is the duplicates
# of the latest run of each of its sources ("last_run_per_source"); a Coinbase capture
# carries its counts over from one run to the next ("all_runs").
_DUPLICATES_SCOPE = {"coinbase": "all_runs"}
_DEFAULT_DUPLICATES_SCOPE = "last_run_per_source"


# Rule: a stream whose seqs skip numbers (Databento's time keys) has its events counted, not
# derived from the seq range. When its position is ok and began at or before the stream's
# first seq, the projector has applied every stored event up to its position (events stored
# behind it would have marked it needs_rebuild), so the count is the position's
# ``events_applied`` plus the events after it: no count over the whole stream. Otherwise
# (no position, a stream stopped or stale, events older than its start) every event is counted.
def _sparse_counts(conn: Connection, stream_id: int, first_seq: int | None) -> tuple[int, int | None]:
    """(events, lag in events) of a stream whose seqs skip numbers (the rule above)."""
    positions = Positions(conn)
    pos = positions.get(stream_id)
    if pos is None:
        return positions.stored_events(stream_id), None
    lag = positions.stored_events(stream_id, after=pos.last_seq)
    if pos.status == "ok" and first_seq is not None and pos.first_seq <= first_seq:
        return pos.events_applied + lag, lag
    return positions.stored_events(stream_id), lag


@dataclass
class StreamStatus:
    """One stream at a glance. ``events`` is derived: the seq range less the gaps not filled
    (open, or made up for by a source snapshot). ``lag_seconds`` is the event time between
    the log's last event and the last one projected. ``duplicates``: see
    ``duplicates_scope`` (the rule above); ``ingest_sources`` is how many sources it sums.
    Times are text in the one format of :mod:`ledger.services.read.times`."""

    stream: str
    source: str
    events: int
    first_seq: int | None
    last_seq: int | None
    open_gaps: int
    missing_seqs: int
    duplicates: int
    duplicates_scope: str  # last_run_per_source | all_runs
    ingest_sources: int
    rejects: int
    last_ingest: str | None
    projected_seq: int | None
    projector_status: str | None
    projector_message: str | None
    lag_events: int | None
    lag_seconds: float | None
    latest_snapshot_seq: int | None
    latest_snapshot_at: str | None
    l1_rows: int
    anomalies: dict[str, int]
    skipped_then_filled: int  # gaps the projector went across that were filled later: --rebuild
    #: The venue said the book may be wrong where the projector stands (Databento's
    #: F_MAYBE_BAD_BOOK, until the next clear or snapshot).
    book_maybe_bad: bool = False
    #: Of ``events``, those folded into compressed blocks (``ledger db compact``), and the blocks.
    folded_events: int = 0
    blocks: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def stream_status(conn: Connection, name: str | None = None) -> list[StreamStatus]:
    if name is not None:
        Streams(conn).get(name)
    out = []
    sparse = {name for name in venue_names() if not venue(name).dense_seqs}
    for r in StatusRows(conn).rows(name=name):
        lag = None
        if r.source in sparse:  # seqs that skip numbers: counted
            events, lag = _sparse_counts(conn, int(r.id), r.first_seq)
        else:
            events = 0 if r.first_seq is None else int(r.last_seq - r.first_seq + 1 - r.unfilled)
            if r.projected_seq is not None and r.last_seq is not None:
                lag = max(0, int(r.last_seq - r.projected_seq - r.missing_after_position))
        out.append(
            StreamStatus(
                stream=r.name,
                source=r.source,
                events=events,
                first_seq=r.first_seq,
                last_seq=r.last_seq,
                open_gaps=int(r.open_gaps),
                missing_seqs=int(r.missing),
                duplicates=int(r.duplicates),
                duplicates_scope=_DUPLICATES_SCOPE.get(r.source, _DEFAULT_DUPLICATES_SCOPE),
                ingest_sources=int(r.ingest_sources),
                rejects=int(r.rejects),
                last_ingest=None if r.last_ingest is None else iso_time(r.last_ingest),
                projected_seq=r.projected_seq,
                projector_status=r.projector_status,
                projector_message=r.projector_message,
                lag_events=lag,
                lag_seconds=None if r.lag_seconds is None else max(0.0, round(float(r.lag_seconds), 6)),
                latest_snapshot_seq=r.snapshot_seq,
                latest_snapshot_at=None if r.snapshot_at is None else iso_time(r.snapshot_at),
                l1_rows=int(r.l1_rows or 0),
                anomalies=dict(r.anomalies or {}),
                skipped_then_filled=int(r.skipped_then_filled),
                book_maybe_bad=bool(r.maybe_bad),
                folded_events=int(r.folded_events),
                blocks=int(r.blocks),
            )
        )
    return out


_GAP_TIMES = ("detected_at", "resolved_at", "projector_skipped_at")


def gap_rows(conn: Connection, name: str, *, include_closed: bool = False) -> list[dict[str, Any]]:
    """The stream's gap rows (see GapStore.rows), times in the one format, then the periods
    in which the venue said its book may be wrong (:func:`maybe_bad_periods`)."""
    stream_id = Streams(conn).get(name)
    rows = GapStore(conn).rows(stream_id, include_closed=include_closed)
    for row in rows:
        for key in _GAP_TIMES:
            if isinstance(row.get(key), str):  # the store's ISO text
                row[key] = iso_time(datetime.fromisoformat(row[key]))
    log = EventLog(conn)
    marks = log.venue_marks(stream_id)
    if marks:

        def between(first: int, last: int) -> bool:
            return log.any_between(stream_id, first=first, last=last)

        periods = maybe_bad_periods(marks, log.seq_range(stream_id)[1], between)
        rows += [p for p in periods if include_closed or p["status"] == "book_maybe_bad"]
    return rows


def maybe_bad_periods(
    marks: list[tuple[int, Any, str, int]], last_seq: int | None, between: Callable[[int, int], bool]
) -> list[dict[str, Any]]:
    """Where the venue said the book may be wrong, as gap rows, by the projector's own rule
    (:func:`ledger.domain.marks.step`) applied to the records that carry a mark: from the
    record that raised the warning to the record before the one that lifted it (a clear,
    or the first record of a snapshot run: ``book_maybe_bad_ended``, ``resolved_by_seq``
    that record), or to the end of the log while it holds (``book_maybe_bad``). ``missing``
    is unknown: the venue does not say what was lost. ``marks``: (seq, ts, kind, flags) in
    seq order (:meth:`~ledger.storage.log.EventLog.venue_marks`); ``between(a, b)``: whether
    the log holds a record with a seq in [a, b] (an unmarked record ends a snapshot run).

    >>> marks = [(5, None, "add", 4), (9, None, "clear", 0), (12, None, "clear", 4), (15, None, "add", 4)]
    >>> [(p["first_seq"], p["status"]) for p in maybe_bad_periods(marks, 20, lambda a, b: True)]
    [(5, 'book_maybe_bad_ended'), (15, 'book_maybe_bad')]
    """
    out: list[dict[str, Any]] = []
    in_snapshot = bad = False
    start: tuple[int, Any] | None = None
    previous: int | None = None

    def period(end_seq: int | None, end_ts: Any, last: int | None) -> dict[str, Any]:
        assert start is not None
        return {
            "first_seq": start[0],
            "last_seq": last,
            "missing": None,
            "status": "book_maybe_bad" if end_seq is None else "book_maybe_bad_ended",
            "detected_at": None if start[1] is None else iso_time(start[1]),
            "resolved_at": None if end_ts is None else iso_time(end_ts),
            "resolved_by_seq": end_seq,
            "projector_skipped_at": None,
        }

    for seq, ts, kind, flags in marks:
        if in_snapshot and previous is not None and seq > previous + 1 and between(previous + 1, seq - 1):
            in_snapshot = False  # records without a mark came between: the run ended there
        in_snapshot, now_bad, _ = step(in_snapshot, bad, flags, clear=kind == "clear")
        if now_bad and not bad:
            start = (seq, ts)
        elif bad and not now_bad:
            out.append(period(seq, ts, seq - 1))
            start = None
        bad, previous = now_bad, seq
    if start is not None:
        out.append(period(None, None, last_seq))
    return out


def reject_rows(conn: Connection, name: str, *, limit: int | None = None) -> list[dict[str, Any]]:
    return Rejects(conn).rows(Streams(conn).get(name), limit=limit)
