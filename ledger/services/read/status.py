"""Read-side reports: per-stream status, gaps and rejects."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.storage.log import Streams
from ledger.storage.schema import gaps, rejects

__all__ = ["StreamStatus", "gap_rows", "reject_rows", "stream_status"]

_STATUS = sa.text(
    """
    SELECT s.id, s.name, s.source,
           ev.first_seq, ev.last_seq,
           g.open_gaps, g.missing, g.unfilled,
           (SELECT count(*) FROM rejects r WHERE r.stream_id = s.id) AS rejects,
           (SELECT coalesce(sum(c.duplicates), 0) FROM ingest_checkpoints c WHERE c.stream_id = s.id)
               AS duplicates,
           (SELECT count(*) FROM ingest_checkpoints c WHERE c.stream_id = s.id) AS ingest_sources,
           greatest((SELECT max(c.updated_at) FROM ingest_checkpoints c WHERE c.stream_id = s.id),
                    (SELECT max(ss.received_at) FROM source_snapshots ss WHERE ss.stream_id = s.id))
               AS last_ingest,
           extract(epoch FROM
             (SELECT e.ts FROM events e WHERE e.stream_id = s.id AND e.seq = ev.last_seq)
             - (SELECT e.ts FROM events e WHERE e.stream_id = s.id AND e.seq <= p.last_seq
                 ORDER BY e.seq DESC LIMIT 1)) AS lag_seconds,
           bs.seq AS snapshot_seq, bs.created_at AS snapshot_at,
           p.last_seq AS projected_seq, p.status AS projector_status, p.message AS projector_message,
           p.l1_rows, p.anomalies, p.gaps_skipped,
           (SELECT coalesce(sum(gg.last_seq - gg.first_seq + 1), 0) FROM gaps gg
             WHERE gg.stream_id = s.id AND gg.status = 'open' AND gg.first_seq > p.last_seq)
               AS missing_after_position,
           (SELECT count(*) FROM gaps gg
             WHERE gg.stream_id = s.id AND gg.status <> 'open' AND gg.projector_skipped_at IS NOT NULL)
               AS skipped_then_filled
      FROM streams s
      LEFT JOIN LATERAL (SELECT min(e.seq) AS first_seq, max(e.seq) AS last_seq
                           FROM events e WHERE e.stream_id = s.id) ev ON true
      LEFT JOIN LATERAL (SELECT count(*) FILTER (WHERE gg.status = 'open') AS open_gaps,
                                coalesce(sum(gg.last_seq - gg.first_seq + 1)
                                         FILTER (WHERE gg.status = 'open'), 0) AS missing,
                                -- made up for by a source snapshot: resolved, yet not in the log
                                coalesce(sum(gg.last_seq - gg.first_seq + 1), 0) AS unfilled
                           FROM gaps gg WHERE gg.stream_id = s.id AND gg.status IN ('open', 'snapshot')) g ON true
      LEFT JOIN LATERAL (SELECT b.seq, b.created_at FROM book_snapshots b WHERE b.stream_id = s.id
                          ORDER BY b.seq DESC LIMIT 1) bs ON true
      LEFT JOIN projector_positions p ON p.stream_id = s.id
     WHERE (CAST(:name AS text) IS NULL OR s.name = :name)
     ORDER BY s.name
    """
)


# Rule: ``duplicates`` is the sum, over the stream's ingest checkpoints (one per source: a
# file's path, stdin, a capture), of the duplicates each one counts; ``duplicates_scope``
# says what that count covers, and the text report says it in words. CSV ingest counts per
# run of a source (a run it resumes included), so a CSV stream's figure is the duplicates
# of the latest run of each of its sources ("last_run_per_source"); a Coinbase capture
# carries its counts over from one run to the next ("all_runs").
_DUPLICATES_SCOPE = {"coinbase": "all_runs"}
_DEFAULT_DUPLICATES_SCOPE = "last_run_per_source"


@dataclass
class StreamStatus:
    """One stream at a glance. ``events`` is derived: the seq range less the gaps not filled
    (open, or made up for by a source snapshot). ``lag_seconds`` is the event time between
    the log's last event and the last one projected. ``duplicates``: see
    ``duplicates_scope`` (the rule above); ``ingest_sources`` is how many sources it sums."""

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def stream_status(conn: Connection, name: str | None = None) -> list[StreamStatus]:
    if name is not None:
        Streams(conn).get(name)
    out = []
    for r in conn.execute(_STATUS, {"name": name}):
        events = 0 if r.first_seq is None else int(r.last_seq - r.first_seq + 1 - r.unfilled)
        lag = None
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
                last_ingest=None if r.last_ingest is None else r.last_ingest.isoformat(),
                projected_seq=r.projected_seq,
                projector_status=r.projector_status,
                projector_message=r.projector_message,
                lag_events=lag,
                lag_seconds=None if r.lag_seconds is None else max(0.0, round(float(r.lag_seconds), 6)),
                latest_snapshot_seq=r.snapshot_seq,
                latest_snapshot_at=None if r.snapshot_at is None else r.snapshot_at.isoformat(),
                l1_rows=int(r.l1_rows or 0),
                anomalies=dict(r.anomalies or {}),
                skipped_then_filled=int(r.skipped_then_filled),
            )
        )
    return out


def gap_rows(conn: Connection, name: str, *, include_closed: bool = False) -> list[dict[str, Any]]:
    stream_id = Streams(conn).get(name)
    query = sa.select(
        gaps.c.first_seq,
        gaps.c.last_seq,
        (gaps.c.last_seq - gaps.c.first_seq + 1).label("missing"),
        gaps.c.status,
        gaps.c.detected_at,
        gaps.c.resolved_at,
        gaps.c.resolved_by_seq,
        gaps.c.projector_skipped_at,
    ).where(gaps.c.stream_id == stream_id)
    if not include_closed:
        query = query.where(gaps.c.status == "open")
    rows = conn.execute(query.order_by(gaps.c.first_seq, gaps.c.id))
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row._mapping.items()} for row in rows]


def reject_rows(conn: Connection, name: str, *, limit: int | None = None) -> list[dict[str, Any]]:
    stream_id = Streams(conn).get(name)
    query = (
        sa.select(rejects.c.source, rejects.c.line_no, rejects.c.reason, rejects.c.raw)
        .where(rejects.c.stream_id == stream_id)
        .order_by(rejects.c.source, rejects.c.line_no)
        .limit(limit)
    )
    return [dict(row._mapping) for row in conn.execute(query)]
