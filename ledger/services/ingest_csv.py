"""Ingest an L3 CSV file (or stdin) into the event log.

The file is streamed in batches; each batch's events (by COPY), rejects, gap changes and
checkpoint commit in one transaction, so a run killed at any moment and started again
stores the rest and nothing twice. Which rows are new is decided by the stream's
:class:`~ledger.domain.sequencing.GapTracker`, loaded from the database at the start and
kept in step with it; a session-level advisory lock keeps a second writer off the stream.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import BinaryIO

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger.domain.sequencing import Arrival, GapTracker
from ledger.errors import DatabaseError, InputError, StreamError
from ledger.sources.csv_l3 import RowError, check_header, parse_line
from ledger.storage.log import (
    Checkpoint,
    Checkpoints,
    EventLog,
    GapStore,
    Reject,
    Rejects,
    Streams,
    copy_escape,
)

__all__ = ["IngestSummary", "ingest_csv", "stream_lock_key"]

_INGEST_LOCK_CLASS = 0x1ED6
_FINGERPRINT_SPAN = 4096
_NULL = "\\N"  # NULL in COPY text format


def stream_lock_key(stream_id: int) -> tuple[int, int]:
    """The advisory lock (class, object) a writer of a stream holds."""
    return (_INGEST_LOCK_CLASS, stream_id)


@dataclass
class IngestSummary:
    """What one ingest run did."""

    stream: str
    source: str
    lines: int = 0
    events_stored: int = 0
    duplicates: int = 0
    conflicting_duplicates: int = 0  # duplicates whose line differs from the stored one (also rejects)
    rejects: int = 0
    open_gaps: int = 0
    missing_seqs: int = 0
    seconds: float = 0.0
    resumed_from_line: int | None = None
    reject_samples: list[dict[str, object]] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["events_per_second"] = round(self.events_per_second, 1)
        out["seconds"] = round(self.seconds, 3)
        return out


@dataclass
class _Batch:
    copy_lines: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    duplicates: list[tuple[int, int, str]] = field(default_factory=list)  # seq, line_no, text
    lines: int = 0

    def __bool__(self) -> bool:
        return self.lines > 0


def ingest_csv(
    engine: Engine,
    fp: BinaryIO,
    *,
    stream: str,
    source: str,
    batch_size: int = 10_000,
    flush_interval: float | None = None,
    resumable: bool = True,
    progress: Callable[[int], None] | None = None,
) -> IngestSummary:
    """Append the L3 CSV read from ``fp`` to ``stream``; ``source`` names it in rejects and
    checkpoints (a file's absolute path, or ``stdin``). ``progress`` gets bytes read."""
    if batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    started = time.perf_counter()
    summary = IngestSummary(stream=stream, source=source)
    header = fp.readline()
    if not header.strip():
        raise InputError(f"{source}: the input is empty (expected a header line first)")
    try:
        check_header(header.decode("utf-8", errors="replace"))
    except RowError as e:
        raise InputError(f"{source}, line 1: {e}") from None
    with engine.connect() as conn:
        run = _Run(conn, stream, source, summary, header, batch_size)
        offset = len(header)
        line_no = 1
        if resumable:
            resumed = run.resume_point(fp)
            if resumed is not None:
                line_no, offset = resumed
                summary.resumed_from_line = line_no + 1
                run.carry_counts()
        batch = _Batch()
        deadline = None if flush_interval is None else time.monotonic() + flush_interval
        for lines in _line_chunks(fp, flush_interval):
            for raw in lines:
                line_no += 1
                offset += len(raw)
                _take_line(run.tracker, batch, raw, line_no, run.stream_id)
                if batch.lines >= batch_size:
                    run.commit(batch, line_no, offset, fp, complete=False)
                    batch = _Batch()
                    if progress is not None:
                        progress(offset)
            if deadline is not None and time.monotonic() >= deadline:
                if batch:
                    run.commit(batch, line_no, offset, fp, complete=False)
                    batch = _Batch()
                deadline = time.monotonic() + (flush_interval or 0)
        run.commit(batch, line_no, offset, fp, complete=True)
        if progress is not None:
            progress(offset)
        summary.open_gaps = len(run.tracker.gaps)
        summary.missing_seqs = run.tracker.missing()
        run.release()
    summary.seconds = time.perf_counter() - started
    return summary


def _take_line(tracker: GapTracker, batch: _Batch, raw: bytes, line_no: int, stream_id: int) -> None:
    """Parse one line into the batch: an event to copy, a duplicate to check, or a reject."""
    batch.lines += 1
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        batch.rejects.append(
            Reject(line_no, raw.decode("utf-8", errors="replace").rstrip("\r\n"), f"not UTF-8 text: {e.reason}")
        )
        return
    text = text.rstrip("\r\n")
    if not text:
        return
    if "\x00" in text:
        batch.rejects.append(Reject(line_no, text.replace("\x00", "\\x00"), "contains a NUL byte"))
        return
    try:
        row = parse_line(text)
    except RowError as e:
        batch.rejects.append(Reject(line_no, text, str(e)))
        return
    if tracker.observe(row.seq) is Arrival.DUPLICATE:
        batch.duplicates.append((row.seq, line_no, text))
        return
    batch.copy_lines.append(
        f"{stream_id}\t{row.seq}\t{row.kind}\t{row.order_id}\t{row.side}\t"
        f"{row.price or _NULL}\t{row.size or _NULL}\t{row.time}\t{copy_escape(text)}\n"
    )


class _Run:
    """The state of one ingest run on one connection."""

    def __init__(
        self,
        conn: Connection,
        stream: str,
        source: str,
        summary: IngestSummary,
        header: bytes,
        batch_size: int,
    ) -> None:
        self.conn = conn
        self.source = source
        self.summary = summary
        self.header = header
        with conn.begin():
            self.stream_id = Streams(conn).ensure(stream, "csv")
        locked = conn.execute(
            sa.text("SELECT pg_try_advisory_lock(:c, :o)"),
            dict(zip(("c", "o"), stream_lock_key(self.stream_id), strict=True)),
        ).scalar()
        conn.commit()
        if not locked:
            raise StreamError(f"stream {stream!r} is being written by another ingest; wait for it to finish")
        low, high = EventLog(conn).seq_range(self.stream_id)
        self.stored_gaps = GapStore(conn).open_gaps(self.stream_id)
        self.tracker = GapTracker(low, high, self.stored_gaps)
        self.checkpoint = Checkpoints(conn).get(self.stream_id, source)
        self.base = (0, 0, 0)
        conn.commit()

    def resume_point(self, fp: BinaryIO) -> tuple[int, int] | None:
        """(line, byte offset) to go on from after a run that did not finish, or None."""
        cp = self.checkpoint
        if cp is None or cp.complete or cp.lines_done <= 1:
            return None
        try:
            fp.seek(cp.bytes_done)
            if self._fingerprint(fp, cp.bytes_done) != cp.fingerprint:
                fp.seek(len(self.header))
                return None
        except OSError:
            return None
        fp.seek(cp.bytes_done)
        return cp.lines_done, cp.bytes_done

    def carry_counts(self) -> None:
        """A resumed run goes on counting from where the killed run's last batch left off."""
        cp = self.checkpoint
        assert cp is not None
        self.base = (cp.events_stored, cp.duplicates, cp.rejects)

    def _fingerprint(self, fp: BinaryIO, offset: int) -> str:
        digest = hashlib.sha256(self.header)
        if fp.seekable():
            here = fp.tell()
            start = max(0, offset - _FINGERPRINT_SPAN)
            fp.seek(start)
            digest.update(fp.read(offset - start))
            fp.seek(here)
        return digest.hexdigest()

    def commit(self, batch: _Batch, line_no: int, offset: int, fp: BinaryIO, *, complete: bool) -> None:
        conn = self.conn
        fingerprint = self._fingerprint(fp, offset)
        summary = self.summary
        try:
            with conn.begin():
                if batch.copy_lines:
                    EventLog(conn).copy_text("".join(batch.copy_lines).encode("utf-8"))
                conflicting = self._conflicting_duplicates(batch)
                all_rejects = batch.rejects + conflicting
                Rejects(conn).add(self.stream_id, self.source, all_rejects)
                self.stored_gaps = GapStore(conn).reconcile(self.stream_id, self.stored_gaps, self.tracker.gaps)
                stored, dups, rejected = self.base
                checkpoint = Checkpoint(
                    line_no,
                    offset,
                    fingerprint,
                    complete,
                    events_stored=stored + summary.events_stored + len(batch.copy_lines),
                    duplicates=dups + summary.duplicates + len(batch.duplicates),
                    rejects=rejected + summary.rejects + len(all_rejects),
                )
                Checkpoints(conn).put(self.stream_id, self.source, checkpoint)
        except sa.exc.IntegrityError as e:
            raise DatabaseError(
                f"stream {self.summary.stream!r}: the log already holds events that its gaps table "
                f"says are missing (near line {line_no} of {self.source}); the gaps table was "
                "changed by hand or by another writer"
            ) from e
        except sa.exc.OperationalError as e:
            raise DatabaseError(
                f"lost the database while storing lines up to {line_no} of {self.source}: "
                f"{str(e.orig).strip().splitlines()[0] if e.orig else e}. Run the same command "
                "again: it resumes after the last stored batch"
            ) from e
        summary.lines += batch.lines
        summary.events_stored += len(batch.copy_lines)
        summary.duplicates += len(batch.duplicates)
        summary.conflicting_duplicates += len(conflicting)
        summary.rejects += len(all_rejects)
        for reject in all_rejects:
            if len(summary.reject_samples) < 20:
                summary.reject_samples.append({"line": reject.line_no, "reason": reject.reason})

    def _conflicting_duplicates(self, batch: _Batch) -> list[Reject]:
        if not batch.duplicates:
            return []
        stored = EventLog(self.conn).raw_of(self.stream_id, [seq for seq, _, _ in batch.duplicates])
        return [
            Reject(line_no, text, f"seq_num {seq} is already stored with different content")
            for seq, line_no, text in batch.duplicates
            if stored.get(seq) != text
        ]

    def release(self) -> None:
        self.conn.execute(
            sa.text("SELECT pg_advisory_unlock(:c, :o)"),
            dict(zip(("c", "o"), stream_lock_key(self.stream_id), strict=True)),
        )
        self.conn.commit()


def _line_chunks(fp: BinaryIO, flush_interval: float | None) -> Iterator[list[bytes]]:
    """Lists of whole lines. With a flush interval, a reader thread feeds them and an empty
    list comes at least every ``flush_interval`` seconds while the input is quiet."""
    if flush_interval is None:
        while lines := fp.readlines(1 << 20):
            yield lines
        return
    chunks: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=64)
    failure: list[BaseException] = []

    def reader() -> None:
        carry = b""
        read = getattr(fp, "read1", fp.read)
        try:
            while data := read(1 << 16):
                lines = (carry + data).split(b"\n")
                carry = lines.pop()
                if lines:
                    chunks.put([line + b"\n" for line in lines])
            if carry:
                chunks.put([carry])
        except (OSError, ValueError) as e:
            failure.append(e)
        finally:
            chunks.put(None)

    thread = threading.Thread(target=reader, name="ledger-stdin", daemon=True)
    thread.start()
    while True:
        try:
            item = chunks.get(timeout=flush_interval)
        except queue.Empty:
            yield []
            continue
        if item is None:
            break
        yield item
    if failure:
        raise InputError(f"reading the input failed: {failure[0]}")
