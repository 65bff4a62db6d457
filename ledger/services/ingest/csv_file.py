"""Ingest an L3 CSV file (or stdin) into the event log.

The input is read in batches of lines. The reading thread parses and classifies each
line (event, duplicate or reject) with the stream's
:class:`~ledger.domain.sequencing.GapTracker`; a writer thread commits each batch's events
(by COPY), rejects, gap changes and checkpoint in one transaction while the next batch is
parsed. A run killed at any moment and started again resumes after the last committed
batch and stores nothing twice. A session-level advisory lock keeps a second writer off
the stream, so the tracker, loaded from the database at the start, stays in step with it.

A run can also be asked to stop early (Ctrl-C, SIGTERM: see :class:`StopReading`): it then
commits the whole lines it has read and returns its summary, marked ``interrupted``.

Several inputs in one run (:func:`ingest_csv_files`) go through the same reading thread,
writer thread and two connections (one takes each stream's lock and loads its state, the
other commits), one input after the other, so the next file is parsed while the last
batches of the one before are committed. Each input keeps what it has alone: its stream
(several inputs may append to one stream, in the order given), checkpoint, resume point,
duplicates, rejects and summary.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

from sqlalchemy.engine import Connection, Engine

from ledger._threads import Worker, prompt_handoffs
from ledger.domain.sequencing import Arrival, GapTracker
from ledger.errors import ConstraintViolation, DatabaseError, InputError, LockLost, RowError, StreamError, first_line
from ledger.storage.locks import Locks, writer_lock
from ledger.storage.log import (
    Checkpoint,
    Checkpoints,
    EventLog,
    GapStore,
    Reject,
    Rejects,
    Streams,
)
from ledger.storage.notify import notify_appended
from ledger.venues.csv.format import CsvRow, check_header, fast_row, parse_line, row_of

__all__ = ["CsvInput", "IngestSummary", "StopReading", "ingest_csv", "ingest_csv_files"]

_T = TypeVar("_T")
_FINGERPRINT_SPAN = 4096
# Rule: a line longer than _MAX_LINE bytes (with its newline) is never held whole. It is
# read on to its newline and dropped; its first _KEEP_OF_LONG_LINE bytes go to the reject.
# An event line is a few hundred bytes, so nothing valid comes near this.
_MAX_LINE = 1 << 16
_KEEP_OF_LONG_LINE = 1 << 16
_BLOCK = 1 << 18  # bytes read at a time
# Rule: a batch is committed early once its rejects hold this many characters, so a run of
# long bad lines never piles up in memory (a few batches wait at most: see _Writer).
_REJECT_CHARS_PER_BATCH = 2 << 20
# How a reject's raw escapes a line PostgreSQL text cannot hold (see _reject_text).
_ESCAPED = "raw escaped: \\xHH for a NUL or a byte that is not UTF-8, \\\\ for a backslash"


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
    interrupted: bool = False  # stopped early on request (a signal): the input was not read to its end
    error: str | None = None  # why this input could not be read to its end (in a run of several)
    reject_samples: list[dict[str, object]] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["events_per_second"] = round(self.events_per_second, 1)
        out["seconds"] = round(self.seconds, 3)
        return out


class StopReading:
    """A request, made by a signal handler, that a running ingest stop early.

    Rule: a stopped ingest commits every whole line it has read (in the batches already
    sealed and in the one being filled), never the unfinished line after them; records a
    checkpoint that is not ``complete``, so that the same command run again resumes after
    the last stored line (a file; stdin is read again from its start, and the lines
    already stored count as duplicates); and returns its summary with ``interrupted`` set.
    The request is looked at between two chunks of lines, so at most one chunk is parsed
    after it. A read that blocks (stdin waiting for more input, as under ``tail -f``) is
    cut short: :meth:`request`, which the handler calls in the main thread, raises into the
    read the main thread is blocked in, and the input then ends there. With a flush
    interval a reading thread blocks instead, and is not cut short: the main thread, which
    waits for its lines in short slices, sees the request within 50 ms.
    """

    def __init__(self) -> None:
        self._requested = threading.Event()
        self._in_read = False  # the main thread is in a read that the request may cut short

    def request(self) -> None:
        """Ask the ingest to stop (call it from a signal handler, in the main thread)."""
        self._requested.set()
        if self._in_read:
            self._in_read = False
            raise _ReadCut

    def is_set(self) -> bool:
        return self._requested.is_set()

    def read(self, read: Callable[[int], bytes], size: int) -> bytes:
        """``read(size)``, or b"" (the end of the input) once a stop is requested, also when
        it comes while the read blocks in the main thread."""
        return self.unless_stopped(lambda: read(size), b"")

    def unless_stopped(self, call: Callable[[], _T], stopped: _T) -> _T:
        """``call()``, or ``stopped`` once a stop is requested, also when it comes while the
        call blocks in the main thread."""
        if self._requested.is_set():
            return stopped
        if threading.current_thread() is not threading.main_thread():
            return call()
        try:
            self._in_read = True
            result = call()
            # reset inside the try: a request that comes between the call's return and
            # here raises _ReadCut, which is caught below (what the call read is dropped,
            # as the input ends there)
            self._in_read = False
            return result
        except _ReadCut:
            return stopped
        finally:
            self._in_read = False


class _ReadCut(Exception):
    """Raised by :meth:`StopReading.request` into a blocked read; never leaves it."""


@dataclass
class _Batch:
    """Parsed lines waiting to be committed, and where in the input they end."""

    rows: list[bytes] = field(default_factory=list)  # event rows (ledger.storage.copy)
    rejects: list[Reject] = field(default_factory=list)
    reject_chars: int = 0  # the characters of the rejects' raw text and reasons
    duplicates: list[tuple[int, int, str]] = field(default_factory=list)  # seq, line_no, text
    lines: int = 0
    line_no: int = 0  # the last line in the batch
    offset: int = 0  # the byte just after it
    fingerprint: str = ""
    gaps: list[tuple[int, int]] = field(default_factory=list)  # the tracker's open gaps at the end
    complete: bool = False
    last: bool = False  # the input's last batch
    run: _Run | None = None  # the input it belongs to


@dataclass(frozen=True)
class CsvInput:
    """One input of a run: a file by ``path`` (opened when its turn comes, so a folder of
    thousands holds one open at a time) or an open binary file object ``fp``. ``source``
    names it in rejects and checkpoints (a file's absolute path, or ``stdin``); ``size``
    is its length in bytes when known (for progress)."""

    stream: str
    source: str
    path: Path | None = None
    fp: BinaryIO | None = None
    resumable: bool = True
    size: int | None = None


def ingest_csv(
    engine: Engine,
    fp: BinaryIO,
    *,
    stream: str,
    source: str,
    batch_size: int = 25_000,
    flush_interval: float | None = None,
    resumable: bool = True,
    progress: Callable[[int], None] | None = None,
    stop: StopReading | None = None,
) -> IngestSummary:
    """Append the L3 CSV read from ``fp`` to ``stream``; ``source`` names it in rejects and
    checkpoints (a file's absolute path, or ``stdin``). ``progress`` gets bytes read.
    ``stop``: see :class:`StopReading`. An input that cannot be read is an
    :class:`~ledger.errors.InputError`."""
    [summary] = _ingest(
        engine,
        [CsvInput(stream, source, fp=fp, resumable=resumable)],
        batch_size=batch_size,
        flush_interval=flush_interval,
        progress=progress,
        stop=stop,
        keep_going=False,
    )
    return summary


def ingest_csv_files(
    engine: Engine,
    inputs: Iterable[CsvInput],
    *,
    batch_size: int = 25_000,
    flush_interval: float | None = None,
    progress: Callable[[int], None] | None = None,
    stop: StopReading | None = None,
) -> list[IngestSummary]:
    """Append several L3 CSV inputs in one run, in the order given; one summary each.

    Rule: an input that cannot be ingested (missing or unreadable, empty, binary, a wrong
    header, its stream written by another ingest or holding another venue's events) does
    not stop the run: its summary's ``error`` says why, naming the file, what it stored
    before the error stays (its checkpoint resumes after it), and the next input goes on.
    A database error stops the run (what was committed stays; the same run again resumes
    each input after its last committed batch). On a stop request the input in hand ends
    as :func:`ingest_csv`'s does and the inputs after it are not begun (no summary).
    ``progress`` gets the bytes read over all inputs."""
    return _ingest(
        engine,
        inputs,
        batch_size=batch_size,
        flush_interval=flush_interval,
        progress=progress,
        stop=stop,
        keep_going=True,
    )


def _ingest(
    engine: Engine,
    inputs: Iterable[CsvInput],
    *,
    batch_size: int,
    flush_interval: float | None,
    progress: Callable[[int], None] | None,
    stop: StopReading | None,
    keep_going: bool,
) -> list[IngestSummary]:
    """The run: one reading thread (this one), one writer, two connections."""
    if batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    stop = stop or StopReading()
    summaries: list[IngestSummary] = []
    with prompt_handoffs(), engine.connect() as setup, engine.connect() as conn:
        streams = _Streams(setup)
        writer = _Writer(conn)
        writer.start()
        try:
            done = 0  # bytes of the inputs before the one in hand
            for item in inputs:
                if stop.is_set():
                    break
                summary = IngestSummary(stream=item.stream, source=item.source)
                summaries.append(summary)
                step = None if progress is None else _shifted(progress, done)
                started = time.perf_counter()
                try:
                    _ingest_one(streams, writer, item, summary, started, batch_size, flush_interval, step, stop)
                except (InputError, StreamError) as e:
                    if not keep_going or isinstance(e, LockLost):  # the writer's: the run cannot go on
                        raise
                    summary.error = str(e)
                    summary.seconds = time.perf_counter() - started
                    # What the stream's tracker saw of this input was not all stored: the
                    # stream's state is read again from the log if a later input needs it.
                    writer.flush()
                    streams.forget(item.stream)
                done += item.size or 0
                streams.release_idle()
            writer.close()
        except BaseException:
            writer.abandon()
            streams.release_all()
            raise
        streams.release_all()
    return summaries


def _shifted(progress: Callable[[int], None], before: int) -> Callable[[int], None]:
    return lambda offset: progress(before + offset)


def _ingest_one(
    streams: _Streams,
    writer: _Writer,
    item: CsvInput,
    summary: IngestSummary,
    started: float,
    batch_size: int,
    flush_interval: float | None,
    progress: Callable[[int], None] | None,
    stop: StopReading,
) -> None:
    """Read one input into batches for the writer (its last batch is committed later)."""
    source = item.source
    if item.path is not None:
        try:
            fp: BinaryIO = item.path.open("rb")
        except OSError as e:
            raise InputError(f"cannot read {item.path}: {e.strerror or e}") from None
    else:
        assert item.fp is not None
        fp = item.fp
    with fp if item.path is not None else contextlib.nullcontext(fp):
        header = stop.read(fp.readline, _MAX_LINE)  # bounded: a binary file may have no newline at all
        if stop.is_set():  # stopped before the header was read: nothing to do
            summary.interrupted = True
            summary.seconds = time.perf_counter() - started
            return
        if not header.strip():
            raise InputError(f"{source}: the input is empty (expected a header line first)")
        if not _is_text(header):
            # Rule: name a binary input as such, with a short escaped excerpt, not its bytes.
            raise InputError(f"{source}: not a text CSV file (starts with bytes {header[:16]!r})")
        try:
            check_header(header.decode("utf-8", errors="replace"))
        except RowError as e:
            raise InputError(f"{source}, line 1: {e}") from None
        stream = streams.open(item.stream)
        run = _Run(streams.conn, writer.conn, stream, source, summary, header, fp, started, streams.owner)
        try:
            _read(run, fp, writer, batch_size, flush_interval, item.resumable, progress, stop)
        except OSError as e:
            raise InputError(f"reading {source} failed: {e.strerror or e}") from None


def _read(
    run: _Run,
    fp: BinaryIO,
    writer: _Writer,
    batch_size: int,
    flush_interval: float | None,
    resumable: bool,
    progress: Callable[[int], None] | None,
    stop: StopReading,
) -> None:
    """The reading side: parse lines into batches and hand them to the writer."""
    offset = len(run.header)
    line_no = 1
    if resumable and (resumed := run.resume_point()) is not None:
        line_no, offset = resumed
        fp.seek(offset)
        run.summary.resumed_from_line = line_no + 1
    tracker = run.stream.tracker
    batch = _Batch()
    deadline = None if flush_interval is None else time.monotonic() + flush_interval
    for lines in _line_chunks(fp, flush_interval, stop):
        start = 0
        while start < len(lines):
            part = lines[start : start + batch_size - batch.lines]
            start += len(part)
            _take_lines(tracker, batch, part, line_no)
            line_no += len(part)
            offset += sum(map(len, part))
            if type(part[0]) is _LongLine:  # alone in its list; only its start was kept
                offset += part[0].skipped
            if batch.lines >= batch_size or batch.reject_chars > _REJECT_CHARS_PER_BATCH:
                writer.submit(run.seal(batch, line_no, offset, complete=False))
                batch = _Batch()
                if progress is not None:
                    progress(offset)
        if deadline is not None and time.monotonic() >= deadline:
            if batch.lines:
                writer.submit(run.seal(batch, line_no, offset, complete=False))
                batch = _Batch()
            deadline = time.monotonic() + (flush_interval or 0)
    # On a stop request the chunks end (see _line_chunks): commit what they gave.
    run.summary.interrupted = stop.is_set()
    run.summary.open_gaps = len(tracker.gaps)
    run.summary.missing_seqs = tracker.missing()
    last = run.seal(batch, line_no, offset, complete=not run.summary.interrupted)
    last.last = True
    writer.submit(last)
    if progress is not None:
        progress(offset)


def _take_lines(tracker: GapTracker, batch: _Batch, lines: list[bytes], line_no: int) -> None:
    """Parse ``lines`` (numbered from ``line_no + 1``) into the batch. The hot loop of ingest."""
    rows = batch.rows
    observe = tracker.observe
    duplicate = Arrival.DUPLICATE
    for raw in lines:
        line_no += 1
        fast = fast_row(raw)
        if fast is None:
            slow = _parse_slowly(raw, line_no, batch)
            if slow is None:
                continue
            row, text = slow
            fast = (row.seq, row_of(row, text, raw))
        seq, copy_line = fast
        high = tracker.high
        if high is not None and seq == high + 1:  # the usual case, without a call
            tracker.high = seq
            rows.append(copy_line)
        elif observe(seq) is duplicate:
            batch.duplicates.append((seq, line_no, raw.decode("utf-8", errors="replace").rstrip("\r\n")))
        else:
            rows.append(copy_line)
    batch.lines += len(lines)


def _parse_slowly(raw: bytes, line_no: int, batch: _Batch) -> tuple[CsvRow, str] | None:
    """The careful path for a line the fast path refused: the row, or a reject with its reason."""
    size = raw.size if type(raw) is _LongLine else len(raw)
    if size > _MAX_LINE:
        head = _utf8_trim(raw[:_KEEP_OF_LONG_LINE])
        reason = f"a line of {size:,} bytes, longer than any event can be (first {len(head):,} kept)"
        _reject_bytes(batch, line_no, head, reason)
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _reject_bytes(batch, line_no, raw.rstrip(b"\r\n"), f"not UTF-8 text: {e.reason} at byte {e.start}")
        return None
    text = text.rstrip("\r\n")
    if not text.strip():
        return None  # a blank line holds nothing
    if "\x00" in text:
        _reject_bytes(batch, line_no, raw.rstrip(b"\r\n"), "contains a NUL byte")
        return None
    try:
        return parse_line(text), text
    except RowError as e:
        _reject(batch, line_no, text, str(e))
        return None


def _reject(batch: _Batch, line_no: int, text: str, reason: str) -> None:
    batch.rejects.append(Reject(line_no, text, reason))
    batch.reject_chars += len(text) + len(reason)


def _reject_bytes(batch: _Batch, line_no: int, raw: bytes, reason: str) -> None:
    """Reject a line that may not be text PostgreSQL can hold (see :func:`_reject_text`)."""
    text, escaped = _reject_text(raw)
    _reject(batch, line_no, text, f"{reason} ({_ESCAPED})" if escaped else reason)


def _reject_text(raw: bytes) -> tuple[str, bool]:
    """The text a reject stores for a line, and whether it is escaped.

    Rule: rejects.raw is PostgreSQL text, which holds neither NUL nor invalid UTF-8. A line
    that is UTF-8 without NUL is stored as it is. Any other line is stored in an escaped
    form that loses nothing: each NUL and each byte that is not part of valid UTF-8 becomes
    ``\\xHH`` (two hex digits), each backslash becomes ``\\\\``, the rest stays as it
    is; the reason then ends with "(raw escaped: ...)" to say so."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if "\x00" not in text:
            return text, False
    escaped = raw.replace(b"\\", b"\\\\").decode("utf-8", errors="backslashreplace")
    return escaped.replace("\x00", "\\x00"), True


def _utf8_trim(head: bytes) -> bytes:
    """The start of a line cut short, less a UTF-8 character the cut split."""
    for back in range(1, min(4, len(head)) + 1):
        byte = head[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: the start of the last character
            width = 1 if byte < 0xC0 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return head[:-back] if width > back else head
    return head


def _is_text(header: bytes) -> bool:
    """Whether a first line looks like text: UTF-8 without control characters but tab, CR
    and LF (a character cut at the end of a bounded read does not count)."""
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.end < len(header) or len(header) < _MAX_LINE:
            return False
        text = header[: e.start].decode("utf-8", errors="replace")
    return not any(c < " " and c not in "\t\r\n" for c in text)


class _Stream:
    """One stream a run writes: its id, lock and tracker, shared by the inputs that append
    to it. The reading thread owns the tracker; the writer thread owns ``stored_gaps`` and
    counts the batches it has committed."""

    def __init__(self, name: str, stream_id: int, tracker: GapTracker, stored_gaps: dict[tuple[int, int], int]) -> None:
        self.name = name
        self.id = stream_id
        self.tracker = tracker
        self.stored_gaps = stored_gaps
        self.submitted = 0  # batches handed to the writer (reading thread)
        self.committed = 0  # batches committed (writer thread)


class _Streams:
    """The streams of a run, opened on the reading thread's connection: each is locked
    (a session-level advisory lock, so no other ingest writes it meanwhile) and its state
    loaded from the log when an input first needs it, and given back once its batches are
    committed and the inputs in hand no longer need it.

    Rule: the writer commits on a connection of its own, so each of its transactions first
    checks that this connection's session (``owner``) still holds the stream's lock: a
    lost lock connection stops the run (:class:`~ledger.errors.LockLost`) before another
    ingest that took the stream meanwhile could be written over."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.owner = Locks(conn).backend_pid()
        conn.commit()
        self._open: dict[str, _Stream] = {}

    def open(self, name: str) -> _Stream:
        stream = self._open.get(name)
        if stream is not None:
            return stream
        conn = self.conn
        with conn.begin():
            stream_id = Streams(conn).ensure(name, "csv")
        if not Locks(conn).try_take(writer_lock(stream_id)):
            conn.commit()
            raise StreamError(f"stream {name!r} is being written by another ingest; wait for it to finish")
        conn.commit()
        try:
            low, high = EventLog(conn).seq_range(stream_id)
            stored_gaps = GapStore(conn).open_gaps(stream_id)
            conn.commit()
        except BaseException:
            Locks(conn).give_back(writer_lock(stream_id))
            raise
        stream = self._open[name] = _Stream(name, stream_id, GapTracker(low, high, stored_gaps), stored_gaps)
        return stream

    def release_idle(self) -> None:
        """Give back every stream whose batches are all committed but the last one opened
        (the next input may well append to it too)."""
        names = list(self._open)
        for name in names[:-1]:
            stream = self._open[name]
            if stream.committed == stream.submitted:
                self.forget(name)

    def forget(self, name: str) -> None:
        """Give back a stream (once its batches are committed: see :meth:`_Writer.flush`)."""
        stream = self._open.pop(name, None)
        if stream is not None:
            Locks(self.conn).give_back(writer_lock(stream.id))

    def release_all(self) -> None:
        """Give back every stream; on a broken connection the server already dropped them."""
        if self._open:
            self._open.clear()
            Locks(self.conn).give_back()


class _Run:
    """One input being read: its stream, source, checkpoint and summary."""

    def __init__(
        self,
        setup: Connection,
        conn: Connection,
        stream: _Stream,
        source: str,
        summary: IngestSummary,
        header: bytes,
        fp: BinaryIO,
        started: float,
        owner: int,
    ) -> None:
        self.conn = conn  # the writer's
        self.owner = owner  # the backend whose session holds the stream's lock
        self.stream = stream
        self.source = source
        self.summary = summary
        self.header = header
        self.started = started
        self._fd = _regular_file_fd(fp)
        self.checkpoint = Checkpoints(setup).get(stream.id, source)
        setup.commit()
        self.base = (0, 0, 0)  # counts carried over from the killed run this one resumes

    def resume_point(self) -> tuple[int, int] | None:
        """(line, byte offset) to go on from after a run that did not finish, or None."""
        cp = self.checkpoint
        if cp is None or cp.complete or cp.lines_done <= 1 or self._fd is None:
            return None
        if os.fstat(self._fd).st_size < cp.bytes_done or self._fingerprint(cp.bytes_done) != cp.fingerprint:
            return None  # another file at that path now: read it all (duplicates are harmless)
        self.base = (cp.events_stored, cp.duplicates, cp.rejects)
        return cp.lines_done, cp.bytes_done

    def _fingerprint(self, offset: int) -> str:
        """Identifies the input up to ``offset``: the header and the bytes just before it."""
        digest = hashlib.sha256(self.header)
        if self._fd is not None:
            start = max(0, offset - _FINGERPRINT_SPAN)
            digest.update(os.pread(self._fd, offset - start, start))
        return digest.hexdigest()

    def seal(self, batch: _Batch, line_no: int, offset: int, *, complete: bool) -> _Batch:
        batch.run = self
        batch.line_no, batch.offset, batch.complete = line_no, offset, complete
        batch.fingerprint = self._fingerprint(offset)
        batch.gaps = list(self.stream.tracker.gaps)
        self.stream.submitted += 1
        return batch

    def commit(self, batch: _Batch) -> None:
        """Store one batch in one transaction (called from the writer thread only)."""
        conn = self.conn
        summary = self.summary
        stream = self.stream
        try:
            with conn.begin():
                if not Locks(conn).holds(writer_lock(stream.id), pid=self.owner):
                    raise LockLost(
                        f"stream {summary.stream!r}: this ingest lost its lock on the stream (its lock connection "
                        f"went away) before storing lines up to {batch.line_no} of {self.source}; what was stored "
                        "before stays: run the same command again to resume"
                    )
                if batch.rows:
                    EventLog(conn).append(stream.id, batch.rows)
                    notify_appended(conn, [stream.id])
                conflicting = self._conflicting_duplicates(batch)
                rejects = batch.rejects + conflicting
                Rejects(conn).add(stream.id, self.source, rejects)
                stream.stored_gaps = GapStore(conn).reconcile(stream.id, stream.stored_gaps, batch.gaps)
                stored, dups, rejected = self.base
                checkpoint = Checkpoint(
                    batch.line_no,
                    batch.offset,
                    batch.fingerprint,
                    batch.complete,
                    events_stored=stored + summary.events_stored + len(batch.rows),
                    duplicates=dups + summary.duplicates + len(batch.duplicates),
                    rejects=rejected + summary.rejects + len(rejects),
                )
                Checkpoints(conn).put(stream.id, self.source, checkpoint)
        except ConstraintViolation as e:
            raise DatabaseError(
                f"stream {summary.stream!r}: the log already holds events that its gaps table "
                f"says are missing (lines up to {batch.line_no} of {self.source}); the gaps table was "
                "changed by hand or by another writer"
            ) from e
        except DatabaseError as e:
            raise DatabaseError(
                f"storing lines up to {batch.line_no} of {self.source} failed: {first_line(e)}. "
                "Run the same command again: it resumes after the last stored batch"
            ) from e
        stream.committed += 1
        summary.lines += batch.lines
        summary.events_stored += len(batch.rows)
        summary.duplicates += len(batch.duplicates)
        summary.conflicting_duplicates += len(conflicting)
        summary.rejects += len(rejects)
        for reject in rejects[: max(0, 20 - len(summary.reject_samples))]:
            summary.reject_samples.append({"line": reject.line_no, "reason": reject.reason})
        if batch.last:
            summary.seconds = time.perf_counter() - self.started

    def _conflicting_duplicates(self, batch: _Batch) -> list[Reject]:
        if not batch.duplicates:
            return []
        stored = EventLog(self.conn).raw_of(self.stream.id, [seq for seq, _, _ in batch.duplicates])
        return [
            Reject(line_no, text, f"seq_num {seq} is already stored with different content")
            for seq, line_no, text in batch.duplicates
            if stored.get(seq) != text
        ]


class _Writer(Worker[_Batch]):
    """Commits sealed batches in order, one transaction each, on its own connection, while
    the next one is parsed: a :class:`~ledger._threads.Worker`. At most two batches wait,
    so memory stays bounded whatever the input size; a failed commit is raised in the
    reading thread, and ``abandon`` stops after the batch in hand, for a reading thread
    that is failing itself."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(self._commit_all, name="ledger-ingest-writer", maxsize=2)
        self.conn = conn

    def _commit_all(self, batches: Iterator[_Batch]) -> None:
        for batch in batches:
            assert batch.run is not None
            batch.run.commit(batch)


def _regular_file_fd(fp: BinaryIO) -> int | None:
    try:
        fd = fp.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (OSError, ValueError, AttributeError):
        return None


class _LongLine(bytes):
    """The first bytes of a line longer than _MAX_LINE; ``size`` is the whole line's length
    (its newline included) and ``skipped`` the bytes read past and dropped."""

    size: int
    skipped: int


def _lines(read: Callable[[int], bytes], stopped: Callable[[], bool] = lambda: False) -> Iterator[list[bytes]]:
    """Lists of the lines ``read`` gives, each with its newline (the input's last line may
    have none), in memory bounded whatever the lines' lengths: a line that grows past
    _MAX_LINE comes alone in its list as a :class:`_LongLine`. When ``read`` ended because
    a stop was requested (``stopped``), the unfinished line it was in is not given."""
    pending = b""  # the start of a line not ended yet: at most _MAX_LINE bytes
    while data := read(_BLOCK):
        if pending:
            data = pending + data
        while data:
            lines = io.BytesIO(data).readlines()  # splits at b"\n" only, like a file's readlines
            pending = b"" if lines[-1].endswith(b"\n") else lines.pop()
            if lines:
                yield lines
            if len(pending) <= _MAX_LINE:
                break
            long, data = _skip_line(read, pending)  # data: what follows its newline
            pending = b""
            if stopped():  # cut short inside the long line: it is not whole
                return
            yield [long]
    if pending and not stopped():
        yield [pending]


def _skip_line(read: Callable[[int], bytes], start: bytes) -> tuple[_LongLine, bytes]:
    """Read past the rest of the line ``start`` begins, to its newline or the end of the
    input: (the line's first _KEEP_OF_LONG_LINE bytes, what was read after its newline)."""
    size = len(start)
    rest = b""
    while data := read(_BLOCK):
        end = data.find(b"\n")
        if end >= 0:
            size += end + 1
            rest = data[end + 1 :]
            break
        size += len(data)
    long = _LongLine(start[:_KEEP_OF_LONG_LINE])
    long.size, long.skipped = size, size - len(long)
    return long, rest


_STOP_POLL = 0.05  # seconds: how often a main thread waiting for input looks at a stop request


def _line_chunks(fp: BinaryIO, flush_interval: float | None, stop: StopReading) -> Iterator[list[bytes]]:
    """Lists of whole lines (see :func:`_lines`). With a flush interval, a reader thread feeds
    them and an empty list comes at least every ``flush_interval`` seconds while the input
    is quiet. Once a stop is requested the lists end, after those the thread had already
    read (the thread reads no more: it may stay blocked in a read, as a daemon)."""
    if flush_interval is None:
        yield from _lines(lambda size: stop.read(fp.read, size), stop.is_set)
        return
    chunks: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=64)
    failure: list[BaseException] = []
    read = getattr(fp, "read1", fp.read)

    def reader() -> None:
        try:
            for lines in _lines(lambda size: stop.read(read, size), stop.is_set):
                chunks.put(lines)
        except (OSError, ValueError) as e:
            failure.append(e)
        finally:
            chunks.put(None)

    thread = threading.Thread(target=reader, name="ledger-stdin", daemon=True)
    thread.start()
    # The main thread waits on the queue in short slices and looks at the request between
    # them: nothing is raised into the wait (an exception raised by a signal handler inside
    # a Condition's wait leaves its lock broken: "release unlocked lock").
    quiet_until = time.monotonic() + flush_interval
    item: list[bytes] | None = []
    while not stop.is_set():
        try:
            item = chunks.get(timeout=min(flush_interval, _STOP_POLL))
        except queue.Empty:
            item = []
            if time.monotonic() >= quiet_until:
                quiet_until = time.monotonic() + flush_interval
                yield []
            continue
        quiet_until = time.monotonic() + flush_interval
        if stop.is_set():
            break  # the stop came during the wait: the lines in hand are taken as below
        if item is None:
            if failure:
                raise InputError(f"reading the input failed: {failure[0]}")
            return
        if item:
            yield item
        item = []
    # stopped: the lines in hand and what the thread has read already, without waiting for more
    while item is not None:
        if item and type(item[-1]) is bytes and not item[-1].endswith(b"\n"):
            # the input's end came with the stop (the signal may have ended the writer of a
            # pipe too): an unfinished last line is not taken
            item = item[:-1]
        if item:
            yield item
        item = _queued(chunks)


def _queued(chunks: queue.Queue[list[bytes] | None]) -> list[bytes] | None:
    try:
        return chunks.get_nowait()
    except queue.Empty:
        return None
