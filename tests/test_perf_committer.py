"""A projection whose committer falls behind (its writes slowed here) holds the next chunks'
writes back and commits them together (StreamRun._submit): the same L1 rows, snapshots (at
the same seqs, the same bytes) and final position as a run whose every chunk is its own
transaction, in fewer transactions; a rebuild from a held run's snapshot goes on the same."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ledger.services.ingest.dbn_file import ingest_dbn
from ledger.services.project import run as project_run
from ledger.services.project.batch import project, rebuild
from ledger.services.project.run import ProjectOptions
from tests.test_databento import ESH4_DAY
from tests.test_ingest_dbn import ESH4, _l1

OPTIONS = ProjectOptions(chunk=2_000, snapshot_every=9_000)


def _stored(engine: Engine) -> tuple[Any, ...]:
    with engine.connect() as conn:
        snapshots = conn.execute(
            sa.text("SELECT seq, md5(payload), order_count FROM book_snapshots ORDER BY seq")
        ).all()
        (position,) = conn.execute(
            sa.text(
                "SELECT first_seq, last_seq, events_applied, l1_rows, anomalies, status, maybe_bad"
                " FROM projector_positions"
            )
        ).all()
    return _l1(engine, ESH4), [tuple(s) for s in snapshots], tuple(position)


def test_held_chunks_write_what_one_chunk_a_job_writes(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    ingest_dbn(engine, ESH4_DAY)
    monkeypatch.setattr(project_run, "_HOLD_CHUNKS", 1)  # the reference: each chunk its own job
    (plain,) = project(engine, streams=[ESH4], options=OPTIONS)
    expected = _stored(engine)
    assert plain.snapshots == 6 and len(expected[0]) > 20_000
    monkeypatch.setattr(project_run, "_HOLD_CHUNKS", 8)

    jobs: list[Any] = []
    write = project_run._write

    def slow_write(conn: Any, job: Any) -> str | None:
        time.sleep(0.05)  # a database that keeps the committer waiting
        jobs.append((job.expected, job.pos.last_seq, len(job.out), job.snapshot is not None))
        return write(conn, job)

    monkeypatch.setattr(project_run, "_write", slow_write)
    rebuild(engine, [ESH4])
    (held,) = project(engine, streams=[ESH4], options=OPTIONS)
    assert _stored(engine) == expected
    assert (held.events_applied, held.l1_rows, held.snapshots) == (plain.events_applied, plain.l1_rows, 6)
    chunks = -(-plain.events_applied // OPTIONS.chunk)
    assert len(jobs) < chunks  # chunks were held and written together
    assert sum(n for _, _, n, _ in jobs) == plain.l1_rows
    # Each job follows on from the one before it: the committer's fence and count hold.
    assert all(jobs[i][0] == jobs[i - 1][1] for i in range(1, len(jobs)))
