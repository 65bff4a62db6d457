"""What the projector writes: L1 rows and its position per stream, in one transaction.

positions = Positions(conn)
pos = positions.get(stream_id)          # None before the first run
L1Rows(conn).copy(rows)                 # COPY, same transaction as ...
positions.put(stream_id, new_position)  # ... the position that covers them

Events stored behind a projection (Databento's keys are times, so a file of earlier hours
ingested later lands below the head, where the projector cannot see a gap): the ingest that
stores them calls :meth:`Positions.outrun` in its transaction, and the projector's committer
compares :meth:`Positions.stored_events` over each chunk's seq range with what it applied,
both under :func:`~ledger.storage.locks.lock_position`; either marks the position
``needs_rebuild``, which stops the projector (:func:`~ledger.storage.locks.fence_projector`)
until ``ledger project --rebuild STREAM``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from ledger.errors import SnapshotError
from ledger.storage.blocks import COUNT_IN_RANGE, HIGHEST, LOWEST
from ledger.storage.copy import L1_COPY_COLUMNS, L1Row, l1_payload
from ledger.storage.database import driver_errors
from ledger.storage.locks import lock_position
from ledger.storage.schema import book_snapshots, l1, projector_positions

__all__ = ["L1_HEADER", "L1Row", "L1Rows", "Position", "Positions", "SnapshotInfo", "Snapshots"]

L1_HEADER = "time,bid_price,ask_price,bid_size,ask_size,seq_num"
_COUNT_IN_RANGE = sa.text(COUNT_IN_RANGE)
_COPY_L1 = f"COPY l1 ({', '.join(L1_COPY_COLUMNS)}) FROM STDIN"

# The export format of the L1 CSV (docs: time with six fractional digits and " UTC",
# numbers in their shortest exact decimal form, trim_scale), produced by PostgreSQL itself.
# Every row written now has a time; a row an older version wrote without one (at a venue's
# book) is exported with an empty time field, never COPY's NULL marker.
_EXPORT = (
    "COPY (SELECT coalesce(to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || ' UTC', ''),"
    " trim_scale(bid_price), trim_scale(ask_price), trim_scale(bid_size), trim_scale(ask_size), seq"
    " FROM l1 WHERE stream_id = %s{bounds} ORDER BY seq) TO STDOUT"
)


@dataclass
class Position:
    """Where the projector stands on a stream."""

    first_seq: int
    last_seq: int
    events_applied: int = 0
    l1_rows: int = 0
    anomalies: dict[str, int] = field(default_factory=dict)
    gaps_skipped: int = 0
    status: str = "ok"
    message: str | None = None
    #: The venue said the book may be wrong (until the next clear or snapshot).
    maybe_bad: bool = False


class Positions:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self, stream_id: int) -> Position | None:
        row = self._conn.execute(
            sa.select(projector_positions).where(projector_positions.c.stream_id == stream_id)
        ).one_or_none()
        if row is None:
            return None
        return Position(
            first_seq=int(row.first_seq),
            last_seq=int(row.last_seq),
            events_applied=int(row.events_applied),
            l1_rows=int(row.l1_rows),
            anomalies=dict(row.anomalies),
            gaps_skipped=int(row.gaps_skipped),
            status=row.status,
            message=row.message,
            maybe_bad=bool(row.maybe_bad),
        )

    def put(self, stream_id: int, pos: Position) -> None:
        values = {
            "first_seq": pos.first_seq,
            "last_seq": pos.last_seq,
            "events_applied": pos.events_applied,
            "l1_rows": pos.l1_rows,
            "anomalies": json.loads(json.dumps(pos.anomalies)),
            "gaps_skipped": pos.gaps_skipped,
            "status": pos.status,
            "message": pos.message,
            "maybe_bad": pos.maybe_bad,
            "updated_at": sa.func.now(),
        }
        stmt = pg_insert(projector_positions).values(stream_id=stream_id, **values)
        self._conn.execute(stmt.on_conflict_do_update(index_elements=["stream_id"], set_=values))

    def delete(self, stream_id: int) -> None:
        self._conn.execute(projector_positions.delete().where(projector_positions.c.stream_id == stream_id))

    def outrun(self, stream_id: int, lowest_seq: int, *, stream: str | None = None) -> bool:
        """Called in the transaction that stores events of ``stream_id`` (named ``stream``)
        the lowest of which is ``lowest_seq``, before it commits. Rule: when the projection
        has already applied a seq at or above ``lowest_seq``, its book and L1 rows lack these
        events: the position is marked ``needs_rebuild`` with the reason, and True returned.
        The position stays locked until the commit (:func:`~ledger.storage.locks.lock_position`),
        so a projector's committer either sees the mark or, committing first, has its new
        position seen here."""
        position = lock_position(self._conn, stream_id)
        if position is None or position.last_seq < lowest_seq:
            return False
        if position.status != "needs_rebuild":
            name = stream if stream is not None else f"#{stream_id}"
            self.mark_needs_rebuild(
                stream_id,
                f"stream {name!r}: events from seq {lowest_seq} were stored behind the projection (at seq "
                f"{position.last_seq}), so its book and L1 rows lack them; run `ledger project --rebuild {name}`",
            )
        return True

    def mark_needs_rebuild(self, stream_id: int, reason: str, *, first_seq: int | None = None) -> None:
        """Mark the stream's position ``needs_rebuild`` with ``reason``, keeping its figures.
        A stream without a position gets one that has applied nothing from ``first_seq``
        (required then), so the mark is there all the same."""
        marked = self._conn.execute(
            projector_positions.update()
            .where(projector_positions.c.stream_id == stream_id)
            .values(status="needs_rebuild", message=reason, updated_at=sa.func.now())
        ).rowcount
        if not marked:
            if first_seq is None:
                raise ValueError(f"stream {stream_id} has no position: first_seq is needed to mark one")
            empty = Position(first_seq=first_seq, last_seq=first_seq - 1, status="needs_rebuild", message=reason)
            self.put(stream_id, empty)

    def stored_events(self, stream_id: int, *, after: int | None = None, upto: int | None = None) -> int:
        """How many events of the stream the log holds with ``after < seq <= upto`` (None: no
        bound): what the committer compares with the events a chunk applied, and ``ledger
        status`` adds to a position's count."""
        bounds = {
            "s": stream_id,
            "after": LOWEST if after is None else after,
            "upto": HIGHEST if upto is None else upto,
        }
        return int(self._conn.execute(_COUNT_IN_RANGE, bounds).scalar_one())


class L1Rows:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def copy(self, stream_id: int, rows: Sequence[L1Row]) -> None:
        """Append L1 rows with COPY. ``ts`` is a datetime or PostgreSQL timestamptz text."""
        if not rows:
            return
        driver = self._conn.connection.driver_connection
        assert driver is not None
        with driver_errors(), driver.cursor() as cur, cur.copy(_COPY_L1) as copy:
            copy.write(l1_payload(stream_id, rows))

    def delete(self, stream_id: int) -> None:
        self._conn.execute(l1.delete().where(l1.c.stream_id == stream_id))

    def export_csv(
        self, stream_id: int, out: IO[bytes], *, start: int | datetime | None = None, end: int | datetime | None = None
    ) -> int:
        """Write the stream's L1 rows from ``start`` through ``end`` (seqs or times, inclusive;
        None: from the first, to the last) as CSV (BOM, header, LF) to ``out``; the row count."""
        driver = self._conn.connection.driver_connection
        assert driver is not None
        bounds, params = "", list[object]([stream_id])
        for bound, op in ((start, ">="), (end, "<=")):
            if bound is not None:
                bounds += f" AND {'ts' if isinstance(bound, datetime) else 'seq'} {op} %s"
                params.append(bound)
        out.write(("\ufeff" + L1_HEADER + "\n").encode("utf-8"))
        count = 0
        query = _EXPORT.format(bounds=bounds)
        with driver_errors(), driver.cursor() as cur, cur.copy(query, params) as copy:
            for data in copy:
                chunk = bytes(data).replace(b"\t", b",")
                count += chunk.count(b"\n")
                out.write(chunk)
        return count

    def count(self, stream_id: int) -> int:
        return int(
            self._conn.execute(
                sa.select(sa.func.count()).select_from(l1).where(l1.c.stream_id == stream_id)
            ).scalar_one()
        )


@dataclass(frozen=True)
class SnapshotInfo:
    """A stored book snapshot, without its payload."""

    seq: int
    format_version: int
    order_count: int
    size: int
    created_at: datetime


class Snapshots:
    """The projector's saved books. Rows are written in the transaction that writes the
    position at the same seq, so a snapshot is never half there; the checksum catches a
    payload damaged afterwards."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def save(self, stream_id: int, seq: int, payload: bytes, *, format_version: int, order_count: int) -> None:
        stmt = pg_insert(book_snapshots).values(
            stream_id=stream_id,
            seq=seq,
            format_version=format_version,
            order_count=order_count,
            payload=payload,
            checksum=hashlib.sha256(payload).hexdigest(),
        )
        self._conn.execute(stmt.on_conflict_do_nothing(index_elements=["stream_id", "seq"]))

    def infos(self, stream_id: int, *, at_or_before: int | None = None) -> list[SnapshotInfo]:
        """The stream's snapshots, newest first."""
        query = sa.select(
            book_snapshots.c.seq,
            book_snapshots.c.format_version,
            book_snapshots.c.order_count,
            sa.func.octet_length(book_snapshots.c.payload).label("size"),
            book_snapshots.c.created_at,
        ).where(book_snapshots.c.stream_id == stream_id)
        if at_or_before is not None:
            query = query.where(book_snapshots.c.seq <= at_or_before)
        rows = self._conn.execute(query.order_by(book_snapshots.c.seq.desc()))
        return [
            SnapshotInfo(int(r.seq), int(r.format_version), int(r.order_count), int(r.size), r.created_at) for r in rows
        ]

    def load(self, stream_id: int, seq: int) -> tuple[int, bytes]:
        """(format version, payload) of one snapshot; SnapshotError if its checksum fails."""
        row = self._conn.execute(
            sa.select(book_snapshots.c.format_version, book_snapshots.c.payload, book_snapshots.c.checksum).where(
                book_snapshots.c.stream_id == stream_id, book_snapshots.c.seq == seq
            )
        ).one()
        payload = bytes(row.payload)
        if hashlib.sha256(payload).hexdigest() != row.checksum:
            raise SnapshotError(f"snapshot at seq {seq}: the payload does not match its checksum (damaged)")
        return int(row.format_version), payload

    def delete_all(self, stream_id: int) -> int:
        return self._conn.execute(book_snapshots.delete().where(book_snapshots.c.stream_id == stream_id)).rowcount

    def prune(self, stream_id: int, *, keep: int, keep_every: int | None = None) -> int:
        """Keep the newest ``keep`` snapshots and, of the older ones, every ``keep_every``-th
        (counting from the newest of them); delete the rest. Return how many went."""
        seqs = [info.seq for info in self.infos(stream_id)]
        older = seqs[keep:]
        doomed = [seq for i, seq in enumerate(older) if keep_every is None or i % keep_every != keep_every - 1]
        if doomed:
            self._conn.execute(
                book_snapshots.delete().where(book_snapshots.c.stream_id == stream_id, book_snapshots.c.seq.in_(doomed))
            )
        return len(doomed)
