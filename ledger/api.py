"""The library: :func:`open` a ledger database and call what the command line offers.

    import ledger

    with ledger.open() as lg:              # LEDGER_DATABASE_URL, else the embedded PostgreSQL
        lg.ingest_csv("l3_data_v3.1.csv")  # stream csv:l3_data_v3.1
        lg.project()
        view = lg.book("csv:l3_data_v3.1", at_seq=1627942268920660000)
        print(view.book.top())
        for row in lg.l1_rows("csv:l3_data_v3.1", end=1627942268920660000):
            print(row.seq, row.bid_price, row.ask_price)

Every method runs in the calling thread and returns plain data (dataclasses, named tuples,
lists). Errors are :class:`~ledger.errors.LedgerError`; the command line turns them into
one-line messages and exit codes.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from ledger.errors import InputError, StreamError

if TYPE_CHECKING:
    import pyarrow as pa
    from sqlalchemy.engine import Engine

    from ledger.services.compact import PeriodicCompaction
    from ledger.services.ingest.csv_file import IngestSummary
    from ledger.services.ingest.dbn_file import DbnIngestSummary
    from ledger.services.project.run import ProjectSummary
    from ledger.services.read.book import BookView
    from ledger.services.read.status import StreamStatus
    from ledger.services.read.watch import TopView
    from ledger.storage.blocks import Folded
    from ledger.storage.database import Database
    from ledger.storage.projection import SnapshotInfo
    from ledger.storage.query import QueryResult
    from ledger.venues.coinbase.options import ApiCredentials, CaptureSummary, CoinbaseOptions

__all__ = ["L1Record", "Ledger", "ProjectSettings", "open"]


class L1Record(NamedTuple):
    """One best bid/offer change: the seq and time of the event that made it, and the top."""

    seq: int
    time: datetime | None
    bid_price: Any
    bid_size: Any
    ask_price: Any
    ask_size: Any


@dataclass(frozen=True)
class ProjectSettings:
    """How :meth:`Ledger.project` runs (the options of ``ledger project``)."""

    skip_gaps: bool = False
    error_threshold: int | None = None
    from_snapshot: bool = True
    snapshot_every: int | None = 250_000
    snapshot_interval: float | None = None


def open(url: str | None = None, *, home: str | Path | None = None, migrate: bool = True) -> Ledger:
    """Open the ledger database: ``url`` (a SQLAlchemy URL, ``postgresql+psycopg://...``),
    else ``LEDGER_DATABASE_URL``, else the embedded PostgreSQL under ``home`` (or
    ``LEDGER_HOME``), started now and stopped by :meth:`Ledger.close` when no other ledger
    process uses it. Migrates the schema when ``migrate``."""
    from ledger.settings import Settings, parse_database_url
    from ledger.storage.database import open_database

    settings = Settings.from_env()
    if url is not None:
        settings = Settings(database_url=parse_database_url(url), home=settings.home)
    if home is not None:
        settings = Settings(database_url=settings.database_url, home=Path(home))
    stack = contextlib.ExitStack()
    database = stack.enter_context(open_database(settings, migrate=migrate))
    return Ledger(database, stack)


class Ledger:
    """An open ledger database (see :func:`open`). Use it as a context manager, or call
    :meth:`close` when done."""

    def __init__(self, database: Database, stack: contextlib.ExitStack[Any]) -> None:
        self._database = database
        self._stack = stack

    # -- the connection ------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for queries of your own (read-only is wise)."""
        return self._database.engine

    @property
    def url(self) -> str:
        """The database in use, password hidden."""
        return self._database.display_url

    @property
    def embedded(self) -> bool:
        return self._database.embedded

    def close(self) -> None:
        """Dispose of the connections; stop the embedded PostgreSQL if this was its last user."""
        self._stack.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- ingest --------------------------------------------------------------------------

    def ingest_csv(
        self,
        source: str | Path | IO[bytes],
        *,
        stream: str | None = None,
        source_name: str | None = None,
        batch_size: int = 25_000,
        flush_interval: float | None = None,
        resume: bool = True,
        progress: Callable[[int], None] | None = None,
        stop: Any = None,
    ) -> IngestSummary:
        """Append an L3 CSV file (a path, ``"-"`` for stdin, or a binary file object) to
        ``stream`` (default ``csv:<file stem>``; ``csv:stdin`` for a file object). Idempotent
        and resumable for files (``source_name`` names a file object in rejects and
        checkpoints); ``progress`` gets the bytes read so far; ``stop`` (a
        ``services.ingest.csv_file.StopReading``) ends it cleanly after whole lines."""
        import sys

        from ledger.services.ingest.csv_file import ingest_csv

        options: dict[str, Any] = {
            "batch_size": batch_size,
            "flush_interval": flush_interval,
            "progress": progress,
            "stop": stop,
        }
        if isinstance(source, str | Path) and str(source) != "-":
            path = Path(source)
            try:
                fp: IO[bytes] = path.open("rb")
            except OSError as e:
                raise InputError(f"cannot read {source}: {e.strerror or e}") from None
            with fp:
                return ingest_csv(
                    self.engine,
                    fp,  # type: ignore[arg-type]
                    stream=stream or "csv:" + path.stem,
                    source=source_name or str(path.resolve()),
                    resumable=resume,
                    **options,
                )
        fp = sys.stdin.buffer if isinstance(source, str | Path) else source
        name = source_name or "stdin"
        return ingest_csv(
            self.engine,
            fp,  # type: ignore[arg-type]
            stream=stream or "csv:stdin",
            source=name,
            resumable=resume and name != "stdin",
            **options,
        )

    def ingest_csv_files(
        self,
        files: Sequence[str | Path],
        *,
        stream: str | None = None,
        batch_size: int = 25_000,
        flush_interval: float | None = None,
        resume: bool = True,
        progress: Callable[[int], None] | None = None,
        stop: Any = None,
    ) -> builtins.list[IngestSummary]:
        """Append several L3 CSV files in one run (one process, one writer, two connections):
        paths, folders (their ``.csv`` files) and globs that ledger expands (:meth:`csv_files`
        says which files, in which order, to which stream). Each file is its own stream,
        ``csv:<file stem>``, unless ``stream`` names one for all (appended in that order);
        each keeps its checkpoint, resume point, duplicates, rejects and summary. A file that
        cannot be read is named in its summary's ``error`` and the others are ingested
        (``services.ingest.csv_file.ingest_csv_files``); ``progress`` gets the bytes read
        of all files so far; ``stop`` as for :meth:`ingest_csv`."""
        from ledger.services.ingest.csv_file import CsvInput, ingest_csv_files

        inputs = [
            CsvInput(name, str(path.resolve()), path=path, resumable=resume, size=_size(path))
            for path, name in self.csv_files(files, stream=stream)
        ]
        return ingest_csv_files(
            self.engine, inputs, batch_size=batch_size, flush_interval=flush_interval, progress=progress, stop=stop
        )

    @staticmethod
    def csv_files(files: Sequence[str | Path], *, stream: str | None = None) -> builtins.list[tuple[Path, str]]:
        """The (file, stream) pairs :meth:`ingest_csv_files` reads, in order: files as named,
        a folder's ``.csv`` files and a glob's files in name order, each file once (rules:
        ``services.ingest.inputs``). An ``InputError`` before anything is read for a folder
        without one, a glob matching nothing, or two files that would give one stream."""
        from ledger.services.ingest.inputs import expand, streams_of

        paths = expand([str(f) for f in files], ".csv")
        return list(zip(paths, streams_of(paths, "csv", stream), strict=True))

    def ingest_dbn(
        self,
        sources: str | Path | IO[bytes] | Sequence[str | Path],
        *,
        stream: str | None = None,
        batch_size: int = 50_000,
        resume: bool = True,
        progress: Callable[[int], None] | None = None,
        stop: Any = None,
    ) -> builtins.list[DbnIngestSummary]:
        """Append Databento MBO files to their streams (``databento:<dataset>:<symbol>``, or
        ``stream`` for inputs of one instrument each): a path, a folder, a glob, several of
        them (read in the time order of their metadata, in one run), ``"-"`` for stdin or a
        binary file object. Idempotent and resumable (``services.ingest.dbn_file``). A
        summary per input; one that cannot be read whole is named in its ``error`` (what came
        before stored) and the others are ingested. ``progress`` gets the bytes read of all
        inputs so far; ``stop`` (:meth:`stop_request`) ends it cleanly after whole records."""
        import sys

        from ledger.services.ingest.dbn_file import DbnInput, dbn_inputs, ingest_dbn_inputs

        if not isinstance(sources, str | Path) and not isinstance(sources, Sequence):  # a file object
            stream_in: Any = sources
            inputs = [DbnInput(stream_in, None, resumable=False)]
        elif isinstance(sources, str | Path) and str(sources) == "-":
            inputs = [DbnInput(sys.stdin.buffer, "stdin", resumable=False)]
        else:
            paths = dbn_inputs([sources] if isinstance(sources, str | Path) else sources)
            inputs = [DbnInput(path, None, resumable=resume) for path in paths]
        return ingest_dbn_inputs(
            self.engine, inputs, stream=stream, batch_size=batch_size, progress=progress, stop=stop
        )

    def capture(
        self,
        options: CoinbaseOptions,
        credentials: ApiCredentials | None = None,
        *,
        on_summary: Callable[[CaptureSummary], None] | None = None,
    ) -> CaptureSummary:
        """Capture Coinbase Exchange's live feed (until the options' duration or message
        count, or SIGINT/SIGTERM); ``credentials`` default to ``LEDGER_COINBASE_*``;
        ``on_summary`` gets the periodic summaries."""
        from ledger.venues.coinbase.capture import Capture, capture
        from ledger.venues.coinbase.options import ApiCredentials

        creds = credentials or ApiCredentials.from_env()
        return capture(Capture(self.engine, options, creds, on_summary=on_summary))

    def run_live(
        self,
        options: CoinbaseOptions,
        credentials: ApiCredentials | None = None,
        *,
        settings: ProjectSettings | None = None,
        on_summary: Callable[[CaptureSummary], None] | None = None,
    ) -> tuple[CaptureSummary, builtins.list[ProjectSummary]]:
        """Capture and project in one process (``ledger run``), until the capture stops."""
        from ledger.services.project.live import run_live
        from ledger.venues.coinbase.options import ApiCredentials

        creds = credentials or ApiCredentials.from_env()
        return run_live(self.engine, options, creds, self._options(settings), on_summary=on_summary)

    @staticmethod
    def stop_request() -> Any:
        """A stop request for :meth:`ingest_csv` and :meth:`ingest_dbn` (``stop=``): its
        ``request()`` (safe from a signal handler) ends the ingest cleanly after whole lines or
        records, cutting a blocked read short."""
        from ledger.services.ingest.csv_file import StopReading

        return StopReading()

    # -- project -------------------------------------------------------------------------

    def project(
        self,
        streams: Sequence[str] | None = None,
        *,
        rebuild: bool = False,
        settings: ProjectSettings | None = None,
        progress: Callable[[str, int], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> list[ProjectSummary]:
        """Bring the projection of ``streams`` (default: all) to the head of their logs:
        L1 rows, book snapshots and positions. ``rebuild`` drops each projection first;
        ``stop`` is asked between chunks (a clean stop: what was applied is committed)."""
        from ledger.services.project.batch import project

        if rebuild:
            self.drop_projection(streams)
        chosen = list(streams) if streams else None
        return project(self.engine, streams=chosen, options=self._options(settings), progress=progress, stop=stop)

    def drop_projection(self, streams: Sequence[str] | None = None) -> builtins.list[str]:
        """Drop the L1 rows, book snapshots and position of ``streams`` (default: all); the
        names of the streams dropped."""
        from ledger.services.project.batch import rebuild

        return rebuild(self.engine, list(streams) if streams else None)

    def follow(
        self,
        streams: Sequence[str] | None = None,
        *,
        stop: threading.Event,
        poll: float = 1.0,
        settings: ProjectSettings | None = None,
    ) -> list[ProjectSummary]:
        """Project as ingest appends, until ``stop`` is set (see ``ledger project --follow``)."""
        from ledger.services.project.follow import FollowOptions, follow

        options = FollowOptions(streams=tuple(streams or ()), poll=poll, project=self._options(settings))
        return follow(self.engine, options, stop)

    @staticmethod
    def _options(settings: ProjectSettings | None) -> Any:
        from ledger.services.project.run import ProjectOptions

        s = settings or ProjectSettings()
        return ProjectOptions(
            skip_gaps=s.skip_gaps,
            error_threshold=s.error_threshold,
            from_snapshot=s.from_snapshot,
            snapshot_every=s.snapshot_every,
            snapshot_interval=s.snapshot_interval,
        )

    # -- read ----------------------------------------------------------------------------

    def streams(self) -> builtins.list[str]:
        """Every stream's name."""
        from ledger.storage.log import Streams

        with self.engine.connect() as conn:
            return Streams(conn).names()

    def book(self, stream: str, *, at_seq: int | None = None, at_time: datetime | None = None) -> BookView:
        """The book of ``stream`` now, after the event at ``at_seq``, or after the last event
        at or before ``at_time`` (refused, :class:`~ledger.errors.UnknowableBook`, inside a
        gap the log cannot know)."""
        from ledger.services.read.book import book_at

        if at_seq is not None and at_time is not None:
            raise StreamError("give at_seq or at_time, not both")
        return book_at(self.engine, stream, at_seq=at_seq, at_time=at_time)

    def l1_rows(
        self, stream: str, *, start: int | datetime | None = None, end: int | datetime | None = None
    ) -> Iterator[L1Record]:
        """The L1 rows of ``stream`` in seq order, from ``start`` through ``end`` (each a seq
        or a time, inclusive), read in chunks."""
        from ledger.storage.log import Streams
        from ledger.storage.research import L1Range

        with self.engine.connect() as conn:
            stream_id = Streams(conn).get(stream)
            for rows in L1Range(conn, stream_id, start=start, end=end).chunks(50_000):
                for row in rows:
                    yield L1Record(*row)

    def l1(self, stream: str, start: int | datetime | None = None, end: int | datetime | None = None) -> pa.Table:
        """``stream``'s L1 rows from ``start`` through ``end`` (seqs or times, inclusive) as a
        ``pyarrow.Table``: seq, time (UTC timestamps), bid_price, bid_size, ask_price,
        ask_size (exact Arrow decimals). ``.to_pandas()`` and ``polars.from_arrow()`` take it."""
        import pyarrow as pa

        from ledger.services.read.research import l1_batches

        schema, batches = l1_batches(self.engine, stream, start=start, end=end)
        return pa.Table.from_batches(list(batches), schema=schema)

    def events(
        self, stream: str, start: int | datetime | None = None, end: int | datetime | None = None, *, raw: bool = False
    ) -> pa.Table:
        """``stream``'s parsed events (the log) from ``start`` through ``end`` as a
        ``pyarrow.Table``: seq, time, kind, order_id, side, price, size (and raw)."""
        import pyarrow as pa

        from ledger.services.read.research import events_batches

        schema, batches = events_batches(self.engine, stream, start=start, end=end, raw=raw)
        return pa.Table.from_batches(list(batches), schema=schema)

    def l2(
        self,
        stream: str,
        depth: int = 10,
        *,
        every: str | timedelta | None = None,
        on_change: bool = False,
        layout: str = "wide",
        start: int | datetime | None = None,
        end: int | datetime | None = None,
    ) -> pa.Table:
        """The top ``depth`` levels per side (price, size, order count) of ``stream``'s book,
        sampled ``every`` (a duration: ``"1s"``, ``"250ms"``, a timedelta) of event time
        and/or ``on_change`` of those levels, from ``start`` through ``end`` (seqs or times),
        as a ``pyarrow.Table``: one row per sample in the ``wide`` layout (time, seq,
        bid_price_1, bid_size_1, bid_orders_1 .. ask_orders_N), 2N rows per sample in the
        ``long`` one (time, seq, side, level, price, size, orders). A sample at time T is the
        book after the last event at or before T (see :mod:`ledger.services.read.depth`)."""
        import pyarrow as pa

        from ledger.services.read.depth import depth_batches

        schema, batches = depth_batches(
            self.engine, stream, depth=depth, every=every, on_change=on_change, layout=layout, start=start, end=end
        )
        return pa.Table.from_batches(list(batches), schema=schema)

    def trades(self, stream: str, start: int | datetime | None = None, end: int | datetime | None = None) -> pa.Table:
        """Every execution of ``stream`` from ``start`` through ``end`` (seqs or times) as a
        ``pyarrow.Table``: seq, time, price, size, aggressor (B, S or null), maker_id,
        taker_id (null where the venue does not say; see :mod:`ledger.services.read.trades`)."""
        import pyarrow as pa

        from ledger.services.read.trades import trades_batches

        schema, batches = trades_batches(self.engine, stream, start=start, end=end)
        return pa.Table.from_batches(list(batches), schema=schema)

    def export_parquet(
        self,
        what: str,
        stream: str,
        out: str | Path | IO[bytes],
        *,
        start: int | datetime | None = None,
        end: int | datetime | None = None,
        **options: Any,
    ) -> int:
        """Write ``stream``'s ``l1`` rows, ``l2`` samples, ``trades`` or ``events`` from
        ``start`` through ``end`` to a Parquet file (zstd, a row group per batch of 100,000
        rows, 10,000 L2 samples, so memory stays bounded; the stream, its venue and the ledger
        version in the file's metadata); the number of rows. ``options`` go to :meth:`l2`
        (depth, every, on_change, layout) or :meth:`events` (raw)."""
        from ledger.services.read.research import write_parquet

        schema, batches = self._batches(what, stream, start, end, options)
        return write_parquet(schema, batches, out)

    def export_csv(
        self,
        what: str,
        stream: str,
        out: IO[bytes],
        *,
        start: int | datetime | None = None,
        end: int | datetime | None = None,
        **options: Any,
    ) -> int:
        """Write the same as :meth:`export_parquet` as CSV to ``out`` (``l1``: the L1 CSV
        format; the others: a header of the column names, numbers in their shortest exact
        form, ISO-8601 UTC times); the number of rows."""
        from ledger.services.read.research import write_csv

        if what == "l1":
            return self.export_l1_csv(stream, out, start=start, end=end)
        schema, batches = self._batches(what, stream, start, end, options)
        return write_csv(schema, batches, out)

    def _batches(
        self, what: str, stream: str, start: int | datetime | None, end: int | datetime | None, options: dict[str, Any]
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        from ledger.services.read.depth import depth_batches
        from ledger.services.read.research import events_batches, l1_batches
        from ledger.services.read.trades import trades_batches

        makers: dict[str, Callable[..., tuple[pa.Schema, Iterator[pa.RecordBatch]]]] = {
            "l1": l1_batches,
            "l2": depth_batches,
            "trades": trades_batches,
            "events": events_batches,
        }
        make = makers.get(what)
        if make is None:
            raise StreamError(f"no export named {what!r} ({', '.join(makers)})")
        return make(self.engine, stream, start=start, end=end, **options)

    def export_l1_csv(
        self, stream: str, out: IO[bytes], *, start: int | datetime | None = None, end: int | datetime | None = None
    ) -> int:
        """Write the L1 rows of ``stream`` from ``start`` through ``end`` (seqs or times,
        inclusive; None: the whole stream) to ``out`` in the L1 CSV format; the row count."""
        from ledger.storage.log import Streams
        from ledger.storage.projection import L1Rows

        with self.engine.connect() as conn:
            return L1Rows(conn).export_csv(Streams(conn).get(stream), out, start=start, end=end)

    def status(self, stream: str | None = None) -> builtins.list[StreamStatus]:
        """Per stream: events, seq range, gaps, duplicates, rejects, projector position, lag."""
        from ledger.services.read.status import stream_status

        with self.engine.connect() as conn:
            return stream_status(conn, stream)

    def gaps(self, stream: str, *, include_closed: bool = False) -> builtins.list[dict[str, Any]]:
        """The runs of seqs missing from ``stream``'s log (open ones; all with ``include_closed``)."""
        from ledger.services.read.status import gap_rows

        with self.engine.connect() as conn:
            return gap_rows(conn, stream, include_closed=include_closed)

    def rejects(self, stream: str, *, limit: int | None = None) -> builtins.list[dict[str, Any]]:
        """Input that could not be stored, with its source, line and reason."""
        from ledger.services.read.status import reject_rows

        with self.engine.connect() as conn:
            return reject_rows(conn, stream, limit=limit)

    def prune_snapshots(
        self, streams: Sequence[str] | None = None, *, keep: int, keep_every: int | None = None
    ) -> dict[str, int]:
        """Delete old book snapshots of ``streams`` (default: all): keep the newest ``keep``
        and, of the older ones, every ``keep_every``-th. How many went, per stream."""
        from ledger.storage.projection import Snapshots

        with self.engine.begin() as conn:
            return {
                name: Snapshots(conn).prune(sid, keep=keep, keep_every=keep_every)
                for name, sid in _stream_ids(conn, streams).items()
            }

    def compact(
        self,
        streams: Sequence[str] | None = None,
        *,
        upto: int | None = None,
        start: Callable[[str, int], None] | None = None,
        progress: Callable[[str, int], None] | None = None,
    ) -> dict[str, Folded]:
        """Fold the older events of ``streams`` (default: all) into compressed blocks
        (``ledger db compact``): those stored as rows above the stream's highest block and at
        or below ``upto`` (default: the projector's position, or the stream's highest seq
        when it has no projection). Every reader sees the same events, byte for byte,
        before and after. What it did, per stream; ``start`` gets (stream, events to fold)
        before a stream's first batch, ``progress`` (stream, events) per committed batch."""
        from ledger.storage.blocks import compact_stream

        with self.engine.connect() as conn:
            ids = _stream_ids(conn, streams)
        done: dict[str, Folded] = {}
        for name, sid in ids.items():
            done[name] = compact_stream(
                self.engine,
                sid,
                upto=upto,
                start=None if start is None else functools.partial(start, name),
                progress=None if progress is None else functools.partial(progress, name),
            )
        return done

    def compacting(self, streams: Sequence[str] | None, every: float) -> PeriodicCompaction:
        """A context manager: while it is entered, ``streams`` (those that exist; None or
        empty: every stream, as there are at each round) are folded into blocks every
        ``every`` seconds in a background thread, as :meth:`compact` does (``--compact-every``
        of ``ledger ingest coinbase``, ``ledger run`` and ``ledger project --follow``). A fold
        that fails is logged and tried again at the next interval."""
        from ledger.services.compact import PeriodicCompaction

        return PeriodicCompaction(self.engine, streams, every)

    def snapshots(self, stream: str) -> builtins.list[SnapshotInfo]:
        """The projector's saved books of ``stream``, newest first."""
        from ledger.storage.log import Streams
        from ledger.storage.projection import Snapshots

        with self.engine.connect() as conn:
            return Snapshots(conn).infos(Streams(conn).get(stream))

    def sql(self, query: str, params: Sequence[Any] | None = None, *, write: bool = False) -> QueryResult:
        """Run a SQL query in a transaction of its own (read-only unless ``write``); the
        result's ``rows`` stream as they are read (``ledger sql``)."""
        from ledger.storage.query import run_query

        return run_query(self.engine, query, params, write=write)

    def watch(
        self,
        stream: str,
        *,
        depth: int = 10,
        max_fps: float = 10.0,
        stop: Callable[[], bool] | None = None,
        say: Callable[[str], None] | None = None,
    ) -> Iterator[TopView]:
        """The top ``depth`` levels of ``stream`` each time they change, as ingest appends,
        until ``stop`` says so (or the caller stops iterating). A stream that does not exist
        yet is waited for; ``say`` hears what it is doing meanwhile."""
        from ledger.services.read.watch import follow_top

        return follow_top(
            self.engine, stream, depth=depth, max_fps=max_fps, stop=stop or (lambda: False), say=say or (lambda _: None)
        )

    # -- the database --------------------------------------------------------------------

    def schema_revision(self) -> tuple[str | None, str]:
        """The schema's migration revision, and the newest this ledger knows."""
        from ledger.storage.database import current_revision, head_revision

        with self.engine.connect() as conn:
            return current_revision(conn), head_revision()

    def libpq(self) -> tuple[str, dict[str, str]]:
        """A URL psql and other libpq tools accept (without the password), and the
        environment that hands them the password (PGPASSWORD), if there is one."""
        url = self._database.url
        plain = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
        return plain, ({"PGPASSWORD": str(url.password)} if url.password else {})


def _stream_ids(conn: Any, streams: Sequence[str] | None) -> dict[str, int]:
    """Name -> id of ``streams`` in the order given, or of every stream by name (None or
    empty); an unknown name is an error that lists the known ones."""
    from ledger.storage.log import Streams

    known = Streams(conn)
    if streams:
        return {name: known.get(name) for name in streams}
    return {name: sid for sid, name, _ in sorted(known.all(), key=lambda row: row[1])}


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None  # its error comes when its turn does
