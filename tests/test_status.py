"""``ledger status``: what its duplicate count counts, said in text and JSON."""

from __future__ import annotations

import io
import json
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from benchmarks.generate_l3 import generate
from ledger.cli import cli


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_duplicates_are_the_last_run_of_each_source_and_say_so(
    db_env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    text = io.StringIO()
    generate(3000, 8, text)
    header, *rows = text.getvalue().splitlines(keepends=True)
    whole, part = tmp_path / "whole.csv", tmp_path / "part.csv"
    whole.write_text(header + "".join(rows), encoding="utf-8")
    part.write_text(header + "".join(rows[:1000]), encoding="utf-8")
    for _ in range(3):  # 0, then 3000 and 3000 duplicates: the last run counts 3000
        run("ingest", "csv", str(whole), "--stream", "csv:s")
    run("ingest", "csv", str(part), "--stream", "csv:s")  # another source: 1000 duplicates
    with engine.begin() as conn:  # a capture's checkpoint counts over all its runs
        sid = conn.execute(
            sa.text("INSERT INTO streams (name, source) VALUES ('coinbase:X-USD', 'coinbase') RETURNING id")
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO ingest_checkpoints (stream_id, source, lines_done, bytes_done, fingerprint, duplicates)"
                " VALUES (:s, 'coinbase', 10, 0, '', 7)"
            ),
            {"s": sid},
        )
    statuses = {s["stream"]: s for s in json.loads(run("status", "--json"))}
    assert statuses["csv:s"]["duplicates"] == 4000
    assert statuses["csv:s"]["duplicates_scope"] == "last_run_per_source"
    assert statuses["coinbase:X-USD"]["duplicates"] == 7
    assert statuses["coinbase:X-USD"]["duplicates_scope"] == "all_runs"
    out = run("status")
    assert "duplicates 4000 (in the last run of each of its 2 sources)" in out, out
    assert "duplicates 7 (over all runs)" in out, out


def test_a_sparse_streams_events_come_from_its_position_not_a_count_of_the_stream(engine: Engine) -> None:
    """Databento's seqs skip numbers: with its position ok and begun at the stream's first
    seq, status adds the events after the position to the position's count, rather than
    counting the whole stream; a doctored count shows through. Otherwise it counts them."""
    from ledger.services.ingest.dbn_file import ingest_dbn
    from ledger.services.project.batch import project
    from ledger.services.read.status import stream_status
    from tests.test_databento import TINY

    (glbx,) = [path for path in TINY if "GLBX" in path.name]
    ingest_dbn(engine, glbx)
    name = "databento:GLBX.MDP3:ESH1"

    def status() -> tuple[int, int | None]:
        with engine.connect() as conn:
            (row,) = stream_status(conn, name)
        return row.events, row.lag_events

    assert status() == (4, None)  # no position: counted
    (result,) = project(engine, streams=[name])
    assert result.status == "ok"
    assert status() == (4, 0)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE projector_positions SET events_applied = 1000, last_seq = last_seq - 1"))
    assert status() == (1001, 1)  # 1000 from the position, the one event after it counted
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE projector_positions SET status = 'needs_rebuild'"))
    assert status() == (4, 1)  # a stale position's count is not trusted
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE projector_positions SET status = 'ok', first_seq = first_seq + 1"))
    assert status() == (4, 1)  # nor one that began after the stream's first event
