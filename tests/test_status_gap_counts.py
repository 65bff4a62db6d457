"""``ledger status`` derives a dense stream's event count from its seq range and gap rows:
an event stored inside a window a source snapshot made up for (a message the feed
delivered late, as the window was being resolved) is still counted. Against ``count(*)``."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ledger.services.read.status import stream_status


def _event(seq: int) -> dict[str, object]:
    return {"seq": seq, "raw": f'{{"type":"received","sequence":{seq}}}'}


def test_an_event_inside_a_window_resolved_by_a_snapshot_is_counted(engine: Engine) -> None:
    with engine.begin() as conn:
        sid = conn.execute(
            sa.text("INSERT INTO streams (name, source) VALUES ('coinbase:Z-USD', 'coinbase') RETURNING id")
        ).scalar_one()
        stored = [s for s in range(1, 21) if not 5 <= s <= 9] + [7]  # 5..9 lost, but 7 came late
        conn.execute(
            sa.text("INSERT INTO event_rows (stream_id, seq, kind, raw) VALUES (:sid, :seq, 'received', :raw)"),
            [dict(_event(s), sid=sid) for s in stored],
        )
        conn.execute(
            sa.text(
                "INSERT INTO gaps (stream_id, first_seq, last_seq, status, resolved_by_seq)"
                " VALUES (:sid, 5, 9, 'snapshot', 12), (:sid, 15, 15, 'open', NULL)"
            ),
            {"sid": sid},
        )
        conn.execute(sa.text("DELETE FROM event_rows WHERE stream_id = :sid AND seq = 15"), {"sid": sid})
        counted = conn.execute(sa.text("SELECT count(*) FROM events WHERE stream_id = :sid"), {"sid": sid}).scalar()
    with engine.connect() as conn:
        [status] = stream_status(conn, "coinbase:Z-USD")
    assert counted == 15
    assert status.events == counted
    assert status.missing_seqs == 1 and status.open_gaps == 1
