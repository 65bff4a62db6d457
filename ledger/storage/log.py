"""The event log and what ingest writes beside it: streams, rejects, gaps, checkpoints.

Small interfaces over one SQLAlchemy connection; the caller owns the transaction, so an
ingest batch (its events, rejects, gap changes and checkpoint) commits or vanishes whole.
Events go in with COPY (psycopg 3; the rows encoded by :mod:`ledger.storage.copy`);
everything else is parameterised Core SQL.
"""

from __future__ import annotations

import operator
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from ledger.errors import StreamError
from ledger.storage.blocks import BLOCK_EVENTS, LOWEST, SEQ_RANGE, nearest_sql
from ledger.storage.copy import EVENT_COPY_COLUMNS, VENUE_FIELDS, events_chunks
from ledger.storage.database import driver_errors
from ledger.storage.schema import events, gaps, ingest_checkpoints, rejects, source_snapshots, streams

__all__ = [
    "EVENT_COPY_COLUMNS",
    "RAW",
    "Checkpoint",
    "Checkpoints",
    "EventLog",
    "GapStore",
    "Reject",
    "Rejects",
    "SourceSnapshots",
    "StoredSourceSnapshot",
    "Streams",
]

#: An event's raw line or message as received, in a query on ``events``: ``ledger_raw(events)``
#: (migration 0004), which gives ``raw`` or, where the CSV ingest stored NULL because the line
#: was in canonical form, the line rebuilt from the columns
#: (:func:`ledger.venues.csv.format.csv_line` in Python).
RAW: sa.ColumnElement[str] = sa.func.ledger_raw(events.table_valued(), type_=sa.Text)

# Reading a stream's events by key range (read_chunks), over rows and blocks (migration 0005;
# ledger.storage.blocks). _READ_ROWS: the rows up to the next block, in key order, the next
# block's start found by the same statement (one snapshot: a fold running beside it cannot
# move rows out from under it). _READ_BLOCK: the next few blocks' events and the rows stored
# within their range (late events), in one statement, put in seq order by the reader. Its
# rows are bounded by the blocks read (none without a block): the rows before the first
# block are _READ_ROWS's, and a fold only ever makes blocks above the highest one, so rows
# within a block's range stay rows.
_READ_ROWS = (
    "SELECT seq, kind, order_id, side, price::text, size::text, {ts}{extra} FROM event_rows"
    " WHERE stream_id = %(s)s AND seq > %(lo)s AND seq <= LEAST(%(hi)s,"
    " (SELECT coalesce(min(first_seq) - 1, %(hi)s) FROM event_blocks WHERE stream_id = %(s)s AND last_seq > %(lo)s))"
    " ORDER BY seq LIMIT %(n)s"
)
_READ_BLOCK = (
    "WITH b AS MATERIALIZED (SELECT first_seq, last_seq, events FROM event_blocks"
    " WHERE stream_id = %(s)s AND last_seq > %(lo)s AND first_seq <= %(hi)s ORDER BY first_seq LIMIT %(k)s)"
    " SELECT e.seq, e.kind, e.order_id, e.side, e.price::text, e.size::text, {block_ts}{block_extra}"
    " FROM b CROSS JOIN LATERAL unnest(b.events) AS e WHERE e.seq > %(lo)s AND e.seq <= %(hi)s"
    " UNION ALL"
    " SELECT seq, kind, order_id, side, price::text, size::text, {ts}{extra} FROM event_rows"
    " WHERE stream_id = %(s)s AND seq > %(lo)s AND seq >= (SELECT min(first_seq) FROM b)"
    " AND seq <= (SELECT LEAST(%(hi)s, max(last_seq)) FROM b)"
)
_BY_SEQ = operator.itemgetter(0)
# The ledger_raw of a range's events (and of some seqs of it): ledger_events(stream, after,
# upto) reads only the blocks the range reaches, where a query on the view would unpack them all.
_RAW_IN_RANGE = sa.text(
    "SELECT e.seq, ledger_raw(e) AS raw FROM ledger_events(:s, :after, :upto) AS e"
    " WHERE CAST(:seqs AS bigint[]) IS NULL OR e.seq = ANY(CAST(:seqs AS bigint[]))"
)
_LAST_FLAGS_AT_OR_BEFORE = sa.text(nearest_sql("seq, flags", after=False))
_LAST_END = sa.text(
    "SELECT (SELECT seq FROM event_rows WHERE stream_id = :s AND seq <= :x AND flags & 128 <> 0"
    "        ORDER BY seq DESC LIMIT 1),"
    " (SELECT max(e.seq) FROM (SELECT events FROM event_blocks WHERE stream_id = :s AND first_seq <= :x"
    "        ORDER BY first_seq DESC LIMIT 1) b CROSS JOIN LATERAL unnest(b.events) AS e"
    "   WHERE e.seq <= :x AND e.flags & 128 <> 0),"
    " EXISTS (SELECT 1 FROM event_blocks WHERE stream_id = :s AND first_seq <= :x)"
)
_LAST_END_ANY_BLOCK = sa.text(
    "SELECT max(e.seq) FROM event_blocks b CROSS JOIN LATERAL unnest(b.events) AS e"
    " WHERE b.stream_id = :s AND b.first_seq <= :x AND e.seq <= :x AND e.flags & 128 <> 0"
)
_FIRST_AT_OR_AFTER = sa.text(nearest_sql("seq, ts", after=True))
_LAST_AT_OR_BEFORE = sa.text(nearest_sql("seq, ts", after=False))
_COPY_EVENTS = f"COPY event_rows ({', '.join(EVENT_COPY_COLUMNS)}) FROM STDIN"
_COPY_VENUE_EVENTS = f"COPY event_rows ({', '.join(EVENT_COPY_COLUMNS + VENUE_FIELDS)}) FROM STDIN"


class Streams:
    """Stream names to ids."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def ensure(self, name: str, source: str) -> int:
        """The id of stream ``name``, created if new. A stream keeps its first source."""
        query = sa.select(streams.c.id, streams.c.source).where(streams.c.name == name)
        row = self._conn.execute(query).one_or_none()
        if row is None:
            insert = pg_insert(streams).values(name=name, source=source)
            self._conn.execute(insert.on_conflict_do_nothing(index_elements=["name"]))
            row = self._conn.execute(query).one()
        if row.source != source:
            raise StreamError(f"stream {name!r} holds {row.source} events; choose another --stream name")
        return int(row.id)

    def get(self, name: str) -> int:
        """The id of an existing stream, or a StreamError listing the known ones."""
        found = self._conn.execute(sa.select(streams.c.id).where(streams.c.name == name)).scalar()
        if found is None:
            known = self.names()
            listing = ", ".join(known[:20]) if known else "none yet: run `ledger ingest` first"
            raise StreamError(f"no stream named {name!r} (known streams: {listing})")
        return int(found)

    def source(self, stream_id: int) -> str:
        """The source (venue) a stream's events come from."""
        found = self._conn.execute(sa.select(streams.c.source).where(streams.c.id == stream_id)).scalar()
        if found is None:
            raise StreamError(f"no stream with id {stream_id}")
        return str(found)

    def names(self) -> list[str]:
        return list(self._conn.execute(sa.select(streams.c.name).order_by(streams.c.name)).scalars())

    def all(self) -> list[tuple[int, str, str]]:
        rows = self._conn.execute(sa.select(streams.c.id, streams.c.name, streams.c.source).order_by(streams.c.name))
        return [(int(r.id), r.name, r.source) for r in rows]


class EventLog:
    """Appends to and reads from the event log of one connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def append(self, stream_id: int, rows: Sequence[bytes]) -> None:
        """Append one stream's events, given as their rows (:func:`ledger.storage.copy.event_row`)."""
        self.append_many([(stream_id, rows)])

    def append_many(self, parts: Iterable[tuple[int, Sequence[bytes]]], *, venue_fields: bool = False) -> None:
        """Append the events of several streams, (stream id, rows) each, in one COPY. With
        ``venue_fields`` each row also carries :data:`~ledger.storage.copy.VENUE_FIELDS`
        after ``raw`` (:func:`~ledger.storage.copy.plain_row`)."""
        chunks = [chunk for stream_id, rows in parts for chunk in events_chunks(stream_id, rows)]
        if chunks:
            self._copy(chunks, _COPY_VENUE_EVENTS if venue_fields else _COPY_EVENTS)

    def copy_text(self, payload: bytes) -> None:
        """Append rows already in COPY text format (columns: EVENT_COPY_COLUMNS)."""
        self._copy([payload])

    def _copy(self, chunks: list[bytes], statement: str = _COPY_EVENTS) -> None:
        driver = self._conn.connection.driver_connection
        assert driver is not None
        with driver_errors(), driver.cursor() as cur, cur.copy(statement) as copy:
            for chunk in chunks:
                copy.write(chunk)

    def any_between(self, stream_id: int, *, first: int, last: int) -> bool:
        """Whether the log holds an event with a seq in [first, last]."""
        found = self._conn.execute(
            sa.text("SELECT 1 FROM ledger_events(:s, :after, :upto) LIMIT 1"),
            {"s": stream_id, "after": max(first, LOWEST + 1) - 1, "upto": last},
        )
        return found.first() is not None

    def nearest(
        self, stream_id: int, *, at_or_after: int | None = None, at_or_before: int | None = None
    ) -> tuple[int, datetime | None]:
        """(seq, time) of the first event at or after one seq, or of the last one at or
        before it (give one of the two); NoResultFound when there is none."""
        if at_or_after is not None and at_or_before is None:
            statement, x = _FIRST_AT_OR_AFTER, at_or_after
        elif at_or_before is not None and at_or_after is None:
            statement, x = _LAST_AT_OR_BEFORE, at_or_before
        else:
            raise TypeError("give at_or_after or at_or_before")
        row = self._conn.execute(statement, {"s": stream_id, "x": x}).one()
        return int(row.seq), row.ts

    def seq_range(self, stream_id: int) -> tuple[int | None, int | None]:
        row = self._conn.execute(sa.text(SEQ_RANGE), {"s": stream_id}).one()
        return row[0], row[1]

    def venue_marks(self, stream_id: int) -> list[tuple[int, datetime | None, str, int]]:
        """(seq, ts, kind, flags) of the stream's records flagged ``F_MAYBE_BAD_BOOK`` (4) or
        ``F_SNAPSHOT`` (32), and of its clears, in seq order (a partial index holds them)."""
        query = (
            sa.select(events.c.seq, events.c.ts, events.c.kind, events.c.flags)
            .where(events.c.stream_id == stream_id, sa.text("((flags & 36) <> 0 OR kind = 'clear')"))
            .order_by(events.c.seq)
        )
        return [(int(r.seq), r.ts, r.kind, int(r.flags or 0)) for r in self._conn.execute(query)]

    def event_end(self, stream_id: int, *, at_or_before: int) -> int | None:
        """Where the book may be looked at, at or before a seq: the seq itself unless the
        last record at or before it is inside an exchange event (flagged, without
        ``F_LAST`` (128): Databento's records of one event); then the seq of the last record
        before it that ends one, or None when none has ended by then. A venue without flags
        (each record a whole event) gives the seq back."""
        params = {"s": stream_id, "x": at_or_before}
        last = self._conn.execute(_LAST_FLAGS_AT_OR_BEFORE, params).first()
        flags = None if last is None else last.flags
        if flags is None or flags & 128:
            return at_or_before
        # The last event end among the rows, and in the nearest block at or before the seq;
        # a block without one (an event longer than the block) sends the search through all.
        rows_end, block_end, in_block = self._conn.execute(_LAST_END, params).one()
        if in_block and block_end is None:
            block_end = self._conn.execute(_LAST_END_ANY_BLOCK, params).scalar()
        ends = [int(seq) for seq in (rows_end, block_end) if seq is not None]
        return max(ends) if ends else None

    def raw_between(self, stream_id: int, first: int, last: int) -> dict[int, str]:
        """seq -> raw of the stream's events with a seq in [first, last] (as received: a
        CSV line stored without its raw is rebuilt, see :data:`RAW`)."""
        rows = self._conn.execute(
            _RAW_IN_RANGE, {"s": stream_id, "after": max(first, LOWEST + 1) - 1, "upto": last, "seqs": None}
        )
        return {int(r.seq): r.raw for r in rows}

    def raw_of(self, stream_id: int, seqs: Sequence[int]) -> dict[int, str]:
        """seq -> raw of the stream's events at ``seqs`` (those stored), as received."""
        wanted = sorted(set(seqs))
        if not wanted:
            return {}
        rows = self._conn.execute(
            _RAW_IN_RANGE,
            {"s": stream_id, "after": max(wanted[0], LOWEST + 1) - 1, "upto": wanted[-1], "seqs": wanted},
        )
        return {int(r.seq): r.raw for r in rows}

    def read(
        self, stream_id: int, *, after: int | None = None, upto: int | None = None, chunk: int = 20_000
    ) -> Iterator[Sequence[Any]]:
        """Rows (seq, kind, order_id, side, price, size, ts) in seq order; see :meth:`read_chunks`."""
        for rows in self.read_chunks(stream_id, after=after, upto=upto, chunk=chunk):
            yield from rows

    def read_chunks(
        self,
        stream_id: int,
        *,
        after: int | None = None,
        upto: int | None = None,
        chunk: int = 20_000,
        with_time: bool = True,
        extra: Sequence[str] = (),
        unread: Collection[str] = (),
    ) -> Iterator[list[Any]]:
        """Lists of rows (seq, kind, order_id, side, price, size, ts) in seq order, read by
        key range so a long replay holds no long-running cursor: up to ``chunk`` rows a list
        (where the stream is compacted, a block's events and the late rows stored within its
        range are read together: :mod:`ledger.storage.blocks`). ``extra`` names venue fields
        (:data:`~ledger.storage.copy.VENUE_FIELDS`) to read after ``ts``, as they are; those
        also in ``unread`` come as None, in their place (a reader with no use for them pays
        nothing to fetch and build them).

        price, size and ts come as text (ISO time with offset): turning them into Python
        objects here would cost more than the rest of reading; the projector makes exact
        numbers of them with a cache, and hands ts back to PostgreSQL as it came. Without
        ``with_time``, ts is None (a replay that writes nothing has no use for it).

        It commits after each chunk, so give it a connection of its own (a long replay then
        holds no snapshot that would keep VACUUM or DDL waiting)."""
        driver = self._conn.connection.driver_connection
        assert driver is not None
        lower = -(2**63) if after is None else after
        upper = 2**63 - 1 if upto is None else upto
        unknown = [name for name in extra if name not in VENUE_FIELDS]
        if unknown:
            raise ValueError(f"not venue fields of the event log: {unknown}")
        columns = "".join(f", NULL::bigint AS {e}" if e in unread else f", {e}" for e in extra)
        block_columns = "".join(f", NULL::bigint AS {e}" if e in unread else f", e.{e}" for e in extra)
        ts = "ts::text" if with_time else "NULL::text"
        read_rows = _READ_ROWS.format(ts=ts, extra=columns)
        read_block = _READ_BLOCK.format(
            ts=ts, extra=columns, block_ts="e.ts::text" if with_time else "NULL::text", block_extra=block_columns
        )
        blocks = max(1, chunk // BLOCK_EVENTS)  # blocks a statement reads: about a chunk of events
        with driver_errors(), driver.cursor(binary=True) as cur:
            while lower < upper:
                params = {"s": stream_id, "lo": lower, "hi": upper, "n": chunk, "k": blocks}
                # One round trip per chunk (a reader that waits on the network waits again
                # for the GIL when it comes back).
                with driver.pipeline():
                    # Walk the primary key even before the table has statistics: a planner that
                    # guesses a few rows would otherwise sort the whole stream for every chunk.
                    cur.execute("SET LOCAL enable_sort = off")
                    cur.execute("SET LOCAL enable_bitmapscan = off")
                    cur.execute("SET LOCAL DateStyle = 'ISO'")
                    cur.execute(read_rows, params)
                    driver.commit()  # hold no snapshot or lock between chunks
                rows = cur.fetchall()
                if rows:
                    yield rows
                    lower = rows[-1][0]
                    if len(rows) == chunk:
                        continue
                # The rows before the next block are all read: the block, if there is one.
                params["lo"] = lower
                with driver.pipeline():
                    cur.execute("SET LOCAL DateStyle = 'ISO'")
                    cur.execute(read_block, params)
                    driver.commit()
                rows = cur.fetchall()
                if not rows:
                    return
                rows.sort(key=_BY_SEQ)
                lower = rows[-1][0]
                if len(rows) <= chunk:
                    yield rows
                else:
                    for start in range(0, len(rows), chunk):
                        yield rows[start : start + chunk]


@dataclass(frozen=True)
class Reject:
    line_no: int
    raw: str
    reason: str


class Rejects:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, stream_id: int, source: str, items: Iterable[Reject]) -> None:
        """Store rejects; one already stored (same stream, source, line and text) is kept once."""
        values = [
            {"stream_id": stream_id, "source": source, "line_no": r.line_no, "raw": r.raw, "reason": r.reason}
            for r in items
        ]
        if values:
            self._conn.execute(pg_insert(rejects).on_conflict_do_nothing(), values)

    def count(self, stream_id: int) -> int:
        return int(
            self._conn.execute(
                sa.select(sa.func.count()).select_from(rejects).where(rejects.c.stream_id == stream_id)
            ).scalar_one()
        )

    def rows(self, stream_id: int, *, limit: int | None = None) -> list[dict[str, Any]]:
        """The stream's rejects (source, line_no, reason, raw), by source and line."""
        query = (
            sa.select(rejects.c.source, rejects.c.line_no, rejects.c.reason, rejects.c.raw)
            .where(rejects.c.stream_id == stream_id)
            .order_by(rejects.c.source, rejects.c.line_no)
            .limit(limit)
        )
        return [dict(row._mapping) for row in self._conn.execute(query)]


class GapStore:
    """Open gaps as rows. :meth:`reconcile` makes the rows match a tracker's open gaps."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def open_gaps(self, stream_id: int) -> dict[tuple[int, int], int]:
        rows = self._conn.execute(
            sa.select(gaps.c.id, gaps.c.first_seq, gaps.c.last_seq)
            .where(gaps.c.stream_id == stream_id, gaps.c.status == "open")
            .order_by(gaps.c.first_seq)
        )
        return {(int(r.first_seq), int(r.last_seq)): int(r.id) for r in rows}

    def reconcile(
        self, stream_id: int, stored: dict[tuple[int, int], int], current: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], int]:
        """Write the difference between the stored open gaps and ``current``; return the new
        stored map. A stored gap that late events emptied is marked filled; one they split or
        shrank keeps its row (and detection time) for its first remaining piece. A few
        statements per call, however many gaps change."""
        now_open = set(current)
        result = {g: i for g, i in stored.items() if g in now_open}
        claimed: set[tuple[int, int]] = set(result)
        filled: list[int] = []
        new_rows: list[dict[str, Any]] = []
        changed = [(g, i) for g, i in stored.items() if g not in now_open]
        detected: dict[int, Any] = {}
        if changed:
            rows = self._conn.execute(
                sa.select(gaps.c.id, gaps.c.detected_at).where(gaps.c.id.in_([i for _, i in changed]))
            )
            detected = {int(r.id): r.detected_at for r in rows}
        for (first, last), gap_id in changed:
            pieces = sorted(g for g in now_open - claimed if first <= g[0] and g[1] <= last)
            if not pieces:
                filled.append(gap_id)
                continue
            head, *rest = pieces
            self._conn.execute(gaps.update().where(gaps.c.id == gap_id).values(first_seq=head[0], last_seq=head[1]))
            result[head] = gap_id
            claimed.add(head)
            for piece in rest:
                new_rows.append(self._row(stream_id, piece, detected[gap_id]))
                claimed.add(piece)
        if filled:
            self._conn.execute(
                gaps.update().where(gaps.c.id.in_(filled)).values(status="filled", resolved_at=sa.func.now())
            )
        now = datetime.now(UTC)
        new_rows += [self._row(stream_id, piece, now) for piece in sorted(now_open - claimed)]
        for start in range(0, len(new_rows), 5_000):
            inserted = self._conn.execute(
                gaps.insert()
                .values(new_rows[start : start + 5_000])
                .returning(gaps.c.id, gaps.c.first_seq, gaps.c.last_seq)
            )
            result.update({(int(r.first_seq), int(r.last_seq)): int(r.id) for r in inserted})
        return result

    @staticmethod
    def _row(stream_id: int, piece: tuple[int, int], detected_at: Any) -> dict[str, Any]:
        return {"stream_id": stream_id, "first_seq": piece[0], "last_seq": piece[1], "detected_at": detected_at}

    def resolve_by_snapshot(self, stream_id: int, seq: int) -> int:
        """Mark the open gaps a source snapshot at ``seq`` makes up for (those wholly at or
        below it) as resolved by it; return how many."""
        return self._conn.execute(
            gaps.update()
            .where(gaps.c.stream_id == stream_id, gaps.c.status == "open", gaps.c.last_seq <= seq)
            .values(status="snapshot", resolved_by_seq=seq, resolved_at=sa.func.now())
        ).rowcount

    def tail_resolved(self, stream_id: int, first_seq: int) -> int | None:
        """The seq of the venue book that resolved a gap beginning at ``first_seq`` (None:
        no such gap). A loss seen only by a heartbeat has no later event in the log: this
        row is then the only sign that the stream goes on at that book."""
        return self._conn.execute(
            sa.select(sa.func.max(gaps.c.resolved_by_seq)).where(
                gaps.c.stream_id == stream_id, gaps.c.status == "snapshot", gaps.c.first_seq == first_seq
            )
        ).scalar()

    def age(self, stream_id: int, *, first: int, last: int) -> float:
        """Seconds since the earliest of the open gap rows that overlap [first, last] was
        detected (inf: no open row does)."""
        age = self._conn.execute(
            sa.select(sa.func.extract("epoch", sa.func.now() - sa.func.min(gaps.c.detected_at))).where(
                gaps.c.stream_id == stream_id,
                gaps.c.status == "open",
                gaps.c.first_seq <= last,
                gaps.c.last_seq >= first,
            )
        ).scalar()
        return float("inf") if age is None else float(age)

    def highest_seq(self, stream_id: int) -> int | None:
        """The highest seq a gap row of the stream covers, whatever its status (None: no
        row). A gap may end after the last event: a lost tail that a venue book resolved."""
        found = self._conn.execute(sa.select(sa.func.max(gaps.c.last_seq)).where(gaps.c.stream_id == stream_id))
        value = found.scalar()
        return None if value is None else int(value)

    def rows(self, stream_id: int, *, include_closed: bool = False) -> list[dict[str, Any]]:
        """The stream's gap rows (open ones only unless ``include_closed``), by first seq,
        times as ISO text."""
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
        rows = self._conn.execute(query.order_by(gaps.c.first_seq, gaps.c.id))
        return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row._mapping.items()} for row in rows]

    def clear_skipped(self, stream_id: int) -> None:
        """Forget that the projector skipped this stream's gaps (before a rebuild)."""
        self._conn.execute(
            gaps.update()
            .where(gaps.c.stream_id == stream_id, gaps.c.projector_skipped_at.is_not(None))
            .values(projector_skipped_at=None)
        )

    def mark_skipped(self, stream_id: int, first: int, last: int) -> None:
        self._conn.execute(
            gaps.update()
            .where(
                # Whatever its status: a late event may fill the gap while the projector skips it.
                gaps.c.stream_id == stream_id,
                gaps.c.first_seq <= last,
                gaps.c.last_seq >= first,
            )
            .values(projector_skipped_at=sa.func.coalesce(gaps.c.projector_skipped_at, sa.func.now()))
        )


@dataclass(frozen=True)
class Checkpoint:
    """How far one run over a source got, and what it counted on the way."""

    lines_done: int
    bytes_done: int
    fingerprint: str
    complete: bool
    events_stored: int = 0
    duplicates: int = 0
    rejects: int = 0


class Checkpoints:
    """How far the ingest of one source into one stream got."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self, stream_id: int, source: str) -> Checkpoint | None:
        row = self._conn.execute(
            sa.select(
                ingest_checkpoints.c.lines_done,
                ingest_checkpoints.c.bytes_done,
                ingest_checkpoints.c.fingerprint,
                ingest_checkpoints.c.complete,
                ingest_checkpoints.c.events_stored,
                ingest_checkpoints.c.duplicates,
                ingest_checkpoints.c.rejects,
            ).where(ingest_checkpoints.c.stream_id == stream_id, ingest_checkpoints.c.source == source)
        ).one_or_none()
        if row is None:
            return None
        return Checkpoint(
            int(row.lines_done),
            int(row.bytes_done),
            row.fingerprint,
            bool(row.complete),
            int(row.events_stored),
            int(row.duplicates),
            int(row.rejects),
        )

    def of_source(self, source: str) -> dict[str, tuple[int, Checkpoint]]:
        """stream name -> (stream id, checkpoint), for every stream ``source`` was ingested into."""
        found = self._conn.execute(
            sa.select(ingest_checkpoints.c.stream_id, streams.c.name)
            .join(streams, streams.c.id == ingest_checkpoints.c.stream_id)
            .where(ingest_checkpoints.c.source == source)
        ).all()
        return {
            name: (int(stream_id), cp)
            for stream_id, name in found
            if (cp := self.get(int(stream_id), source)) is not None
        }

    def put(self, stream_id: int, source: str, checkpoint: Checkpoint) -> None:
        values = {
            "lines_done": checkpoint.lines_done,
            "bytes_done": checkpoint.bytes_done,
            "fingerprint": checkpoint.fingerprint,
            "complete": checkpoint.complete,
            "events_stored": checkpoint.events_stored,
            "duplicates": checkpoint.duplicates,
            "rejects": checkpoint.rejects,
            "updated_at": sa.func.now(),
        }
        stmt = pg_insert(ingest_checkpoints).values(stream_id=stream_id, source=source, **values)
        self._conn.execute(stmt.on_conflict_do_update(index_elements=["stream_id", "source"], set_=values))


class SourceSnapshots:
    """Books published by the venue (Coinbase REST level 3), stored as received."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def save(
        self, stream_id: int, seq: int, raw: str, *, order_count: int, received_at: datetime | None = None
    ) -> bool:
        """Store a snapshot; False when one at that seq is already stored. ``received_at``:
        when it was received (timezone-aware; None: now, as the database sees it)."""
        values: dict[str, object] = {"stream_id": stream_id, "seq": seq, "raw": raw, "order_count": order_count}
        if received_at is not None:
            if received_at.tzinfo is None:
                raise ValueError(f"the book at seq {seq} has a naive received_at: give a timezone-aware time")
            values["received_at"] = received_at.astimezone(UTC)
        stmt = pg_insert(source_snapshots).values(**values).on_conflict_do_nothing()
        # RETURNING, not rowcount: SQLAlchemy gives no rowcount for an INSERT (-1).
        return self._conn.execute(stmt.returning(source_snapshots.c.seq)).first() is not None

    def latest_seq(self, stream_id: int) -> int | None:
        """The seq of the stream's newest snapshot (None: none)."""
        found = self._conn.execute(
            sa.select(sa.func.max(source_snapshots.c.seq)).where(source_snapshots.c.stream_id == stream_id)
        ).scalar()
        return None if found is None else int(found)

    def first_from(self, stream_id: int, seq: int, *, upto: int | None = None) -> StoredSourceSnapshot | None:
        """The earliest snapshot at or after ``seq`` (and at or before ``upto``)."""
        query = sa.select(source_snapshots.c.seq, source_snapshots.c.raw, source_snapshots.c.received_at).where(
            source_snapshots.c.stream_id == stream_id, source_snapshots.c.seq >= seq
        )
        if upto is not None:
            query = query.where(source_snapshots.c.seq <= upto)
        row = self._conn.execute(query.order_by(source_snapshots.c.seq).limit(1)).one_or_none()
        return None if row is None else StoredSourceSnapshot(int(row.seq), row.raw, row.received_at)


class StoredSourceSnapshot(NamedTuple):
    """A venue's book as stored: its seq, the payload as received, and when it was received."""

    seq: int
    raw: str
    received_at: datetime
