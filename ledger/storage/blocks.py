"""Cold history in blocks (migration 0005): a stream's older events folded out of
``event_rows`` into ``event_blocks``, many events a row.

A block holds up to :data:`BLOCK_EVENTS` events of one stream in seq order as one
``ledger_event[]`` array, which PostgreSQL compresses whole (TOAST): a row's own overhead
(tuple header, line pointer, primary key entry: 60-70 bytes) is paid once per block, and
the compression sees what events repeat of each other. ``docs/storage.md`` has the figures.

Rules that the readers rely on (:meth:`ledger.storage.log.EventLog.read_chunks`):

- A stream's blocks are disjoint and each one's ``[first_seq, last_seq]`` is its first and
  last event's seq. Folding starts after the stream's highest block, so a new block never
  reaches into an older one.
- An event is in exactly one place: folding deletes the rows and inserts the blocks made of
  exactly the deleted rows in one statement (``DELETE ... RETURNING`` feeds the insert),
  so a reader's statement sees each event once, as a row or in a block, whatever runs
  beside it. A late event stored below the highest block stays a row.
- Nothing else changes: the ``events`` view shows the same rows before and after, and
  ``ledger_raw`` the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger.storage.schema import event_blocks, event_rows, projector_positions

__all__ = [
    "BLOCK_EVENTS",
    "COMPACT_LOCK_CLASS",
    "COUNT_IN_RANGE",
    "HIGHEST",
    "LOWEST",
    "SEQ_RANGE",
    "Folded",
    "compact_stream",
    "nearest_sql",
    "seq_range_sql",
]

#: Events per block. More compress better (the input's own compression keeps improving up to
#: tens of kilobytes) and cost a reader of a short range more to unpack; at 4096 a CSV block
#: is ~370 kB before compression, a Coinbase block ~1.3 MB.
BLOCK_EVENTS = 4096

#: Blocks folded per transaction: a batch's events are held by the server at once.
_BATCH_BLOCKS = 16

#: The transaction lock class of a stream's folding (object: the stream id): two folds of one
#: stream take turns.
COMPACT_LOCK_CLASS = 0x1EDA

_NAMES = "seq, kind, order_id, side, price, size, ts, raw, flags, ts_event, ts_recv, sequence, channel"

_FOLD = sa.text(
    f"""
    WITH moved AS (
        DELETE FROM event_rows WHERE stream_id = :stream AND seq > :after AND seq <= :upto
        RETURNING {_NAMES}
    ), numbered AS (
        SELECT moved.*, (row_number() OVER (ORDER BY seq) - 1) / :size AS block FROM moved
    )
    INSERT INTO event_blocks (stream_id, first_seq, last_seq, n_events, events)
    SELECT :stream, min(seq), max(seq), count(*), array_agg(ROW({_NAMES})::ledger_event ORDER BY seq)
    FROM numbered GROUP BY block
    RETURNING n_events
    """
)


#: The lowest and highest seq a range may name (bigint).
LOWEST = -(2**63)
HIGHEST = 2**63 - 1

#: How many events a stream holds with :after < seq <= :upto: the rows, the blocks wholly
#: inside (their n_events, without unpacking them) and the events of the at most two blocks
#: that straddle a bound.
COUNT_IN_RANGE = """
SELECT (SELECT count(*) FROM event_rows WHERE stream_id = :s AND seq > :after AND seq <= :upto)
     + (SELECT coalesce(sum(n_events), 0) FROM event_blocks
         WHERE stream_id = :s AND first_seq > :after AND last_seq <= :upto)
     + (SELECT count(*) FROM event_blocks b CROSS JOIN LATERAL unnest(b.events) AS e
         WHERE b.stream_id = :s AND b.last_seq > :after AND b.first_seq <= :upto
           AND NOT (b.first_seq > :after AND b.last_seq <= :upto) AND e.seq > :after AND e.seq <= :upto)
"""


def seq_range_sql(stream: str = ":s") -> str:
    """A statement for the lowest and highest seq (``first_seq``, ``last_seq``) of the
    stream ``stream`` (SQL: by default the parameter ``:s``; a column, such as ``s.id``, in a
    lateral join), from the ends of its rows and blocks."""
    return f"""
SELECT least((SELECT min(r.seq) FROM event_rows r WHERE r.stream_id = {stream}),
             (SELECT min(b.first_seq) FROM event_blocks b WHERE b.stream_id = {stream})) AS first_seq,
       greatest((SELECT max(r.seq) FROM event_rows r WHERE r.stream_id = {stream}),
                (SELECT max(b.last_seq) FROM event_blocks b WHERE b.stream_id = {stream})) AS last_seq
"""


#: The lowest and highest seq of a stream (parameter ``:s``): :func:`seq_range_sql`.
SEQ_RANGE = seq_range_sql()


def nearest_sql(columns: str, *, after: bool, stream: str = ":s", x: str = ":x") -> str:
    """A statement for ``columns`` (names of the event's fields) of the stream's first event
    at or after ``x`` (``after``) or its last at or before (``stream`` and ``x``: SQL, by
    default the parameters ``:s`` and ``:x``): the nearest row and the nearest event of the
    one block that can hold it, the nearer of the two."""
    op, order = (">=", "") if after else ("<=", " DESC")
    bound = f"last_seq >= {x}" if after else f"first_seq <= {x}"
    of_block = ", ".join(f"e.{c.strip()}" for c in columns.split(","))
    return (
        f"SELECT {columns} FROM ("
        f"(SELECT {columns} FROM event_rows WHERE stream_id = {stream} AND seq {op} {x} ORDER BY seq{order} LIMIT 1)"
        f" UNION ALL (SELECT {of_block} FROM (SELECT events FROM event_blocks"
        f" WHERE stream_id = {stream} AND {bound} ORDER BY first_seq{order} LIMIT 1) b"
        f" CROSS JOIN LATERAL unnest(b.events) AS e WHERE e.seq {op} {x} ORDER BY e.seq{order} LIMIT 1)"
        f") c ORDER BY seq{order} LIMIT 1"
    )


class Folded(NamedTuple):
    """What folding one stream did."""

    events: int  # events moved from rows into blocks
    blocks: int  # blocks made
    upto: int | None  # the highest seq folding was allowed to reach (None: the stream has no events)
    left: int  # the stream's events still stored as rows at or below ``upto`` (late ones)


def _highest_block(conn: Connection, stream_id: int) -> int | None:
    return conn.execute(
        sa.select(sa.func.max(event_blocks.c.last_seq)).where(event_blocks.c.stream_id == stream_id)
    ).scalar()


def default_upto(conn: Connection, stream_id: int) -> int | None:
    """How far folding goes by default: the projector's position when the stream has one
    (the events after it are what a follower reads next), else the highest stored seq."""
    position = conn.execute(
        sa.select(projector_positions.c.last_seq).where(projector_positions.c.stream_id == stream_id)
    ).scalar()
    if position is not None:
        return int(position)
    highest = conn.execute(sa.select(sa.func.max(event_rows.c.seq)).where(event_rows.c.stream_id == stream_id)).scalar()
    block = _highest_block(conn, stream_id)
    known = [int(x) for x in (highest, block) if x is not None]
    return max(known) if known else None


def compact_stream(
    engine: Engine,
    stream_id: int,
    *,
    upto: int | None = None,
    block_events: int = BLOCK_EVENTS,
    start: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Folded:
    """Fold the stream's events stored as rows, above its highest block and at or below
    ``upto`` (default: :func:`default_upto`), into blocks of ``block_events``; one
    transaction per batch of blocks, so an interrupted run keeps what it committed and the
    next run goes on from there. ``start`` gets how many events there are to fold (before
    the first batch), ``progress`` the events of each committed batch."""
    if block_events < 1:
        raise ValueError(f"block_events must be at least 1, not {block_events}")
    with engine.connect() as conn:
        bound = default_upto(conn, stream_id) if upto is None else upto
        if bound is not None and start is not None:
            highest = _highest_block(conn, stream_id)
            start(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(event_rows)
                    .where(
                        event_rows.c.stream_id == stream_id,
                        event_rows.c.seq > (LOWEST if highest is None else int(highest)),
                        event_rows.c.seq <= bound,
                    )
                ).scalar_one()
            )
    if bound is None:
        return Folded(0, 0, None, 0)
    moved = made = 0
    while True:
        with engine.begin() as conn:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(COMPACT_LOCK_CLASS, stream_id)))
            highest = _highest_block(conn, stream_id)
            after = LOWEST if highest is None else int(highest)
            if after >= bound:
                break
            # The seq that ends this batch: the last of its blocks' events, or the bound.
            end = conn.execute(
                sa.select(event_rows.c.seq)
                .where(event_rows.c.stream_id == stream_id, event_rows.c.seq > after, event_rows.c.seq <= bound)
                .order_by(event_rows.c.seq)
                .offset(_BATCH_BLOCKS * block_events - 1)
                .limit(1)
            ).scalar()
            batch_upto = bound if end is None else int(end)
            sizes = conn.execute(
                _FOLD, {"stream": stream_id, "after": after, "upto": batch_upto, "size": block_events}
            ).scalars()
            counts = [int(n) for n in sizes]
        if not counts:
            break
        moved += sum(counts)
        made += len(counts)
        if progress is not None:
            progress(sum(counts))
        if batch_upto >= bound:
            break
    with engine.connect() as conn:
        left = conn.execute(
            sa.select(sa.func.count())
            .select_from(event_rows)
            .where(event_rows.c.stream_id == stream_id, event_rows.c.seq <= bound)
        ).scalar_one()
    return Folded(moved, made, bound, int(left))
