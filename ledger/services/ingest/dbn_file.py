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
- **Behind a projection.** The transaction that stores records at or below a stream's
  highest stored seq also checks the stream's projector position
  (:meth:`~ledger.storage.projection.Positions.outrun`): when the projection has applied a
  seq at or above the lowest of them, its book and L1 rows lack them, so the position is
  marked ``needs_rebuild`` and the stream's counts say ``needs_rebuild`` (the command line
  names ``ledger project --rebuild STREAM``).
- **Batches.** The reading thread decodes and keys records; a writer thread commits each
  batch in one transaction: the events of all its streams (one COPY), their rejects, and
  per stream a checkpoint of the last record number done. A run killed at any moment and
  started again decodes the input from its start (the keys need it) and sends nothing up
  to the checkpoint: each record is stored once. A stdin stream is not resumed: its
  records already stored count as duplicates.
- **Rejects.** A record that cannot become an event (an unknown action or side, an add
  without a price...) is kept in ``rejects`` with its record number, its bytes as hex and
  the reason; what makes the rest of an input unreadable (another schema, truncation,
  corrupt zstd: :class:`~ledger.venues.databento.dbn.DbnError`) ends that input after
  committing the records before it, named in its summary's ``error``; the run goes on with
  the next input (:func:`ingest_dbn`, for one input, raises it).
- **Several inputs** (:func:`ingest_dbn_inputs`) share one reading thread, one writer and
  its connection: the next input is decoded while the last batches of the one before
  commit, and a stream's locks are held until the run ends.
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

from ledger._threads import Worker, prompt_handoffs
from ledger.errors import DatabaseError, InputError, StreamError, first_line
from ledger.services.ingest.csv_file import StopReading
from ledger.services.ingest.inputs import expand
from ledger.storage.locks import Locks, writer_lock
from ledger.storage.log import Checkpoint, Checkpoints, EventLog, Reject, Rejects, Streams
from ledger.storage.notify import notify_appended
from ledger.storage.projection import Positions
from ledger.venues.databento.dbn import DbnError, MboReader, Sequencer

__all__ = [
    "DbnIngestSummary",
    "DbnInput",
    "StreamCounts",
    "dbn_inputs",
    "ingest_dbn",
    "ingest_dbn_inputs",
    "stream_name",
]

#: Datasets that carry one symbol from several publishers (venues): their stream names end
#: with ``:<publisher id>``, so that each venue's book is its own.
MULTI_PUBLISHER_DATASETS = frozenset(
    {"DBEQ.BASIC", "DBEQ.PLUS", "DBEQ.MAX", "EQUS.PLUS", "EQUS.ALL", "EQUS.MINI", "XNAS.BASIC", "OPRA.PILLAR"}
)
_FINGERPRINT_SPAN = 1 << 16
#: The streams whose writer locks a run keeps (see _Run); also the most a batch may touch.
LOCKS_KEPT = 256
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# The fingerprint of an input that is never resumed (a stream, or --no-resume).
_NO_FINGERPRINT = "-"
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
    #: Records were stored behind the stream's projection, which now needs
    #: ``ledger project --rebuild STREAM`` (its position is marked so).
    needs_rebuild: bool = False


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
    #: Why the input could not be read to its end (what came before it is stored).
    error: str | None = None
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
    renames its one instrument's stream; ``progress`` gets the input bytes read so far. An
    input that cannot be read whole raises its error (after storing what came before)."""
    (summary,) = ingest_dbn_inputs(
        engine,
        [DbnInput(source, source_name, resumable)],
        stream=stream,
        batch_size=batch_size,
        progress=progress,
        stop=stop,
        raise_errors=True,
    )
    return summary


@dataclass(frozen=True)
class DbnInput:
    """One input of a run: a path or a binary stream; ``name`` names it in rejects and
    checkpoints (default: a path's absolute form, ``stdin`` for a stream); ``resumable``:
    whether a checkpoint left by a killed run is used (a regular file's only)."""

    source: str | Path | BinaryIO
    name: str | None = None
    resumable: bool = True

    def open(self) -> tuple[BinaryIO, str]:
        if isinstance(self.source, str | Path):
            path = Path(self.source)
            try:
                return path.open("rb"), self.name or str(path.resolve())
            except OSError as e:
                raise InputError(f"cannot read {self.source}: {e.strerror or e}") from None
        return self.source, self.name or "stdin"


def ingest_dbn_inputs(
    engine: Engine,
    inputs: Sequence[DbnInput],
    *,
    stream: str | None = None,
    batch_size: int = 50_000,
    progress: Callable[[int], None] | None = None,
    stop: StopReading | None = None,
    raise_errors: bool = False,
) -> list[DbnIngestSummary]:
    """Append several DBN inputs in one run, in the order given: one reading thread, one
    writer and its connection (and the streams' locks) for all of them, so the next input is
    decoded while the last batches of the one before commit. Each input keeps its own
    checkpoints, resume point, counts and summary; an input that cannot be read whole is
    named in its summary's ``error`` (``failure``: the exception) after what came before it
    is stored, and the run goes on with the next (``raise_errors``: the first such error is
    raised once the run has stored what it read). ``progress`` gets the bytes read of all
    inputs so far; ``stop`` ends the run after whole records (the summaries of the inputs
    not begun are not returned)."""
    if batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    stop = stop or StopReading()
    summaries: list[DbnIngestSummary] = []
    failures: list[InputError] = []
    names = _Names(stream)
    with prompt_handoffs(), engine.connect() as conn, engine.connect() as lookups:
        run = _Run(conn)
        writer = _Writer(run)
        writer.start()
        before = 0
        try:
            for given in inputs:
                if stop.is_set():
                    break
                handle, name = given.open()
                with handle:
                    regular = _is_regular(handle)
                    fingerprint = _fingerprint(handle) if given.resumable and regular else None
                    current = _Input(lookups, DbnIngestSummary(source=name), fingerprint)
                    summaries.append(current.summary)
                    damaged = _verify(handle, name) if regular else None
                    if damaged is not None:  # nothing of it is stored
                        current.summary.error = str(damaged)
                        failures.append(damaged)
                        continue

                    def moved(position: int, before: int = before) -> None:
                        if progress is not None:
                            progress(before + position)

                    counting = _Counting(handle, stop, moved)
                    failure = _read(current, counting, writer, names, batch_size, stop)
                    if failure is not None:
                        failures.append(failure)
                    before += counting.done
        except BaseException:
            writer.abandon()
            run.release()
            raise
        try:
            writer.close()
        finally:
            run.release()
    if raise_errors and failures:
        raise failures[0]
    return summaries


def _read(
    current: _Input,
    counting: _Counting,
    writer: _Writer,
    names: _Names,
    batch_size: int,
    stop: StopReading,
) -> InputError | None:
    """The reading side of one input: decode and key records into batches for the writer;
    the error that ended it early, if one did."""
    summary = current.summary
    reader = MboReader(counting, name=summary.source)  # type: ignore[arg-type]
    sequencer = Sequencer()
    resume = current.resume
    batch = _Batch(current)
    failure: InputError | None = None
    try:
        for chunk in reader.copy_lines(sequencer):
            if not summary.dataset:
                summary.dataset = reader.dataset
            rejects: dict[str, list[Reject]] = {}
            for reject in chunk.rejects:
                publisher = int.from_bytes(reject.raw[2:4], "little") if len(reject.raw) >= 4 else 0
                stream = names.of(reader.dataset, (reject.symbol, publisher), summary.source)
                if reject.record_no > resume.get(stream, 0):
                    rejects.setdefault(stream, []).append(Reject(reject.record_no, reject.raw.hex(), reject.reason))
            # Rule: a stream's records and rejects of one chunk go in one batch, whose
            # checkpoint for that stream then says "done up to the chunk's end"; a batch
            # that reaches LOCKS_KEPT streams is handed over between two streams.
            for key, rows in chunk.lines.items():
                stream = names.of(reader.dataset, key, summary.source)
                done = resume.get(stream, 0)
                if rows[0][1] <= done:  # stored by the killed run this one resumes
                    if summary.resumed_from_record is None or summary.resumed_from_record > done + 1:
                        summary.resumed_from_record = done + 1
                    rows = [row for row in rows if row[1] > done]
                if rows:
                    known = batch.rows.get(stream)
                    if known is None:
                        batch.rows[stream] = rows
                    else:
                        known.extend(rows)
                    batch.count += len(rows)
                if stream in rejects:
                    batch.add_rejects(stream, rejects.pop(stream))
                if len(batch.rows) + len(batch.rejects) >= LOCKS_KEPT:
                    batch.records = reader.records
                    writer.submit(batch)
                    batch = _Batch(current)
            for stream, found in rejects.items():  # streams with rejects alone in this chunk
                batch.add_rejects(stream, found)
            batch.records = reader.records
            if batch.count >= batch_size or len(batch.rows) + len(batch.rejects) >= LOCKS_KEPT:
                writer.submit(batch)
                batch = _Batch(current)
            if stop.is_set():
                break
    except InputError as e:  # DbnError, or --stream over more than one instrument
        if not (stop.is_set() and isinstance(e, DbnError)):  # a stop cuts the input short: not an error
            failure = e
            summary.error = str(e)
    summary.interrupted = stop.is_set()
    batch.records = reader.records
    batch.last = True
    batch.complete = failure is None and not summary.interrupted
    writer.submit(batch)
    return failure


class _Names:
    """The stream of each instrument (dataset, symbol, publisher) of a run's inputs.

    Rules: ``stream`` (``--stream``) names the one instrument of all the run's inputs: a
    second one, in the same input or another, is an error of the input it shows in. Else
    each instrument is :func:`stream_name`'s; two that would share a name (a symbol from
    two publishers in a dataset not known to have several) are an error too: one book per
    venue, never two venues' orders in one book."""

    def __init__(self, rename: str | None) -> None:
        self._rename = rename
        self._names: dict[tuple[str, str, int], str] = {}
        self._owners: dict[str, tuple[str, str, int]] = {}

    def of(self, dataset: str, key: tuple[str, int], source: str) -> str:
        instrument = (dataset, *key)
        name = self._names.get(instrument)
        if name is not None:
            return name
        name = self._rename if self._rename is not None else stream_name(dataset, *key)
        owner = self._owners.get(name)
        if owner is not None:
            (_, first, first_publisher), (_, symbol, publisher) = owner, instrument
            if self._rename is not None:
                raise InputError(
                    f"{source}: --stream {self._rename!r} names one stream, but the inputs hold more than one "
                    f"instrument ({first}, {symbol}); leave --stream out to give each its own stream"
                )
            raise InputError(
                f"{source}: symbol {symbol} of {dataset} comes from publishers {first_publisher} and {publisher}, "
                f"which would share stream {name!r}; ledger keeps one book per venue and does not know this "
                "dataset to have several: ingest one publisher's records"
            )
        self._names[instrument] = name
        self._owners[name] = instrument
        return name


class _Input:
    """One input of a run: its summary, where each of its streams resumes, and what the
    writer did for it per stream (counts, the killed run's counts it carries on from).

    Rule: a stream resumes after the record number of its own checkpoint for this input
    (all the stream's records up to it are stored), when the checkpoint is of this very
    file (fingerprint) and not complete; a stream without one (another ``--stream``, a
    stream the killed run never reached) takes every record. A stream input (stdin) or a
    run told not to resume reads everything; its checkpoints are written all the same,
    with no fingerprint, so that they never resume anything."""

    def __init__(self, lookups: Connection, summary: DbnIngestSummary, fingerprint: str | None) -> None:
        self.summary = summary
        self.fingerprint = fingerprint or _NO_FINGERPRINT
        self.started = time.perf_counter()
        #: stream name -> the last record number the killed run stored for it
        self.resume: dict[str, int] = {}
        #: stream name -> counts of the killed run resumed
        self._bases: dict[str, tuple[int, int, int]] = {}
        #: stream name -> stream id, the streams this input wrote
        self.streams: dict[str, int] = {}
        if fingerprint is not None:
            found = Checkpoints(lookups).of_source(summary.source)
            lookups.commit()
            for name, (_, cp) in found.items():
                if cp.fingerprint == fingerprint and not cp.complete:
                    self.resume[name] = cp.lines_done
                    self._bases[name] = (cp.events_stored, cp.duplicates, cp.rejects)

    def stream(self, name: str, stream_id: int) -> None:
        """The input writes ``name``."""
        if name not in self.streams:
            self.streams[name] = stream_id
            self.summary.streams.setdefault(name, StreamCounts(name))

    def base(self, name: str) -> tuple[int, int, int]:
        return self._bases.get(name, (0, 0, 0))


@dataclass
class _Batch:
    """Keyed records of one input waiting to be committed, per stream name, and where the
    input stands."""

    input: _Input
    rows: dict[str, list[tuple[int, int, bytes]]] = field(default_factory=dict)  # (seq, record no, COPY row)
    rejects: dict[str, list[Reject]] = field(default_factory=dict)
    count: int = 0
    records: int = 0  # records of the input read up to the batch's end
    complete: bool = False  # the input was read to its end

    def add_rejects(self, stream: str, rejects: list[Reject]) -> None:
        self.rejects.setdefault(stream, []).extend(rejects)
        self.count += len(rejects)

    last: bool = False  # the input's last batch


@dataclass
class _Stream:
    """The writer's view of one stream: its id, whether the run holds its writer lock, and
    then its highest stored seq."""

    stream_id: int
    high: int | None = None
    locked: bool = False


class _Run:
    """One run's connection (the writer's) and streams.

    Rule: a stream is written only under its writer lock, and its highest stored seq is read
    when the lock is taken. The run keeps the locks of the :data:`LOCKS_KEPT` streams it
    wrote last and gives back the others after each batch, and a batch touches at most
    LOCKS_KEPT streams, so it holds at most twice that many (a file of thousands of
    instruments would otherwise hold thousands of advisory locks, which share the server's
    lock table with every session); a stream written again is locked again, and its highest
    seq read again."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.streams: dict[str, _Stream] = {}
        self._recent: dict[str, None] = {}  # locked streams, least recently written first

    def _stream(self, name: str) -> _Stream:
        found = self.streams.get(name)
        conn = self.conn
        if found is None:
            with conn.begin():
                stream_id = Streams(conn).ensure(name, "databento")
            found = self.streams[name] = _Stream(stream_id)
        if not found.locked:
            if not Locks(conn).try_take(writer_lock(found.stream_id)):
                conn.commit()
                raise StreamError(f"stream {name!r} is being written by another ingest; wait for it to finish")
            found.locked = True
            _, found.high = EventLog(conn).seq_range(found.stream_id)
            conn.commit()
        self._recent.pop(name, None)
        self._recent[name] = None
        return found

    def _give_back_old_locks(self) -> None:
        """Keep the locks of the LOCKS_KEPT streams written last (see the class)."""
        while len(self._recent) > LOCKS_KEPT:
            name = next(iter(self._recent))
            del self._recent[name]
            state = self.streams[name]
            Locks(self.conn).give_back(writer_lock(state.stream_id))
            state.locked, state.high = False, None

    def commit(self, batch: _Batch) -> None:
        """Store one batch in one transaction (called from the writer thread only)."""
        conn, current = self.conn, batch.input
        summary = current.summary
        try:
            for name in {**batch.rows, **batch.rejects}:
                current.stream(name, self._stream(name).stream_id)
            with conn.begin():
                log = EventLog(conn)
                parts: list[tuple[int, Sequence[bytes]]] = []
                found: dict[str, tuple[Sequence[int], int, list[Reject]]] = {}
                for name, keyed in batch.rows.items():
                    state = self.streams[name]
                    seqs, rows, duplicates, conflicting = _new_rows(log, state, keyed)
                    parts.append((state.stream_id, rows))
                    found[name] = (seqs, duplicates, conflicting)
                log.append_many(parts, venue_fields=True)
                behind = self._outrun(found)
                if parts:
                    notify_appended(conn, [stream_id for stream_id, rows in parts if rows])
                for name in {**batch.rows, **batch.rejects}:
                    _, _, conflicting = found.get(name, ([], 0, []))
                    rejects = batch.rejects.get(name, []) + conflicting
                    Rejects(conn).add(self.streams[name].stream_id, summary.source, rejects)
                self._checkpoint(batch, found)
        except DatabaseError as e:
            raise DatabaseError(
                f"storing records up to {batch.records} of {summary.source} failed: {first_line(e)}. "
                "Run the same command again: it resumes after the last stored batch"
            ) from e
        summary.records = batch.records - (min(current.resume.values()) if current.resume else 0)
        for name, (seqs, duplicates, conflicting) in found.items():
            state = self.streams[name]
            if seqs:
                state.high = seqs[-1] if state.high is None else max(state.high, seqs[-1])
            _count(summary, summary.streams[name], len(seqs), duplicates, len(conflicting), 0)
        for name in behind:
            summary.streams[name].needs_rebuild = True
        for name, rejects in batch.rejects.items():
            _count(summary, summary.streams[name], 0, 0, 0, len(rejects))
        for name in {**batch.rows, **batch.rejects}:
            rejects = batch.rejects.get(name, []) + found.get(name, ([], 0, []))[2]
            for reject in rejects[: max(0, 20 - len(summary.reject_samples))]:
                summary.reject_samples.append({"stream": name, "record": reject.line_no, "reason": reject.reason})
        if batch.last:
            summary.seconds = time.perf_counter() - current.started
        self._give_back_old_locks()

    def _outrun(self, found: dict[str, tuple[Sequence[int], int, list[Reject]]]) -> list[str]:
        """In the batch's transaction: the streams whose projection this batch's records
        fall behind, their positions marked ``needs_rebuild`` (see the module). Only records
        at or below a stream's highest stored seq can: the projector never passes it."""
        behind = []
        for name, (seqs, _, _) in found.items():
            state = self.streams[name]
            below_head = bool(seqs) and state.high is not None and min(seqs) <= state.high
            if below_head and Positions(self.conn).outrun(state.stream_id, min(seqs), stream=name):
                behind.append(name)
        return behind

    def _checkpoint(self, batch: _Batch, found: dict[str, Any]) -> None:
        """The streams of the batch (of the whole input at its last batch): done up to the
        batch's last record. A stream the batch does not touch keeps its checkpoint: it has
        no records since, so resuming after it loses nothing."""
        current = batch.input
        checkpoints = Checkpoints(self.conn)
        names = current.streams if batch.last else {**batch.rows, **batch.rejects}
        for name in names:
            stream_id = current.streams[name]
            seqs, duplicates, conflicting = found.get(name, ([], 0, []))
            stored, dups, rejected = current.base(name)
            counts = current.summary.streams[name]
            rejects = len(batch.rejects.get(name, [])) + len(conflicting)
            checkpoints.put(
                stream_id,
                current.summary.source,
                Checkpoint(
                    batch.records,
                    0,
                    current.fingerprint,
                    batch.complete,
                    events_stored=stored + counts.events_stored + len(seqs),
                    duplicates=dups + counts.duplicates + duplicates,
                    rejects=rejected + counts.rejects + rejects,
                ),
            )

    def release(self) -> None:
        """Give the streams back; on a broken connection the server already dropped the locks."""
        recent, self._recent = self._recent, {}
        if recent:
            Locks(self.conn).give_back()


def _new_rows(
    log: EventLog, state: _Stream, keyed: list[tuple[int, int, bytes]]
) -> tuple[Sequence[int], Sequence[bytes], int, list[Reject]]:
    """One stream's rows of a batch, (seq, record number, COPY row) each, in seq order:
    (the seqs and rows to store, how many are duplicates, the conflicting duplicates as
    rejects). Rows above the highest stored seq are new without a look-up."""
    high = state.high
    if high is None or keyed[0][0] > high:
        all_seqs, _, all_rows = zip(*keyed, strict=True)
        return all_seqs, all_rows, 0, []
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


def _is_regular(handle: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(handle.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


def _verify(handle: BinaryIO, name: str) -> DbnError | None:
    """For a zstd file, read it whole once before anything is stored: zstd says that data
    is corrupt only at the end of a frame (its checksum), after the decoder has already
    given the records decompressed from it, so a damaged frame would otherwise have some of
    its records stored. The error, or None; the file is read again from its start after.
    Plain DBN carries no checksum: a damaged record there is an error at that record."""
    head = os.pread(handle.fileno(), 4, 0)
    if head != _ZSTD_MAGIC:
        return None
    try:
        MboReader(handle, name=name).check()
    except DbnError as e:
        return e
    finally:
        handle.seek(0)
    return None


def _fingerprint(handle: BinaryIO) -> str:
    """Identifies a regular file's content: its size, modification time and first and last
    64 KiB (a file repaired or replaced at the same path is not resumed)."""
    fd = handle.fileno()
    info = os.fstat(fd)
    digest = hashlib.sha256(f"{info.st_size} {info.st_mtime_ns}".encode())
    digest.update(os.pread(fd, _FINGERPRINT_SPAN, 0))
    digest.update(os.pread(fd, _FINGERPRINT_SPAN, max(0, info.st_size - _FINGERPRINT_SPAN)))
    return digest.hexdigest()
