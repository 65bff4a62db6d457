"""Cold history in blocks (``ledger db compact``, ledger.storage.blocks): the same events,
byte for byte, through every reader; projections equal the reference L1 file; at most 110
bytes an event for the CSV sample and for Coinbase messages; late events, resumed and
concurrent folds, and the migration back."""

from __future__ import annotations

import csv
import io
import itertools
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import URL, Engine

import ledger
from benchmarks.bench_bytes import coinbase_input
from ledger.api import ProjectSettings
from ledger.cli import cli
from ledger.storage.blocks import compact_stream
from ledger.storage.database import downgrade, upgrade
from ledger.storage.log import EventLog, Streams
from tests.children import track
from tests.conftest import V31
from tests.test_fuzz_csv import fuzzed_sample

EXPECTED_L1 = V31.parent / "expected_l1_data_v3.1.csv"
REAL_COINBASE = Path(__file__).parent / "data" / "coinbase" / "full_channel_2017-06-25_excerpt.jsonl"
STREAM = "csv:sample"


def _url(database_url: URL) -> str:
    return database_url.render_as_string(hide_password=False)


def _ingest_sample(database_url: URL, data: bytes | None = None) -> None:
    with ledger.open(_url(database_url)) as lg:
        lg.ingest_csv(io.BytesIO(V31.read_bytes() if data is None else data), stream=STREAM, source_name="v3.1")


def _everything(engine: Engine) -> list[tuple[Any, ...]]:
    """Every event as the events view shows it, with its raw input: the reference to keep."""
    with engine.connect() as conn:
        return [
            tuple(r) for r in conn.execute(sa.text("SELECT e.*, ledger_raw(e) FROM events e ORDER BY stream_id, seq"))
        ]


def _read(engine: Engine, stream: str, **kw: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        sid = Streams(conn).get(stream)
        return [tuple(r) for rows in EventLog(conn).read_chunks(sid, **kw) for r in rows]


def _l1_csv(database_url: URL, stream: str) -> bytes:
    out = io.BytesIO()
    with ledger.open(_url(database_url)) as lg:
        lg.export_l1_csv(stream, out)
    return out.getvalue()


def _bytes_per_event(engine: Engine) -> float:
    """The event log's bytes (rows and blocks, with their indexes and TOAST) over its events,
    after giving the space of folded rows back."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(sa.text("VACUUM FULL event_rows"))
        conn.execute(sa.text("VACUUM event_blocks"))
        size = conn.execute(
            sa.text("SELECT pg_total_relation_size('event_rows') + pg_total_relation_size('event_blocks')")
        ).scalar_one()
        count = conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
    return size / count


def test_the_sample_folded_reads_and_projects_as_before(database_url: URL, engine: Engine) -> None:
    _ingest_sample(database_url)
    with ledger.open(_url(database_url)) as lg:
        lg.project([STREAM])
        at = 1627942268920670000
        book_before = list(lg.book(STREAM, at_seq=at).book.iter_orders())
        assert book_before
    before = _everything(engine)
    chunks_before = _read(engine, STREAM, chunk=999)
    with engine.connect() as conn:
        sid = Streams(conn).get(STREAM)
    folded = compact_stream(engine, sid, block_events=1000)
    assert (folded.events, folded.blocks, folded.left) == (34_247, 35, 0)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM event_rows")).scalar_one() == 0
        sizes = conn.execute(sa.text("SELECT n_events FROM event_blocks ORDER BY first_seq")).scalars().all()
    assert sizes == [1000] * 34 + [247]
    assert _everything(engine) == before  # the view, raw included, byte for byte
    for chunk in (1, 999, 1000, 1001, 20_000):  # chunks across, inside and over the blocks
        assert _read(engine, STREAM, chunk=chunk) == chunks_before
    with ledger.open(_url(database_url)) as lg:
        assert list(lg.book(STREAM, at_seq=at).book.iter_orders()) == book_before
        lg.project([STREAM], rebuild=True)
        table = lg.events(STREAM, raw=True)
    assert _l1_csv(database_url, STREAM) == EXPECTED_L1.read_bytes()  # the task's reference file
    assert table.column("raw").to_pylist() == [r[-1] for r in before]
    # Ingesting the file again stores nothing: every line is found, as a duplicate, in the blocks.
    with ledger.open(_url(database_url)) as lg:
        again = lg.ingest_csv(io.BytesIO(V31.read_bytes()), stream=STREAM, source_name="v3.1")
    assert again.events_stored == 0 and again.duplicates == 34_247
    assert _everything(engine) == before


def test_reads_of_ranges_equal_the_view(engine: Engine, database_url: URL) -> None:
    """Random (after, upto] ranges and chunk sizes over a stream of blocks, late rows and a
    tail of rows: read_chunks against a plain query on the view."""
    _ingest_sample(database_url)
    with engine.connect() as conn:
        sid = Streams(conn).get(STREAM)
        seqs = conn.execute(sa.text("SELECT seq FROM events ORDER BY seq")).scalars().all()
    # Hold back every 50th event of the first 20,000, fold up to there, then store them late.
    held = set(seqs[:20_000:50])
    with engine.begin() as conn:
        kept = conn.execute(sa.text("SELECT * FROM event_rows WHERE seq = ANY(:s)"), {"s": list(held)}).all()
        conn.execute(sa.text("DELETE FROM event_rows WHERE seq = ANY(:s)"), {"s": list(held)})
    folded = compact_stream(engine, sid, upto=seqs[20_000], block_events=777)
    assert folded.left == 0 and folded.events == 20_001 - len(held)
    with engine.begin() as conn:
        for row in kept:
            conn.execute(
                sa.text(f"INSERT INTO event_rows VALUES ({', '.join(f':c{i}' for i in range(len(row)))})"),
                {f"c{i}": v for i, v in enumerate(row)},
            )
    again = compact_stream(engine, sid, upto=seqs[20_000])  # the late rows lie below the blocks: they stay
    assert again.events == 0 and again.left == len(held)
    rng = random.Random(5)
    columns = "seq, kind, order_id, side, price::text, size::text, ts::text"
    with engine.connect() as conn:
        conn.execute(sa.text("SET DateStyle = 'ISO'"))
        for _ in range(25):
            lo, hi = sorted(rng.sample(range(-1, len(seqs)), 2))
            after = None if lo < 0 else seqs[lo]
            upto = seqs[hi] if rng.random() < 0.8 else None
            query = f"SELECT {columns} FROM events WHERE seq > :a AND seq <= :u ORDER BY seq"
            want = [
                tuple(r)
                for r in conn.execute(
                    sa.text(query),
                    {"a": -(2**63) if after is None else after, "u": 2**63 - 1 if upto is None else upto},
                )
            ]
            got = _read(engine, STREAM, after=after, upto=upto, chunk=rng.choice([1, 7, 500, 776, 777, 778, 20_000]))
            assert got == want, (after, upto)
            bounds = {"s": sid, "a": -(2**63) if after is None else after, "u": 2**63 - 1 if upto is None else upto}
            by_function = conn.execute(
                sa.text(f"SELECT {columns} FROM ledger_events(:s, :a, :u) ORDER BY seq"), bounds
            ).all()
            assert [tuple(r) for r in by_function] == want


def test_a_fold_in_steps_and_a_fold_beside_readers_lose_and_repeat_nothing(database_url: URL, engine: Engine) -> None:
    _ingest_sample(database_url)
    before = _everything(engine)
    reference = _read(engine, STREAM, chunk=1500)
    with engine.connect() as conn:
        sid = Streams(conn).get(STREAM)
        seqs = conn.execute(sa.text("SELECT seq FROM events ORDER BY seq")).scalars().all()
    mistakes: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            got = _read(engine, STREAM, chunk=1500)
            if got != reference:
                mistakes.append(f"{len(got)} events read, {len(reference)} stored")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for cut in (5_000, 5_001, 17_000, 30_000, len(seqs) - 1):  # as if stopped and run again
            compact_stream(engine, sid, upto=seqs[cut], block_events=2048)
    finally:
        stop.set()
        thread.join()
    assert mistakes == []
    assert _everything(engine) == before
    with engine.connect() as conn:
        blocks = conn.execute(sa.text("SELECT first_seq, last_seq FROM event_blocks ORDER BY first_seq")).all()
    assert all(a[1] < b[0] for a, b in itertools.pairwise(blocks))  # disjoint, in order


def test_the_sample_folded_is_at_most_110_bytes_an_event(database_url: URL, engine: Engine) -> None:
    _ingest_sample(database_url)
    with ledger.open(_url(database_url)) as lg:
        lg.compact()
    per_event = _bytes_per_event(engine)
    assert per_event <= 110, per_event


def test_coinbase_messages_folded_are_at_most_110_bytes_and_come_back_as_sent(
    database_url: URL, engine: Engine
) -> None:
    real = REAL_COINBASE.read_text().splitlines()
    store, _ = coinbase_input(20_000, 7)  # the real ones, then a simulated full channel, as the capture stores them
    with ledger.open(_url(database_url)) as lg:
        store(lg)
    before = _everything(engine)
    with ledger.open(_url(database_url)) as lg:
        done = lg.compact()
    assert sum(f.events for f in done.values()) == len(before)
    assert _everything(engine) == before
    stored = {r[-1] for r in before}
    assert all(line in stored for line in real if '"heartbeat"' not in line)  # the real ones, as sent
    per_event = _bytes_per_event(engine)
    assert per_event <= 110, per_event


def test_the_migration_down_unfolds_the_blocks(database_url: URL, scratch_engine: Engine) -> None:
    upgrade(scratch_engine)
    with ledger.open(_url(scratch_engine.url)) as lg:
        lg.ingest_csv(io.BytesIO(V31.read_bytes()), stream=STREAM, source_name="v3.1")
        lg.compact()
    with scratch_engine.connect() as conn:
        want = conn.execute(sa.text("SELECT seq, ledger_raw(e) FROM events e ORDER BY seq")).all()
        assert conn.execute(sa.text("SELECT count(*) FROM event_rows")).scalar_one() == 0
    downgrade(scratch_engine, "0004")
    with scratch_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT seq, ledger_raw(e) FROM events e ORDER BY seq")).all() == want
        assert conn.execute(sa.text("SELECT to_regclass('event_blocks')")).scalar() is None
    upgrade(scratch_engine)
    with scratch_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT seq, ledger_raw(e) FROM events e ORDER BY seq")).all() == want


def test_ledger_db_compact_says_what_it_folded(database_url: URL, db_env: dict[str, str]) -> None:
    _ingest_sample(database_url)
    runner = CliRunner()
    result = runner.invoke(cli, ["db", "compact", STREAM, "--upto", "1627942268920660000"], env=db_env)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{STREAM}: ") and "events folded into 2 blocks" in result.output
    status = runner.invoke(cli, ["status", STREAM], env=db_env)
    assert "events 34247 (6830 in 2 compressed blocks), seqs" in status.output, status.output
    again = runner.invoke(cli, ["db", "compact"], env=db_env)
    assert again.exit_code == 0 and "blocks (up to seq 1627942268920687417)" in again.output
    exported = runner.invoke(cli, ["export", "events", STREAM, "--raw", "-f", "csv", "-o", "-"], env=db_env)
    assert exported.exit_code == 0, exported.output
    raws = [row["raw"] for row in csv.DictReader(io.StringIO(exported.stdout))]
    lines = V31.read_text(encoding="utf-8-sig").splitlines()[1:]
    assert raws == sorted(lines, key=lambda line: int(line.split(",", 1)[0]))  # from blocks, as received
    unknown = runner.invoke(cli, ["db", "compact", "csv:nope"], env=db_env)
    assert unknown.exit_code != 0 and "csv:nope" in unknown.output
    assert "Example:" in runner.invoke(cli, ["db", "compact", "--help"]).output


def _answers(database_url: URL, engine: Engine, stream: str, points: list[int]) -> dict[str, Any]:
    """What the readers of the log say of ``stream``: the L1 rows of a rebuild, status, seq
    range, the nearest events, ranges, counts, raw lines, venue marks, event ends, gaps."""
    with ledger.open(_url(database_url)) as lg:
        lg.project([stream], rebuild=True)
        status = lg.status(stream)[0]
        gaps = lg.gaps(stream, include_closed=True)
    with engine.connect() as conn:
        sid = Streams(conn).get(stream)
        log = EventLog(conn)
        from ledger.storage.projection import Positions

        positions = Positions(conn)
        low, high = log.seq_range(sid)
        assert low is not None and high is not None
        answers: dict[str, Any] = {
            "status": (status.events, status.first_seq, status.last_seq, status.lag_seconds, status.open_gaps),
            "gaps": [(g["first_seq"], g["last_seq"], g["status"]) for g in gaps],
            "range": (low, high),
            "marks": log.venue_marks(sid),
            "raw": log.raw_between(sid, points[0], points[-1]),
            "raw_of": log.raw_of(sid, points),
        }
        for x in points:
            answers[f"after {x}"] = log.nearest(sid, at_or_after=x) if x <= high else None
            answers[f"before {x}"] = log.nearest(sid, at_or_before=x) if x >= low else None
            answers[f"any {x}"] = log.any_between(sid, first=x, last=x + 3)
            answers[f"count {x}"] = (
                positions.stored_events(sid, after=x),
                positions.stored_events(sid, upto=x),
                positions.stored_events(sid, after=low + 5, upto=x),
            )
            answers[f"end {x}"] = log.event_end(sid, at_or_before=x)
    answers["l1"] = _l1_csv(database_url, stream)
    return answers


@pytest.mark.parametrize("source", ["csv", "databento"])
def test_every_reader_answers_the_same_after_a_fold(source: str, database_url: URL, engine: Engine) -> None:
    if source == "csv":
        stream = STREAM
        _ingest_sample(database_url)
    else:
        from tests.test_databento import ESH4_DAY

        stream = "databento:GLBX.MDP3:ESH4"
        with ledger.open(_url(database_url)) as lg:
            lg.ingest_dbn(ESH4_DAY)
    with engine.connect() as conn:
        sid = Streams(conn).get(stream)
        seqs = conn.execute(sa.text("SELECT seq FROM events WHERE stream_id = :s ORDER BY seq"), {"s": sid})
        seqs = seqs.scalars().all()
        inside = conn.execute(  # records inside an exchange event (no F_LAST): event_end looks back
            sa.text("SELECT seq FROM events WHERE stream_id = :s AND flags & 128 = 0 ORDER BY seq"), {"s": sid}
        )
        inside = inside.scalars().all()
    rng = random.Random(11)
    points = sorted(
        {*rng.sample(seqs, 12), *inside[::9000], seqs[0], seqs[-1], seqs[0] - 1, seqs[-1] + 1, seqs[len(seqs) // 2] + 1}
    )
    before = _answers(database_url, engine, stream, points)
    if source == "databento":
        assert sum(before[f"end {x}"] != x for x in points) >= 3  # the look back was tried
    # Fold in small blocks, up to a point inside the stream, then once more with a late row
    # below the blocks (taken out first, stored again after): the readers meet rows, blocks
    # and a late row among the blocks.
    late = seqs[len(seqs) // 3]
    with engine.begin() as conn:
        held = conn.execute(
            sa.text("SELECT * FROM event_rows WHERE stream_id = :s AND seq = :q"), {"s": sid, "q": late}
        )
        row = held.one()
        conn.execute(sa.text("DELETE FROM event_rows WHERE stream_id = :s AND seq = :q"), {"s": sid, "q": late})
    compact_stream(engine, sid, upto=seqs[(len(seqs) * 2) // 3], block_events=500)
    with engine.begin() as conn:
        values = ", ".join(f":c{i}" for i in range(len(row)))
        conn.execute(sa.text(f"INSERT INTO event_rows VALUES ({values})"), {f"c{i}": v for i, v in enumerate(row)})
    after = _answers(database_url, engine, stream, points)
    assert after == before
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM event_blocks WHERE stream_id = :s"), {"s": sid}).scalar() > 10


_FOLD_SCRIPT = """
import sys
from sqlalchemy import create_engine
from ledger.storage.blocks import compact_stream
compact_stream(create_engine(sys.argv[1]), int(sys.argv[2]), block_events=50)
"""


def _blocks_stored(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM event_blocks")).scalar_one())


@pytest.mark.slow
def test_a_fold_killed_at_random_points_goes_on_and_loses_nothing(database_url: URL, engine: Engine) -> None:
    _ingest_sample(database_url)
    before = _everything(engine)
    with engine.connect() as conn:
        sid = Streams(conn).get(STREAM)
    rng = random.Random(3)
    kills = 0
    for _ in range(4):
        proc = track(subprocess.Popen([sys.executable, "-c", _FOLD_SCRIPT, _url(database_url), str(sid)]))
        stored = _blocks_stored(engine)
        while proc.poll() is None and _blocks_stored(engine) == stored:  # killed after a commit: mid-fold
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        assert _everything(engine) == before
    assert kills >= 2
    folded = compact_stream(engine, sid, block_events=50)  # what was left
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM event_rows")).scalar_one() == 0
        sizes = conn.execute(sa.text("SELECT n_events FROM event_blocks ORDER BY first_seq")).scalars().all()
    assert sum(sizes) == 34_247 and all(n == 50 for n in sizes[:-1]) and folded.left == 0
    assert _everything(engine) == before


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzzed_files_folded_come_back_byte_for_byte(seed: int, database_url: URL, engine: Engine) -> None:
    """Hostile input (tests/test_fuzz_csv.py): odd forms keep their raw, rejects and gaps are
    left as they are; folded, every event and its raw line come back the same, and the
    stream projects to the same L1 rows."""
    data, _, _ = fuzzed_sample(seed)
    with ledger.open(_url(database_url)) as lg:
        lg.ingest_csv(io.BytesIO(data), stream="csv:fuzz", source_name="fuzz")
        lg.project(["csv:fuzz"], settings=ProjectSettings(skip_gaps=True))
    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT count(*) FROM event_rows WHERE raw IS NOT NULL")).scalar_one()
    assert kept > 0  # lines not in canonical form, raw kept
    before = _everything(engine)
    l1_before = _l1_csv(database_url, "csv:fuzz")
    with ledger.open(_url(database_url)) as lg:
        done = lg.compact(upto=before[-1][1])
        assert done["csv:fuzz"].events == len(before)
        lg.project(["csv:fuzz"], rebuild=True, settings=ProjectSettings(skip_gaps=True))
    assert _everything(engine) == before
    assert _l1_csv(database_url, "csv:fuzz") == l1_before


@pytest.mark.parametrize("command", [["ingest", "coinbase"], ["run"]])
def test_compact_every_takes_a_duration(command: list[str]) -> None:
    runner = CliRunner()
    for bad in ("0s", "soon", "-1m"):
        result = runner.invoke(cli, [*command, "--product", "BTC-USD", "--compact-every", bad])
        assert result.exit_code == 2 and "--compact-every" in result.output, (bad, result.output)
    assert "--compact-every 10m" in runner.invoke(cli, [*command, "--help"]).output


def test_a_databento_file_again_after_a_fold_stores_nothing(database_url: URL, engine: Engine) -> None:
    from tests.test_databento import ESH4_DAY

    with ledger.open(_url(database_url)) as lg:
        [first] = lg.ingest_dbn(ESH4_DAY)
        lg.compact()
    before = _everything(engine)
    assert first.events_stored == len(before) == 68_792
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM event_rows")).scalar_one() == 0
    # A new run of the same file: every record found in the blocks, byte for byte.
    with ledger.open(_url(database_url)) as lg:
        [again] = lg.ingest_dbn(ESH4_DAY)
    assert (again.events_stored, again.duplicates, again.conflicting_duplicates) == (0, 68_792, 0)
    assert _everything(engine) == before
