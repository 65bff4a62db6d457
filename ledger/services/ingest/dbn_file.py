"""Ingest Databento MBO files (DBN, plain or zstd, or a stream on stdin) into the event log.

Rules (``docs/venues/databento.md`` says why):

- **Streams.** Each instrument of the input is its own stream, named
  ``databento:<dataset>:<symbol>`` (:func:`stream_name`); ``stream`` renames it when the
  input holds one instrument, and an input that holds more is refused when the second one
  shows.
- **Keys.** Each record's seq is the venue's time-based key, computed afresh for each input
  from its records alone, so the same input always gives the same seqs.
- **Nothing twice.** A record whose seq is above its stream's highest stored seq is new. One
  at or below it is looked up: stored with the same bytes, it is a duplicate (counted, not
  stored again); with other bytes, a conflicting duplicate (also kept as a reject); absent,
  it is stored (a file of an earlier day ingested after a later one).
- **Batches.** The reading thread decodes and keys records; a writer thread commits each
  batch in one transaction: the events of all its streams (one COPY), their rejects, and
  per stream a checkpoint of the last record number done. A run killed at any moment and
  started again decodes the input from its start (the keys need it) and sends nothing up
  to the checkpoint: each record is stored once. A stdin stream is not resumed: its
  records already stored count as duplicates.
- **Rejects.** A record that cannot become an event (an unknown action or side, an add
  without a price...) is kept in ``rejects`` with its record number, its bytes as hex and
  the reason; what makes the whole input unreadable (another schema, truncation, corrupt
  zstd) raises :class:`~ledger.venues.databento.dbn.DbnError` after committing the records
  before it.
- **Stopping early** (Ctrl-C, SIGTERM: :class:`~ledger.services.ingest.csv_file.StopReading`):
  the whole records read so far are committed, the checkpoint is left incomplete, and the
  summary says ``interrupted``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.engine import Connection, Engine

from ledger._threads import Worker
from ledger.errors import DatabaseError, InputError, StreamError, first_line
from ledger.services.ingest.csv_file import StopReading
from ledger.services.ingest.inputs import expand
from ledger.storage.locks import Locks, writer_lock
from ledger.storage.log import Checkpoint, Checkpoints, EventLog, Reject, Rejects, Streams
from ledger.storage.notify import notify_appended
from ledger.venues.databento.dbn import DbnError, MboReader, MboReject, Sequencer

__all__ = ["DbnIngestSummary", "StreamCounts", "dbn_inputs", "ingest_dbn", "stream_name"]

#: Datasets that carry one symbol from several publishers (venues): their stream names end
#: with ``:<publisher id>``, so that each venue's book is its own.
MULTI_PUBLISHER_DATASETS = frozenset(
    {"DBEQ.BASIC", "DBEQ.PLUS", "DBEQ.MAX", "EQUS.PLUS", "EQUS.ALL", "EQUS.MINI", "XNAS.BASIC", "OPRA.PILLAR"}
)
_FINGERPRINT_SPAN = 1 << 16
_SUFFIXES = (".dbn", ".dbn.zst")


def stream_name(dataset: str, symbol: str, publisher_id: int) -> str:
    """The default stream of an instrument: ``databento:<dataset>:<symbol>``, and
    ``:<publisher id>`` after it in a dataset of several publishers.

    >>> stream_name("GLBX.MDP3", "ESH4", 1), stream_name("EQUS.PLUS", "NVDA", 39)
    ('databento:GLBX.MDP3:ESH4', 'databento:EQUS.PLUS:NVDA:39')
    """
    if dataset in MULTI_PUBLISHER_DATASETS:
        return f"databento:{dataset}:{symbol}:{publisher_id}"
    return f"databento:{dataset}:{symbol}"


@dataclass
class StreamCounts:
    """What one run did to one stream."""

    stream: str
    events_stored: int = 0
    duplicates: int = 0
    conflicting_duplicates: int = 0
    rejects: int = 0


@dataclass
class DbnIngestSummary:
    """What one ingest run over one input did."""

    source: str
    dataset: str = ""
    records: int = 0  # records read from the input in this run (MBO or not)
    events_stored: int = 0
    duplicates: int = 0
    conflicting_duplicates: int = 0  # duplicates whose bytes differ from the stored ones (also rejects)
    rejects: int = 0
    seconds: float = 0.0
    resumed_from_record: int | None = None
    interrupted: bool = False
    streams: dict[str, StreamCounts] = field(default_factory=dict)
    reject_samples: list[dict[str, object]] = field(default_factory=list)

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["streams"] = [asdict(counts) for counts in self.streams.values()]
        out["records_per_second"] = round(self.records_per_second, 1)
        out["seconds"] = round(self.seconds, 3)
        return out


def dbn_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """The DBN files ``paths`` name (files, folders standing for their ``*.dbn`` and
    ``*.dbn.zst`` files, globs ledger expands: :func:`~ledger.services.ingest.inputs.expand`),
    each once, in the time order of their metadata's start (then by name). Said before
    anything is stored: InputError for a file that is not there, InputsError for a folder
    without DBN files or a glob matching none, DbnError for a file that is not DBN."""
    found = expand([str(p) for p in paths], _SUFFIXES)
    for path in found:
        if not path.is_file():
            raise InputError(f"{path}: no such file")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return sorted(unique, key=lambda p: (_start_of(p), str(p)))


def _start_of(path: Path) -> int:
    reader = MboReader(path, chunk_size=1 << 16)
    batches: Generator[Any, None, None] = reader.batches()  # type: ignore[assignment]
    try:
        next(batches, None)
    finally:
        batches.close()
    return int(reader.metadata.start) if reader.metadata is not None else 0


def ingest_dbn(
    engine: Engine,
    source: str | Path | BinaryIO,
    *,
    source_name: str | None = None,
    stream: str | None = None,
    batch_size: int = 50_000,
    resumable: bool = True,
    progress: Callable[[int], None] | None = None,
    stop: StopReading | None = None,
) -> DbnIngestSummary:
    """Append the MBO records of one DBN input (a path, or a binary stream such as stdin) to
    their streams (see the module). ``source_name`` names the input in rejects and
    checkpoints (default: a path's absolute form, ``stdin`` for a stream); ``stream``
    renames its one instrument's stream; ``progress`` gets the input bytes read so far."""
    if batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    started = time.perf_counter()
    stop = stop or StopReading()
    if isinstance(source, str | Path):
        path = Path(source)
        name = source_name or str(path.resolve())
        try:
            handle: BinaryIO = path.open("rb")
        except OSError as e:
            raise InputError(f"cannot read {source}: {e.strerror or e}") from None
    else:
        handle, name = source, source_name or "stdin"
    summary = DbnIngestSummary(source=name)
    with handle, engine.connect() as conn:
        fingerprint = _fingerprint(handle) if resumable else None
        run = _Run(conn, summary, fingerprint)
        try:
            _read(run, handle, stream, batch_size, progress, stop)
        finally:
            run.release()
    summary.seconds = time.perf_counter() - started
    return summary


def _read(
    run: _Run,
    handle: BinaryIO,
    rename: str | None,
    batch_size: int,
    progress: Callable[[int], None] | None,
    stop: StopReading,
) -> None:
    """The reading side: decode and key records into batches and hand them to the writer."""
    summary = run.summary
    counting = _Counting(handle, stop, progress)
    reader = MboReader(counting, name=summary.source)  # type: ignore[arg-type]
    sequencer = Sequencer()
    names: dict[Any, str] = {}
    resume_from = run.resume_from
    writer = _Writer(run)
    writer.start()
    batch = _Batch()
    try:
        try:
            for items in reader.copy_lines(sequencer):
                if not summary.dataset:
                    summary.dataset = reader.dataset
                for item in items:
                    if item.__class__ is MboReject:
                        reject: MboReject = item
                        if reject.record_no > resume_from:
                            publisher = int.from_bytes(reject.raw[2:4], "little") if len(reject.raw) >= 4 else 0
                            key = (reject.symbol, publisher)
                            stream = names.get(key) or _name(names, key, reader.dataset, rename, summary.source)
                            batch.rejects.setdefault(stream, []).append(
                                Reject(reject.record_no, reject.raw.hex(), reject.reason)
                            )
                            batch.count += 1
                        continue
                    key, record_no, seq, line = item  # type: ignore[misc]
                    stream = names.get(key) or _name(names, key, reader.dataset, rename, summary.source)
                    if record_no <= resume_from:
                        continue
                    batch.rows.setdefault(stream, []).append((seq, record_no, line))
                    batch.count += 1
                batch.records = reader.records
                if batch.count >= batch_size:
                    writer.submit(batch.seal(complete=False))
                    batch = _Batch()
                if stop.is_set():
                    break
        except DbnError:
            if not stop.is_set():  # a stop cuts the input short: what came before it is whole
                batch.records = reader.records
                writer.submit(batch.seal(complete=False))  # the records before the failure
                writer.close()
                raise
        summary.interrupted = stop.is_set()
        batch.records = reader.records
        writer.submit(batch.seal(complete=not summary.interrupted))
    except BaseException:
        writer.abandon()
        raise
    writer.close()


def _name(names: dict[Any, str], key: Any, dataset: str, rename: str | None, source: str) -> str:
    """The stream of a stream key seen for the first time (see the module's rules)."""
    symbol, publisher = key
    if rename is not None:
        if names:
            (first,) = {k[0] for k in names}
            raise InputError(
                f"{source}: --stream {rename!r} names one stream, but the input holds more than one "
                f"instrument ({first}, {symbol}); leave --stream out to give each its own stream"
            )
        name = rename
    else:
        name = stream_name(dataset, symbol, publisher)
    names[key] = name
    return name


@dataclass
class _Batch:
    """Keyed records waiting to be committed, per stream name, and where the input stands."""

    rows: dict[str, list[tuple[int, int, bytes]]] = field(default_factory=dict)  # (seq, record no, COPY row)
    rejects: dict[str, list[Reject]] = field(default_factory=dict)
    count: int = 0
    records: int = 0  # records of the input read up to the batch's end
    complete: bool = False

    def seal(self, *, complete: bool) -> _Batch:
        self.complete = complete
        return self


@dataclass
class _Stream:
    """The writer's view of one stream: its id, highest stored seq and counts so far."""

    stream_id: int
    high: int | None
    counts: StreamCounts
    base: tuple[int, int, int] = (0, 0, 0)  # counts of the killed run this one resumes


class _Run:
    """One run's connection, streams (each locked against other writers) and checkpoints."""

    def __init__(self, conn: Connection, summary: DbnIngestSummary, fingerprint: str | None) -> None:
        self.conn = conn
        self.summary = summary
        self.fingerprint = fingerprint
        self.streams: dict[str, _Stream] = {}
        self.locked: list[int] = []
        self.resume_from = 0
        self._checkpoints: dict[int, Checkpoint] = {}
        if fingerprint is not None:
            found = Checkpoints(conn).of_source(summary.source)
            conn.commit()
            usable = [cp for cp in found.values() if cp.fingerprint == fingerprint]
            if usable and len(usable) == len(found) and not any(cp.complete for cp in usable):
                self._checkpoints = found
                self.resume_from = min(cp.lines_done for cp in usable)
                summary.resumed_from_record = self.resume_from + 1

    def _stream(self, name: str) -> _Stream:
        found = self.streams.get(name)
        if found is not None:
            return found
        conn = self.conn
        with conn.begin():
            stream_id = Streams(conn).ensure(name, "databento")
        if not Locks(conn).try_take(writer_lock(stream_id)):
            conn.commit()
            raise StreamError(f"stream {name!r} is being written by another ingest; wait for it to finish")
        self.locked.append(stream_id)
        _, high = EventLog(conn).seq_range(stream_id)
        conn.commit()
        counts = self.summary.streams.setdefault(name, StreamCounts(name))
        found = self.streams[name] = _Stream(stream_id, high, counts)
        cp = self._checkpoints.get(stream_id)
        if cp is not None:
            found.base = (cp.events_stored, cp.duplicates, cp.rejects)
        return found

    def commit(self, batch: _Batch) -> None:
        """Store one batch in one transaction (called from the writer thread only)."""
        conn, summary = self.conn, self.summary
        for name in {**batch.rows, **batch.rejects}:
            self._stream(name)
        try:
            with conn.begin():
                log = EventLog(conn)
                parts: list[tuple[int, list[bytes]]] = []
                found: dict[str, tuple[list[int], int, list[Reject]]] = {}
                for name, keyed in batch.rows.items():
                    state = self.streams[name]
                    seqs, rows, duplicates, conflicting = _new_rows(log, state, keyed)
                    parts.append((state.stream_id, rows))
                    found[name] = (seqs, duplicates, conflicting)
                log.append_many(parts, venue_fields=True)
                if parts:
                    notify_appended(conn, [stream_id for stream_id, rows in parts if rows])
                for name in {**batch.rows, **batch.rejects}:
                    state = self.streams[name]
                    _, _, conflicting = found.get(name, ([], 0, []))
                    Rejects(conn).add(state.stream_id, summary.source, batch.rejects.get(name, []) + conflicting)
                self._checkpoint(batch, found)
        except DatabaseError as e:
            raise DatabaseError(
                f"storing records up to {batch.records} of {summary.source} failed: {first_line(e)}. "
                "Run the same command again: it resumes after the last stored batch"
            ) from e
        summary.records = batch.records - self.resume_from
        for name, (seqs, duplicates, conflicting) in found.items():
            state = self.streams[name]
            if seqs:
                state.high = seqs[-1] if state.high is None else max(state.high, seqs[-1])
            _count(summary, state.counts, len(seqs), duplicates, len(conflicting), 0)
        for name, rejects in batch.rejects.items():
            _count(summary, self.streams[name].counts, 0, 0, 0, len(rejects))
        for name in {**batch.rows, **batch.rejects}:
            rejects = batch.rejects.get(name, []) + found.get(name, ([], 0, []))[2]
            for reject in rejects[: max(0, 20 - len(summary.reject_samples))]:
                summary.reject_samples.append({"stream": name, "record": reject.line_no, "reason": reject.reason})

    def _checkpoint(self, batch: _Batch, found: dict[str, Any]) -> None:
        """Every stream of the input so far: done up to the batch's last record."""
        if self.fingerprint is None:
            return
        checkpoints = Checkpoints(self.conn)
        for name, state in self.streams.items():
            seqs, duplicates, conflicting = found.get(name, ([], 0, []))
            stored, dups, rejected = state.base
            counts = state.counts
            rejects = len(batch.rejects.get(name, [])) + len(conflicting)
            checkpoints.put(
                state.stream_id,
                self.summary.source,
                Checkpoint(
                    batch.records,
                    0,
                    self.fingerprint,
                    batch.complete,
                    events_stored=stored + counts.events_stored + len(seqs),
                    duplicates=dups + counts.duplicates + duplicates,
                    rejects=rejected + counts.rejects + rejects,
                ),
            )

    def release(self) -> None:
        """Give the streams back; on a broken connection the server already dropped the locks."""
        locked, self.locked = self.locked, []
        if locked:
            Locks(self.conn).give_back()


def _new_rows(
    log: EventLog, state: _Stream, keyed: list[tuple[int, int, bytes]]
) -> tuple[list[int], list[bytes], int, list[Reject]]:
    """One stream's rows of a batch, (seq, record number, COPY row) each, in seq order:
    (the seqs and rows to store, how many are duplicates, the conflicting duplicates as
    rejects). Rows above the highest stored seq are new without a look-up."""
    high = state.high
    if high is None or keyed[0][0] > high:
        return [seq for seq, _, _ in keyed], [row for _, _, row in keyed], 0, []
    stored = log.raw_between(state.stream_id, keyed[0][0], min(high, keyed[-1][0]))
    seqs: list[int] = []
    rows: list[bytes] = []
    duplicates = 0
    conflicting: list[Reject] = []
    for seq, record_no, row in keyed:
        raw = stored.get(seq)
        if raw is None:
            seqs.append(seq)
            rows.append(row)
            continue
        duplicates += 1
        mine = row.split(b"\t")[7].decode()  # the raw column: the record's bytes as hex
        if mine != raw:
            reason = f"seq {seq} is already stored with other bytes (stored: {raw})"
            conflicting.append(Reject(record_no, mine, reason))
    return seqs, rows, duplicates, conflicting


def _count(
    summary: DbnIngestSummary, counts: StreamCounts, new: int, dups: int, conflicting: int, rejects: int
) -> None:
    counts.events_stored += new
    counts.duplicates += dups
    counts.conflicting_duplicates += conflicting
    counts.rejects += rejects + conflicting
    summary.events_stored += new
    summary.duplicates += dups
    summary.conflicting_duplicates += conflicting
    summary.rejects += rejects + conflicting


class _Writer(Worker[_Batch]):
    """Commits sealed batches in order, one transaction each, while the next is decoded (a
    :class:`~ledger._threads.Worker`: at most two wait; a failed commit is raised in the
    reading thread)."""

    def __init__(self, run: _Run) -> None:
        super().__init__(self._commit_all, name="ledger-dbn-writer", maxsize=2)
        self._run = run

    def _commit_all(self, batches: Iterator[_Batch]) -> None:
        for batch in batches:
            self._run.commit(batch)


class _Counting:
    """A binary input that counts the bytes read (for progress) and reads nothing more once
    a stop is requested."""

    def __init__(self, handle: BinaryIO, stop: StopReading, progress: Callable[[int], None] | None) -> None:
        self._handle = handle
        self._stop = stop
        self._progress = progress
        self.name = getattr(handle, "name", "stdin")
        self.done = 0

    def read(self, size: int) -> bytes:
        data = self._stop.read(self._handle.read, size)
        self.done += len(data)
        if self._progress is not None:
            self._progress(self.done)
        return data


def _fingerprint(handle: BinaryIO) -> str | None:
    """Identifies a regular file's content (its size and first bytes); None for a stream."""
    try:
        fd = handle.fileno()
        info = os.fstat(fd)
    except (OSError, ValueError, AttributeError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    digest = hashlib.sha256(str(info.st_size).encode())
    digest.update(os.pread(fd, _FINGERPRINT_SPAN, 0))
    return digest.hexdigest()
