"""Databento records stored behind a projection (docs/venues/databento.md, "Records stored
behind a projection"): the ESH4 day cut in two interleaving halves by time (records whose
ts_recv falls in an even millisecond, then those of an odd one), the second half ingested
after (or while) the first is projected. Its seqs fall below the stream's head, where the
projector sees no gap: the projection must be marked ``needs_rebuild``, stop, say so in
``ledger status``, and after ``ledger project --rebuild`` give the naive model's L1 over the
stored records in key order.

Interleavings are forced with hooks (the committer's write, the ingest's check of the
position) and waits on conditions (a session waiting for the position lock), not sleeps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import databento_dbn as dbn
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from ledger.cli import cli
from ledger.services.ingest.dbn_file import DbnIngestSummary, ingest_dbn
from ledger.services.project import run as project_run
from ledger.services.project.batch import project, rebuild
from ledger.services.project.run import ProjectOptions
from ledger.services.read.status import stream_status
from ledger.storage.locks import POSITION_LOCK_CLASS
from ledger.storage.projection import Positions
from tests.test_databento import ESH4_DAY, cut_records, naive_run, plain_dbn, units, write
from tests.test_ingest_dbn import ESH4, _events, _l1, _sid, _us

CHUNK = 5_000  # events per projector chunk: the committer writes a job per chunk


def _halves(tmp_path: Path, *, odd_upto: int | None = None, tail: int = 0) -> tuple[Path, Path, list[int]]:
    """Part A (records of an even millisecond of ts_recv) and part B (an odd one; with
    ``odd_upto``, only those with ts_recv at or below it) of the ESH4 day as plain DBN
    files, and the ts_recv of A's records in order. With ``tail``, the day's last records
    (at least ``tail``, from one a millisecond or more after the one before it, so that no
    key moves) are in neither but in ``c.dbn``, above both."""
    meta, raws = cut_records(plain_dbn(ESH4_DAY))
    if tail:
        cut = len(raws) - tail
        while _ts_recv(raws[cut]) - _ts_recv(raws[cut - 1]) < 1_000_000:
            cut -= 1
        write(tmp_path, "c.dbn", meta + b"".join(raws[cut:]))
        raws = raws[:cut]
    even: list[bytes] = []
    odd: list[bytes] = []
    times: list[int] = []
    for raw in raws:
        ts_recv = _ts_recv(raw)
        if (ts_recv // 1_000_000) % 2 == 0:
            even.append(raw)
            times.append(ts_recv)
        elif odd_upto is None or ts_recv <= odd_upto:
            odd.append(raw)
    assert even and odd
    return write(tmp_path, "a.dbn", meta + b"".join(even)), write(tmp_path, "b.dbn", meta + b"".join(odd)), times


def _ts_recv(raw: bytes) -> int:
    """The ts_recv field of an MBO record's bytes."""
    return int.from_bytes(raw[40:48], "little")


def _count_star(engine: Engine) -> int:
    with engine.connect() as conn:
        query = sa.text("SELECT count(*) FROM events WHERE stream_id = :s")
        return int(conn.execute(query, {"s": _sid(engine, ESH4)}).scalar_one())


def _status(engine: Engine) -> Any:
    with engine.connect() as conn:
        (row,) = stream_status(conn, ESH4)
    assert row.events == _count_star(engine)  # whichever way status counts, it is the log's count
    return row


def _assert_l1_is_the_naive_models(engine: Engine) -> None:
    """The projection's L1 rows are the naive model's over the stored records in key order."""
    raws = [bytes.fromhex(row[7]) for row in _events(engine, ESH4)]
    meta, _ = cut_records(plain_dbn(ESH4_DAY))
    decoder = dbn.DBNDecoder()
    records = decoder.write_and_decode(meta + b"".join(raws))[1:]
    assert len(records) == len(raws) == 68_792
    _, changes, _, _ = naive_run(records)
    expected = [(records[i].ts_recv // 1000, *top) for i, top in changes]
    got = [(_us(ts), units(bp), int(bs), units(ap), int(az)) for _, ts, bp, bs, ap, az in _l1(engine, ESH4)]
    assert len(got) == len(expected) > 25_000
    assert got == expected


def _project(engine: Engine) -> Any:
    (result,) = project(engine, streams=[ESH4], options=ProjectOptions(chunk=CHUNK, snapshot_every=None))
    return result


def _wait_for_position_lock_waiter(engine: Engine, timeout: float = 60.0) -> None:
    """Until a session waits for the stream's position lock (the other side is blocked)."""
    query = sa.text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = :c AND objid = :o"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    params = {"c": POSITION_LOCK_CLASS, "o": _sid(engine, ESH4)}
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while conn.execute(query, params).scalar_one() == 0:
            conn.rollback()
            assert time.monotonic() < deadline, "nobody waited for the position lock"
            time.sleep(0.005)


class _Ingest:
    """Part B ingested on a thread of its own, its summary (or error) kept."""

    def __init__(self, engine: Engine, path: Path) -> None:
        self.summary: DbnIngestSummary | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(engine, path), daemon=True)

    def _run(self, engine: Engine, path: Path) -> None:
        try:
            self.summary = ingest_dbn(engine, path)
        except BaseException as e:
            self.error = e

    def start(self) -> None:
        self._thread.start()

    def join(self) -> DbnIngestSummary:
        self._thread.join(120)
        assert not self._thread.is_alive() and self.error is None, self.error
        assert self.summary is not None
        return self.summary


def _on_job(monkeypatch: pytest.MonkeyPatch, number: int, hook: Callable[[], None]) -> None:
    """Run ``hook`` in the committer's thread before it writes its ``number``-th job."""
    real = project_run._write
    seen = 0

    def write(conn: Any, job: Any) -> str | None:
        nonlocal seen
        seen += 1
        if seen == number:
            hook()
        return real(conn, job)

    monkeypatch.setattr(project_run, "_write", write)


def test_ingest_after_projection_marks_it_and_rebuild_recovers(
    engine: Engine, db_env: dict[str, str], tmp_path: Path
) -> None:
    part_a, part_b, _ = _halves(tmp_path, tail=1_000)
    ingest_dbn(engine, part_a)
    assert _status(engine).lag_events is None
    assert _project(engine).status == "ok"
    assert _status(engine).projector_status == "ok"

    cli_ingest = CliRunner().invoke(cli, ["ingest", "dbn", str(part_b)], env=db_env)
    assert cli_ingest.exit_code == 0, cli_ingest.output
    assert f"Warning: stream {ESH4}: records were stored behind its projection" in cli_ingest.stderr
    assert f"ledger project --rebuild {ESH4}" in cli_ingest.stderr
    stored = _status(engine)
    assert stored.projector_status == "needs_rebuild"
    assert f"ledger project --rebuild {ESH4}" in (stored.projector_message or "")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM rejects")).scalar_one() == 0
    later = ingest_dbn(engine, tmp_path / "c.dbn")  # above the head: nothing more to mark
    assert later.events_stored >= 1_000 and (later.duplicates, later.rejects) == (0, 0)
    assert not later.streams[ESH4].needs_rebuild
    assert _status(engine).projector_status == "needs_rebuild"

    again = _project(engine)  # a marked projection applies nothing, not even the later records, and says why
    assert (again.status, again.events_applied) == ("needs_rebuild", 0)
    assert "--rebuild" in (again.message or "")
    cli_project = CliRunner().invoke(cli, ["project", ESH4], env=db_env)
    assert cli_project.exit_code == 3, cli_project.output
    assert "needs_rebuild" in cli_project.output
    cli_status = CliRunner().invoke(cli, ["status", ESH4], env=db_env)
    assert cli_status.exit_code == 0 and "needs_rebuild" in cli_status.output, cli_status.output

    cli_rebuild = CliRunner().invoke(cli, ["project", "--rebuild", ESH4], env=db_env)
    assert cli_rebuild.exit_code == 0, cli_rebuild.output
    after = _status(engine)
    assert (after.projector_status, after.lag_events) == ("ok", 0)
    _assert_l1_is_the_naive_models(engine)


def test_the_same_records_again_mark_nothing(engine: Engine, tmp_path: Path) -> None:
    part_a, part_b, _ = _halves(tmp_path)
    ingest_dbn(engine, part_a)
    ingest_dbn(engine, part_b)
    assert _project(engine).status == "ok"
    again = ingest_dbn(engine, part_b)  # duplicates only: nothing stored behind the projection
    assert (again.events_stored, again.streams[ESH4].needs_rebuild) == (0, False)
    assert _status(engine).projector_status == "ok"
    _assert_l1_is_the_naive_models(engine)


def test_ingest_holding_the_position_first_during_a_run(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ingest locks the position (jobs 1 and 2 written, job 2 past the lowest of its
    records) before the committer writes job 3: it marks the position, and the committer,
    waiting for the lock, then sees the mark."""
    part_a, part_b, _ = _halves(tmp_path)
    ingest_dbn(engine, part_a)
    ingest = _Ingest(engine, part_b)
    holds = threading.Event()
    real_outrun = Positions.outrun

    def outrun(self: Positions, stream_id: int, lowest_seq: int, *, stream: str | None = None) -> bool:
        marked = real_outrun(self, stream_id, lowest_seq, stream=stream)
        holds.set()
        _wait_for_position_lock_waiter(engine)  # the committer now waits for this commit
        return marked

    def start_ingest() -> None:
        ingest.start()
        assert holds.wait(120)

    monkeypatch.setattr(Positions, "outrun", outrun)
    _on_job(monkeypatch, 3, start_ingest)
    result = _project(engine)
    assert ingest.join().streams[ESH4].needs_rebuild
    assert result.status == "needs_rebuild" and "--rebuild" in (result.message or ""), result
    assert _status(engine).projector_status == "needs_rebuild"
    monkeypatch.undo()
    rebuild(engine, [ESH4])
    assert _project(engine).status == "ok"
    assert _status(engine).lag_events == 0
    _assert_l1_is_the_naive_models(engine)


def test_committer_holding_the_position_first_during_a_run(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committer locks the position for job 2 while the ingest of records below job 2's
    end waits: job 2 is written, the ingest then sees it and marks the position, and the
    committer's next write stops at the mark (job 3's range holds none of the new records,
    so only the mark can stop it)."""
    part_a, _, times = _halves(tmp_path)
    (tmp_path / "b").mkdir()
    _, part_b, _ = _halves(tmp_path / "b", odd_upto=times[2 * CHUNK - 1])  # within jobs 1 and 2
    ingest_dbn(engine, part_a)
    ingest = _Ingest(engine, part_b)
    real_fence = project_run.fence_projector
    fences = 0

    def fence(conn: Any, stream_id: int, *, owner: int | None, expected: int | None) -> None:
        nonlocal fences
        real_fence(conn, stream_id, owner=owner, expected=expected)
        fences += 1
        if fences == 2:  # job 2's position is locked: the ingest is let in, and waits
            ingest.start()
            _wait_for_position_lock_waiter(engine)

    monkeypatch.setattr(project_run, "fence_projector", fence)
    result = _project(engine)
    summary = ingest.join()
    assert summary.events_stored > 0 and summary.streams[ESH4].needs_rebuild
    assert result.status == "needs_rebuild" and "--rebuild" in (result.message or ""), result
    with engine.connect() as conn:
        position = Positions(conn).get(_sid(engine, ESH4))
    assert position is not None and position.events_applied == 2 * CHUNK  # job 3 was not written
    assert _status(engine).projector_status == "needs_rebuild"
    monkeypatch.undo()
    rebuild(engine, [ESH4])
    assert _project(engine).status == "ok"
    stored = _status(engine)
    assert (stored.events, stored.lag_events) == (len(times) + summary.events_stored, 0)


def test_the_committers_count_alone_catches_an_ingest_behind_the_reader(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the ingest's own check turned off, records stored after the reader read past
    them are found by the committer's count of the chunk's seq range."""
    part_a, part_b, _ = _halves(tmp_path)
    ingest_dbn(engine, part_a)
    monkeypatch.setattr(Positions, "outrun", lambda self, stream_id, lowest_seq, *, stream=None: False)
    stored: list[DbnIngestSummary] = []
    _on_job(monkeypatch, 2, lambda: stored.append(ingest_dbn(engine, part_b)))
    result = _project(engine)
    assert stored[0].events_stored > 0 and not stored[0].streams[ESH4].needs_rebuild
    assert result.status == "needs_rebuild", result
    assert "stored behind the projector while it ran" in (result.message or "")
    status = _status(engine)
    assert status.projector_status == "needs_rebuild"
    monkeypatch.undo()
    assert _project(engine).status == "needs_rebuild"  # the mark stays until a rebuild
    rebuild(engine, [ESH4])
    assert _project(engine).status == "ok"
    assert _status(engine).lag_events == 0
    _assert_l1_is_the_naive_models(engine)
