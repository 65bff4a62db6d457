"""What ``ledger status`` shows of each stream, gathered in one statement over every table.

The figures come raw (counts, seq ranges, the projector's position, the newest snapshot,
times); :mod:`ledger.services.read.status` derives the report from them.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.storage.blocks import nearest_sql, seq_range_sql

__all__ = ["StatusRows"]

# The stream's events are read by range (ledger_events) or from the ends of its rows and
# blocks: a query on the events view would unpack every block of a compacted stream.
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
             (SELECT e.ts FROM ledger_events(s.id, ev.last_seq - 1, ev.last_seq) e)
             - (SELECT n.ts FROM (LAST_AT_POSITION) n)) AS lag_seconds,
           bs.seq AS snapshot_seq, bs.created_at AS snapshot_at,
           p.last_seq AS projected_seq, p.status AS projector_status, p.message AS projector_message,
           p.l1_rows, p.anomalies, p.gaps_skipped,
           (SELECT coalesce(sum(gg.last_seq - gg.first_seq + 1), 0) FROM gaps gg
             WHERE gg.stream_id = s.id AND gg.status = 'open' AND gg.first_seq > p.last_seq)
               AS missing_after_position,
           (SELECT count(*) FROM gaps gg
             WHERE gg.stream_id = s.id AND gg.status <> 'open' AND gg.projector_skipped_at IS NOT NULL)
               AS skipped_then_filled,
           coalesce(p.maybe_bad, false) AS maybe_bad,
           fb.folded_events, fb.blocks
      FROM streams s
      LEFT JOIN LATERAL (SEQ_RANGE_OF_S) ev ON true
      LEFT JOIN LATERAL (SELECT count(*) FILTER (WHERE gg.status = 'open') AS open_gaps,
                                coalesce(sum(gg.last_seq - gg.first_seq + 1)
                                         FILTER (WHERE gg.status = 'open'), 0) AS missing,
                                -- made up for by a source snapshot: resolved, yet not in the log
                                -- (less any event stored inside such a window after all: a
                                -- message the feed delivered late, as it was being resolved)
                                coalesce(sum(gg.last_seq - gg.first_seq + 1
                                             - (SELECT count(*)
                                                  FROM ledger_events(s.id, gg.first_seq - 1, gg.last_seq))), 0)
                                    AS unfilled
                           FROM gaps gg WHERE gg.stream_id = s.id AND gg.status IN ('open', 'snapshot')) g ON true
      LEFT JOIN LATERAL (SELECT b.seq, b.created_at FROM book_snapshots b WHERE b.stream_id = s.id
                          ORDER BY b.seq DESC LIMIT 1) bs ON true
      LEFT JOIN projector_positions p ON p.stream_id = s.id
      LEFT JOIN LATERAL (SELECT coalesce(sum(b.n_events), 0) AS folded_events, count(*) AS blocks
                           FROM event_blocks b WHERE b.stream_id = s.id) fb ON true
     WHERE (CAST(:name AS text) IS NULL OR s.name = :name)
     ORDER BY s.name
    """.replace("LAST_AT_POSITION", nearest_sql("ts, seq", after=False, stream="s.id", x="p.last_seq")).replace(
        "SEQ_RANGE_OF_S", seq_range_sql(stream="s.id")
    )
)


class StatusRows:
    """Per-stream status figures, one row per stream, by name."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def rows(self, *, name: str | None = None) -> list[Any]:
        """Rows with the columns of the statement above (attribute access: ``row.first_seq``),
        of every stream or only the one named ``name``. A stream whose seqs skip numbers has
        its events counted by the caller (``unfilled`` and the seq range do not say)."""
        return list(self._conn.execute(_STATUS, {"name": name}))
