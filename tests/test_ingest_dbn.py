"""`ledger ingest dbn` end to end on the real Databento files: stored, projected and read back
against expectations independent of ledger's code (the naive model of tests/test_databento.py
fed straight from databento_dbn, the records cut from the file by hand), idempotent,
resumable after kill -9, in any file order, from stdin; bad input kept, never lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import databento_dbn as dbn
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import URL, Engine

from ledger.cli import cli
from ledger.errors import InputError
from ledger.services.ingest.dbn_file import dbn_inputs, ingest_dbn, stream_name
from ledger.services.project.batch import project
from tests.children import track
from tests.test_databento import (
    ESH4_DAY,
    ESH4_DAY_BEFORE,
    ESM4_CLEAR,
    F_LAST,
    TINY,
    cut_records,
    decoded,
    mbo,
    metadata,
    naive_run,
    plain_dbn,
    units,
    write,
)

ESH4 = "databento:GLBX.MDP3:ESH4"


def _sid(engine: Engine, stream: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT id FROM streams WHERE name = :n"), {"n": stream}).scalar_one())


def _rows(engine: Engine, query: str, stream: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(query), {"s": _sid(engine, stream)})]


def _events(engine: Engine, stream: str) -> list[tuple[Any, ...]]:
    return _rows(
        engine,
        "SELECT seq, kind, order_id, side, price, size, ts, raw, flags, ts_event, ts_recv, sequence, channel"
        " FROM events WHERE stream_id = :s ORDER BY seq",
        stream,
    )


def _l1(engine: Engine, stream: str) -> list[tuple[Any, ...]]:
    query = "SELECT seq, ts, bid_price, bid_size, ask_price, ask_size FROM l1 WHERE stream_id = :s ORDER BY seq"
    return _rows(engine, query, stream)


def test_two_days_of_esh4_project_to_the_naive_model(engine: Engine) -> None:
    summaries = [ingest_dbn(engine, path) for path in dbn_inputs([ESH4_DAY, ESH4_DAY_BEFORE])]
    assert [Path(s.source).name for s in summaries] == [ESH4_DAY_BEFORE.name, ESH4_DAY.name]  # time order
    assert [s.events_stored for s in summaries] == [8_725, 68_792]
    assert [list(s.streams) for s in summaries] == [[ESH4], [ESH4]]
    (result,) = project(engine, streams=[ESH4])
    assert result.status == "ok", result.message

    # Independent: the naive model over both files' records, straight from databento_dbn.
    records = decoded(ESH4_DAY_BEFORE)[1] + decoded(ESH4_DAY)[1]
    book, changes, crossings, _ = naive_run(records)
    expected = [(records[i].ts_recv // 1000, *top) for i, top in changes]
    got = [(_us(ts), units(bp), int(bs), units(ap), int(az)) for _, ts, bp, bs, ap, az in _l1(engine, ESH4)]
    assert len(got) == len(expected) > 25_000
    assert got == expected
    assert result.anomalies == ({"crossed_book": crossings} if crossings else {})  # no order added twice

    # The final book, order by order in queue order, as `ledger book` reads it back.
    from ledger.services.read.book import book_at

    view = book_at(engine, ESH4)
    final = [(o.order_id, o.side, units(o.price), int(o.size)) for o in view.book.iter_orders()]
    assert final == book.queue_order()

    # Every field of every record, as the file has it.
    events = _events(engine, ESH4)
    assert len(events) == len(records)
    for row, r in zip(events, records, strict=True):
        seq, kind, order_id, side, price, size, ts, raw, flags, ts_event, ts_recv, sequence, channel = row
        assert (
            kind
            == {"A": "add", "C": "cancel", "M": "modify", "R": "clear", "T": "trade", "F": "fill", "N": "none"}[
                r.action.value
            ]
        )
        assert (flags, ts_event, ts_recv, sequence, channel) == (
            int(r.flags),
            r.ts_event,
            r.ts_recv,
            r.sequence,
            r.channel_id,
        )
        assert size == r.size and _us(ts) == r.ts_recv // 1000
        assert bytes.fromhex(raw) == bytes(r)
        assert side == {"B": "B", "A": "S", "N": None}[r.side.value]
        assert units(price) == r.price
        assert order_id == (None if r.order_id == 0 and r.action.value not in "ACM" else str(r.order_id))
        assert seq >= r.ts_recv  # the key is the receive time in ns, or just after it


def _us(ts: Any) -> int:
    """A timestamptz as integer microseconds since the epoch (exactly, not through float)."""
    delta = ts - ts.replace(year=1970, month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def test_raw_is_each_record_as_the_file_has_it(engine: Engine) -> None:
    ingest_dbn(engine, ESM4_CLEAR)
    _, records = cut_records(plain_dbn(ESM4_CLEAR))
    stored = [bytes.fromhex(row[7]) for row in _events(engine, "databento:GLBX.MDP3:ESM4")]
    assert stored == records


def test_the_same_file_twice_stores_nothing_new(engine: Engine) -> None:
    first = ingest_dbn(engine, ESM4_CLEAR)
    before = _events(engine, "databento:GLBX.MDP3:ESM4")
    again = ingest_dbn(engine, ESM4_CLEAR)
    assert (first.events_stored, first.duplicates) == (13_796, 0)
    assert (again.events_stored, again.duplicates, again.rejects) == (0, 13_796, 0)
    assert _events(engine, "databento:GLBX.MDP3:ESM4") == before


def test_day_two_before_day_one_gives_the_same_log_and_asks_for_a_rebuild(engine: Engine) -> None:
    ingest_dbn(engine, ESH4_DAY)
    project(engine, streams=[ESH4])
    ingest_dbn(engine, ESH4_DAY_BEFORE)  # earlier records, below the projection's start
    (result,) = project(engine, streams=[ESH4])
    assert result.status == "needs_rebuild" and "--rebuild" in (result.message or "")
    backwards = _events(engine, ESH4)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM streams"))
        conn.execute(sa.text("DELETE FROM event_rows"))
    for path in (ESH4_DAY_BEFORE, ESH4_DAY):
        ingest_dbn(engine, path)
    assert _events(engine, ESH4) == backwards


def test_a_folder_the_cli_and_json(engine: Engine, db_env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    for path in TINY:
        shutil.copy(path, folder / path.name)
    (folder / "notes.txt").write_text("not DBN, not read")
    result = CliRunner().invoke(cli, ["ingest", "dbn", str(folder), "-f", "json"], env=db_env)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    streams = sorted(s["stream"] for item in out for s in item["streams"])
    assert streams == [
        "databento:GLBX.MDP3:ESH1",
        "databento:IFEU.IMPACT:BRN FMJ0024!",
        "databento:NDEX.IMPACT:TFM FMH0024!",
        "databento:XNAS.ITCH:NVDA",
    ]
    assert all(item["events_stored"] == 4 for item in out)
    again = CliRunner().invoke(cli, ["ingest", "dbn", str(folder / "*.zst")], env=db_env)  # a glob ledger expands
    assert again.exit_code == 0, again.output
    assert again.output.count("0 events stored, 4 duplicates") == 4
    empty = CliRunner().invoke(cli, ["ingest", "dbn", str(folder / "*.dbn")], env=db_env)
    assert empty.exit_code == 2 and "no file matches" in empty.output
    missing = CliRunner().invoke(cli, ["ingest", "dbn", str(folder / "nope.dbn")], env=db_env)
    assert missing.exit_code == 1 and "nope.dbn: no such file" in missing.output


def test_stdin_reads_like_the_file(engine: Engine, db_env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        cli, ["ingest", "dbn", "-", "-s", "esm4", "-f", "json"], input=ESM4_CLEAR.read_bytes(), env=db_env
    )
    assert result.exit_code == 0, result.output
    (summary,) = json.loads(result.output)
    assert summary["source"] == "stdin" and summary["events_stored"] == 13_796
    ingest_dbn(engine, ESM4_CLEAR)
    events = _events(engine, "esm4")
    assert events == _events(engine, "databento:GLBX.MDP3:ESM4")
    again = CliRunner().invoke(cli, ["ingest", "dbn", "-", "-s", "esm4"], input=ESM4_CLEAR.read_bytes(), env=db_env)
    assert "0 events stored, 13,796 duplicates" in again.output
    assert _events(engine, "esm4") == events


def _two_instruments(tmp_path: Path) -> Path:
    records = [
        mbo(instrument_id=17077, order_id=1, ts_recv=1_703_462_400_000_000_000),
        mbo(instrument_id=99, order_id=2, ts_recv=1_703_462_400_000_001_000),
        mbo(instrument_id=17077, order_id=3, ts_recv=1_703_462_400_000_002_000, action=dbn.Action.CANCEL),
    ]
    return write(tmp_path, "two.dbn", metadata() + b"".join(records))


def test_each_instrument_is_its_own_stream_and_stream_renames_only_one(
    engine: Engine, db_env: dict[str, str], tmp_path: Path
) -> None:
    path = _two_instruments(tmp_path)
    summary = ingest_dbn(engine, path)
    assert {name: c.events_stored for name, c in summary.streams.items()} == {
        "databento:GLBX.MDP3:ESH4": 2,
        "databento:GLBX.MDP3:99": 1,  # no symbol mapping: the instrument id
    }
    result = CliRunner().invoke(cli, ["ingest", "dbn", str(path), "--stream", "mine"], env=db_env)
    assert result.exit_code != 0
    assert "more than one instrument (ESH4, 99)" in result.output and "leave --stream out" in result.output
    assert stream_name("EQUS.PLUS", "NVDA", 39) == "databento:EQUS.PLUS:NVDA:39"


def test_bad_records_are_kept_as_rejects_and_a_conflict_is_one(engine: Engine, tmp_path: Path) -> None:
    good = mbo(order_id=1)
    odd = bytearray(mbo(order_id=2, ts_recv=1_703_462_400_000_005_000))
    odd[38] = ord("X")  # the action byte
    path = write(tmp_path, "odd.dbn", metadata() + good + bytes(odd))
    summary = ingest_dbn(engine, path)
    assert (summary.events_stored, summary.rejects) == (1, 1)
    (reject,) = _rows(engine, "SELECT line_no, raw, reason FROM rejects WHERE stream_id = :s", ESH4)
    assert reject[0] == 2 and bytes.fromhex(reject[1]) == bytes(odd) and "unknown action 'X'" in reject[2]
    # Another file whose record has the same key but other bytes: a duplicate kept as a reject.
    other = write(tmp_path, "other.dbn", metadata() + mbo(order_id=1, size=5))
    clash = ingest_dbn(engine, other)
    assert (clash.events_stored, clash.duplicates, clash.conflicting_duplicates) == (0, 1, 1)
    assert "already stored with other bytes" in clash.reject_samples[0]["reason"]  # type: ignore[operator]


def test_a_truncated_file_stores_what_came_before_and_names_the_record(engine: Engine, tmp_path: Path) -> None:
    records = b"".join(mbo(order_id=i, ts_recv=1_703_462_400_000_000_000 + i * 1000) for i in range(1, 6))
    path = write(tmp_path, "cut.dbn", metadata() + records[:-10])
    with pytest.raises(Exception, match="record 5: truncated"):
        ingest_dbn(engine, path)
    assert len(_events(engine, ESH4)) == 4


def _ingest(url: URL, path: Path, batch_size: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LEDGER_DATABASE_URL": url.render_as_string(hide_password=False)}
    args = ["ingest", "dbn", str(path), "--batch-size", str(batch_size)]
    return track(
        subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    )


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one())


@pytest.mark.slow
def test_killed_ingest_resumes_and_stores_each_record_once(database_url: URL, engine: Engine) -> None:
    kills = 0
    for _ in range(3):
        proc = _ingest(database_url, ESH4_DAY, batch_size=4_000)
        before = _count(engine)
        while proc.poll() is None and _count(engine) == before:  # killed after a commit: mid-file
            time.sleep(0.002)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= 2, "the ingest finished before it could be killed"
    final = _ingest(database_url, ESH4_DAY, batch_size=4_000)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()
    assert b"resumed at record" in out
    killed = _events(engine, ESH4)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM streams"))
        conn.execute(sa.text("DELETE FROM event_rows"))
    ingest_dbn(engine, ESH4_DAY)
    assert killed == _events(engine, ESH4)
    with engine.connect() as conn:
        (stored,) = conn.execute(sa.text("SELECT events_stored FROM ingest_checkpoints")).one()
    assert stored == 68_792


def test_the_stored_records_decode_again(engine: Engine) -> None:
    """raw is enough to get the records back with databento_dbn itself."""
    ingest_dbn(engine, ESM4_CLEAR)
    raws = b"".join(bytes.fromhex(row[7]) for row in _events(engine, "databento:GLBX.MDP3:ESM4"))
    decoder = dbn.DBNDecoder(has_metadata=False, input_version=3, ts_out=False)
    again = decoder.write_and_decode(raws)
    assert [bytes(r) for r in again] == [bytes(r) for r in decoded(ESM4_CLEAR)[1]]


def test_status_counts_sparse_seqs_and_shows_the_venues_warning(engine: Engine, tmp_path: Path) -> None:
    from ledger.services.read.status import gap_rows, stream_status

    t = 1_703_462_400_000_000_000
    first = [
        mbo(order_id=1, ts_recv=t, side=dbn.Side.BID, price=4_799_000_000_000),
        mbo(order_id=2, ts_recv=t + 7_000_000, side=dbn.Side.ASK, price=4_800_000_000_000),
        mbo(order_id=3, ts_recv=t + 9_000_000, flags=F_LAST | 4),  # F_MAYBE_BAD_BOOK
    ]
    ingest_dbn(engine, write(tmp_path, "a.dbn", metadata() + b"".join(first)))
    with engine.connect() as conn:
        (before,) = stream_status(conn, ESH4)
    assert (before.events, before.open_gaps, before.lag_events) == (3, 0, None)  # not the seq range
    project(engine, streams=[ESH4])
    later = [mbo(order_id=4, ts_recv=t + 20_000_000), mbo(order_id=5, ts_recv=t + 30_000_000)]
    ingest_dbn(engine, write(tmp_path, "b.dbn", metadata() + b"".join(later)))
    with engine.connect() as conn:
        (status,) = stream_status(conn, ESH4)
    assert (status.events, status.lag_events, status.book_maybe_bad) == (5, 2, True)
    flagged = _events(engine, ESH4)[2][0]
    with engine.connect() as conn:
        (period,) = gap_rows(conn, ESH4)
    assert (period["status"], period["first_seq"], period["resolved_by_seq"]) == ("book_maybe_bad", flagged, None)
    assert period["last_seq"] == _events(engine, ESH4)[-1][0]
    clear = mbo(order_id=0, ts_recv=t + 40_000_000, action=dbn.Action.CLEAR, side=dbn.Side.NONE)
    ingest_dbn(engine, write(tmp_path, "c.dbn", metadata() + clear))
    project(engine, streams=[ESH4])
    with engine.connect() as conn:
        (status,) = stream_status(conn, ESH4)
    assert (status.events, status.lag_events, status.book_maybe_bad) == (6, 0, False)
    # The L1 rows carry the mark from the flagged record until the clear (the clear empties
    # the book: no row); the first row, before the warning, has none.
    seqs = [row[0] for row in _events(engine, ESH4)]
    marks = _rows(engine, "SELECT seq, maybe_bad FROM l1 WHERE stream_id = :s ORDER BY seq", ESH4)
    assert marks == [(seqs[1], None), (seqs[2], True), (seqs[3], True), (seqs[4], True)]
    cleared = _events(engine, ESH4)[-1][0]
    with engine.connect() as conn:
        assert gap_rows(conn, ESH4) == []
        (period,) = gap_rows(conn, ESH4, include_closed=True)
    assert (period["status"], period["first_seq"], period["last_seq"], period["resolved_by_seq"]) == (
        "book_maybe_bad_ended",
        flagged,
        cleared - 1,
        cleared,
    )


@pytest.mark.parametrize("path", [ESH4_DAY_BEFORE, ESM4_CLEAR, *TINY], ids=lambda p: p.name[:30])
def test_the_ingests_copy_lines_are_the_stored_rows(path: Path, tmp_path: Path) -> None:
    """The ingest's path (copy_lines) and stored_rows give the same keys, seqs and values."""
    _check_lines_against_rows(path)


def test_copy_lines_keep_rejects_in_their_place(tmp_path: Path) -> None:
    odd = bytearray(mbo(order_id=2, ts_recv=1_703_462_400_000_005_000))
    odd[38] = ord("X")
    records = [mbo(order_id=1), bytes(odd), mbo(order_id=3, price=2**63 - 1, action=dbn.Action.CANCEL)]
    _check_lines_against_rows(write(tmp_path, "odd.dbn", metadata() + b"".join(records)))


def _check_lines_against_rows(path: Path) -> None:
    from ledger.venues.databento.dbn import MboReader, MboReject, Sequencer, keyed_rows

    rows = list(keyed_rows(MboReader(path)))
    chunks = list(MboReader(path).copy_lines(Sequencer()))
    assert [r for r in rows if isinstance(r, MboReject)] == [r for c in chunks for r in c.rejects]
    by_key: dict[Any, list[Any]] = {}
    for chunk in chunks:
        for key, lines in chunk.lines.items():
            by_key.setdefault(key, []).extend((key, *line) for line in lines)
    stored_rows = [r for r in rows if not isinstance(r, MboReject)]
    assert sum(map(len, by_key.values())) == len(stored_rows)
    positions = {key: iter(lines) for key, lines in by_key.items()}
    for key, record_no, stored in stored_rows:
        line = next(positions[key])  # each stream's lines in file order: (key, seq, record_no, line)
        assert line[:3] == (key, stored.seq, record_no)
        text = [None if cell == "\\N" else cell for cell in line[3].decode().split("\t")]
        expected = [
            str(stored.seq),
            stored.kind,
            stored.order_id,
            stored.side,
            None if stored.price is None else str(stored.price),
            str(stored.size),
            stored.ts.strftime("%Y-%m-%d %H:%M:%S.%f+00"),
            stored.raw,
            str(stored.flags),
            None if stored.ts_event is None else str(stored.ts_event),
            str(stored.ts_recv),
            str(stored.sequence),
            str(stored.channel),
        ]
        assert text == expected


def test_a_bad_input_among_good_ones_is_named_and_the_others_are_stored(
    engine: Engine, db_env: dict[str, str], tmp_path: Path
) -> None:
    records = b"".join(mbo(order_id=i, ts_recv=1_703_462_400_000_000_000 + i * 1000) for i in range(1, 6))
    cut = write(tmp_path, "cut.dbn", metadata() + records[:-10])
    result = CliRunner().invoke(
        cli, ["ingest", "dbn", str(ESM4_CLEAR), str(cut), str(TINY[0]), "-f", "json"], env=db_env
    )
    assert result.exit_code == 1
    assert "record 5: truncated" in result.output and "1 of 3 inputs could not be read whole" in result.output
    with engine.connect() as conn:
        counts = dict(
            conn.execute(
                sa.text("SELECT s.name, count(*) FROM events e JOIN streams s ON s.id = e.stream_id GROUP BY s.name")
            ).all()
        )
    assert counts == {"databento:GLBX.MDP3:ESM4": 13_796, ESH4: 4, "databento:GLBX.MDP3:ESH1": 4}
    with engine.connect() as conn:  # the cut file's checkpoint is not complete: run again, it goes on
        complete = conn.execute(
            sa.text("SELECT complete FROM ingest_checkpoints WHERE source = :s"), {"s": str(cut.resolve())}
        ).scalar_one()
    assert complete is False


def test_a_book_inside_an_event_is_the_book_at_the_event_before(engine: Engine) -> None:
    """`ledger book --at-seq` never shows the state half way through an exchange event."""
    from ledger.errors import StreamError
    from ledger.services.read.book import book_at
    from tests.test_databento import NaiveBook

    ingest_dbn(engine, ESH4_DAY)
    _, records = decoded(ESH4_DAY)
    seqs = [row[0] for row in _events(engine, ESH4)]
    inside = [i for i, r in enumerate(records) if not r.flags & 128 and i > 9_000][::1_000][:6]
    assert len(inside) == 6
    naive = NaiveBook()
    done = 0
    for i in inside:
        end = max(j for j in range(i) if records[j].flags & 128)  # the event before
        for r in records[done : end + 1]:
            naive.apply(r.action.value, r.side.value, r.price, r.size, r.order_id, int(r.flags))
        done = end + 1
        view = book_at(engine, ESH4, at_seq=seqs[i])
        assert view.seq == seqs[end]
        top = view.book.top()
        assert top is not None
        assert (units(top.bid_price), top.bid_size, units(top.ask_price), top.ask_size) == naive.top()
    # The day opens with a snapshot whose records end no event until 22:00: no book inside it.
    with pytest.raises(StreamError, match="no exchange event has ended by seq"):
        book_at(engine, ESH4, at_seq=seqs[100])


def test_watch_shows_the_book_only_at_event_ends(engine: Engine, tmp_path: Path) -> None:
    """A batch of records may end inside an exchange event: watch waits for its end."""
    from ledger.services.read.watch import BookFollower

    t = 1_703_462_400_000_000_000
    bid = mbo(order_id=1, ts_recv=t, side=dbn.Side.BID, price=4_799_000_000_000, size=5)
    ask = mbo(order_id=2, ts_recv=t + 1000, side=dbn.Side.ASK, price=4_800_000_000_000, size=7)
    # One event: an aggressor bid added at the ask's price, then the ask it took cancelled.
    taker = mbo(order_id=3, ts_recv=t + 2000, side=dbn.Side.BID, price=4_800_000_000_000, size=7, flags=0)
    taken = mbo(
        order_id=2,
        ts_recv=t + 2000,
        side=dbn.Side.ASK,
        price=4_800_000_000_000,
        size=7,
        action=dbn.Action.CANCEL,
        flags=0,
    )
    done = mbo(  # (a later microsecond: a file that begins inside one would key it anew)
        order_id=3, ts_recv=t + 5000, side=dbn.Side.BID, price=4_800_000_000_000, size=7, action=dbn.Action.CANCEL
    )
    ask2 = mbo(order_id=4, ts_recv=t + 6000, side=dbn.Side.ASK, price=4_801_000_000_000, size=1)
    ingest_dbn(engine, write(tmp_path, "a.dbn", metadata() + bid + ask + taker + taken))  # cut inside the event
    follower = BookFollower(engine, ESH4)
    view = follower.top(1)
    assert view is not None and view.seq == _events(engine, ESH4)[1][0]  # the ask's event, not the crossed state
    assert [(lv.price, lv.size) for lv in view.bids] == [(4799, 5)] and [(lv.price, lv.size) for lv in view.asks] == [
        (4800, 7)
    ]
    ingest_dbn(engine, write(tmp_path, "b.dbn", metadata() + done + ask2))
    assert follower.advance()
    view = follower.top(1)
    assert view is not None and view.seq == _events(engine, ESH4)[-1][0]
    assert [(lv.price, lv.size) for lv in view.bids] == [(4799, 5)] and [(lv.price, lv.size) for lv in view.asks] == [
        (4801, 1)
    ]


def test_files_cut_inside_one_microsecond_keep_every_record(engine: Engine, tmp_path: Path) -> None:
    """Two files that meet inside one microsecond of ts_recv (a request ending at a
    nanosecond): each record keeps its own key, nothing is taken for a duplicate."""
    t = 1_703_462_400_000_000_000
    first = metadata() + mbo(order_id=1, ts_recv=t + 100) + mbo(order_id=2, ts_recv=t + 200)
    second = metadata() + mbo(order_id=3, ts_recv=t + 700)
    a = ingest_dbn(engine, write(tmp_path, "a.dbn", first))
    b = ingest_dbn(engine, write(tmp_path, "b.dbn", second))
    assert (a.events_stored, b.events_stored, b.duplicates, b.rejects) == (2, 1, 0, 0)
    assert [row[0] - t for row in _events(engine, ESH4)] == [100, 200, 700]


def _stop_after(position: int) -> tuple[Any, Any]:
    """A stop request made once the input has been read past ``position`` bytes."""
    from ledger.services.ingest.csv_file import StopReading

    stop = StopReading()
    return stop, lambda done: stop.request() if done > position else None


def test_a_damaged_zstd_frame_stores_nothing_and_the_repaired_file_everything(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "esh4.dbn.zst"
    damaged = bytearray(ESH4_DAY.read_bytes())
    damaged[500_000] ^= 0x10  # one bit, in the middle of a frame: caught only by its checksum
    path.write_bytes(bytes(damaged))
    with pytest.raises(Exception, match="corrupt zstd data"):
        ingest_dbn(engine, path)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one() == 0
    shutil.copy(ESH4_DAY, path)  # repaired at the same path
    summary = ingest_dbn(engine, path)
    assert (summary.events_stored, summary.duplicates, summary.rejects) == (68_792, 0, 0)
    assert [bytes.fromhex(row[7]) for row in _events(engine, ESH4)] == [bytes(r) for r in decoded(ESH4_DAY)[1]]


def test_resuming_follows_each_streams_own_checkpoint(engine: Engine) -> None:
    """A run stopped while writing one stream name, then the file again under another
    name: the other name has no checkpoint, so it takes every record."""
    stop, progress = _stop_after(300_000)
    first = ingest_dbn(engine, ESH4_DAY, stream="mine", stop=stop, progress=progress, batch_size=5_000)
    assert first.interrupted and 0 < first.events_stored < 68_792
    again = ingest_dbn(engine, ESH4_DAY)
    assert again.resumed_from_record is None and again.events_stored == 68_792
    resumed = ingest_dbn(engine, ESH4_DAY, stream="mine")
    assert resumed.resumed_from_record is not None
    assert first.events_stored + resumed.events_stored == 68_792 and resumed.duplicates == 0
    assert _events(engine, "mine") == _events(engine, ESH4)


def test_no_resume_reads_everything_and_leaves_a_complete_checkpoint(engine: Engine) -> None:
    stop, progress = _stop_after(300_000)
    ingest_dbn(engine, ESH4_DAY, stop=stop, progress=progress, batch_size=5_000)
    whole = ingest_dbn(engine, ESH4_DAY, resumable=False)
    assert whole.resumed_from_record is None and whole.events_stored + whole.duplicates == 68_792
    with engine.connect() as conn:
        (complete,) = conn.execute(sa.text("SELECT complete FROM ingest_checkpoints")).one()
    assert complete is True
    after = ingest_dbn(engine, ESH4_DAY)
    assert after.resumed_from_record is None and after.duplicates == 68_792


def test_stream_names_one_instrument_across_inputs(engine: Engine, db_env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["ingest", "dbn", str(ESM4_CLEAR), str(ESH4_DAY), "-s", "mix"], env=db_env)
    assert result.exit_code == 1
    assert "more than one instrument (" in result.output
    assert len(_events(engine, "mix")) == 68_792  # the first file in time order: ESH4 (2023), then ESM4 (2024)


def test_one_symbol_from_two_publishers_is_refused_not_merged(engine: Engine, tmp_path: Path) -> None:
    records = [mbo(order_id=1, publisher_id=1), mbo(order_id=2, publisher_id=2)]
    with pytest.raises(InputError, match="comes from publishers 1 and 2"):
        ingest_dbn(engine, write(tmp_path, "two.dbn", metadata() + b"".join(records)))
    assert len(_events(engine, ESH4)) == 1


@pytest.mark.parametrize("case", ["flagged clear", "flagged snapshot start", "warning then snapshot"])
def test_gaps_and_the_l1_marks_agree_on_maybe_bad_periods(engine: Engine, tmp_path: Path, case: str) -> None:
    """ledger gaps' periods are where the projector's L1 rows carry maybe_bad, and status
    says whether the book is marked now: the same rule, whatever the order of the marks."""
    from ledger.services.read.status import gap_rows, stream_status

    t = 1_703_462_400_000_000_000
    last, bad, snap = 128, 4, 32
    bid = {"side": dbn.Side.BID, "price": 4_799_000_000_000}
    ask = {"side": dbn.Side.ASK, "price": 4_800_000_000_000}
    book = [mbo(order_id=1, ts_recv=t, **bid), mbo(order_id=2, ts_recv=t + 10, **ask)]
    clear = {"order_id": 0, "action": dbn.Action.CLEAR, "side": dbn.Side.NONE}
    snapshot = [  # a new book, its first record flagged as the case says
        mbo(order_id=11, ts_recv=t + 100, flags=snap | (bad if case == "flagged snapshot start" else 0), **bid),
        mbo(order_id=12, ts_recv=t + 100, flags=snap | last, **ask),
    ]
    after = [mbo(order_id=20 + i, ts_recv=t + 200 + i, size=1 + i, **bid) for i in range(3)]
    if case == "flagged clear":
        middle = [mbo(ts_recv=t + 50, flags=last | bad, **clear), mbo(order_id=5, ts_recv=t + 60, **bid)]
        middle += [mbo(order_id=6, ts_recv=t + 70, **ask)]
    elif case == "flagged snapshot start":
        middle = snapshot
    else:
        middle = [mbo(order_id=3, ts_recv=t + 20, size=3, flags=last | bad, **bid), *snapshot]
    ingest_dbn(engine, write(tmp_path, "case.dbn", metadata() + b"".join(book + middle + after)))
    project(engine, streams=[ESH4])
    with engine.connect() as conn:
        periods = gap_rows(conn, ESH4, include_closed=True)
        (status,) = stream_status(conn, ESH4)
    marked = {seq for seq, flag in _rows(engine, "SELECT seq, maybe_bad FROM l1 WHERE stream_id = :s", ESH4) if flag}
    l1 = [seq for (seq,) in _rows(engine, "SELECT seq FROM l1 WHERE stream_id = :s", ESH4)]
    inside = {seq for seq in l1 for p in periods if p["first_seq"] <= seq <= (p["last_seq"] or seq)}
    assert marked == inside
    assert status.book_maybe_bad == any(p["status"] == "book_maybe_bad" for p in periods)
    expected_open = {"flagged clear": False, "flagged snapshot start": True, "warning then snapshot": False}[case]
    assert status.book_maybe_bad is expected_open


def test_many_instruments_hold_a_bounded_number_of_locks(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of more instruments than the run keeps locks for: every record stored once,
    at most LOCKS_KEPT writer locks held at a time, and the file again is all duplicates."""
    from ledger.services.ingest import dbn_file
    from ledger.storage.locks import WRITER_LOCK_CLASS

    monkeypatch.setattr(dbn_file, "LOCKS_KEPT", 8)
    t = 1_703_462_400_000_000_000
    records = [mbo(instrument_id=100 + i % 30, order_id=i, ts_recv=t + i * 1000) for i in range(600)]
    path = write(tmp_path, "many.dbn", metadata() + b"".join(records))
    held: list[int] = []
    give_back = dbn_file._Run._give_back_old_locks

    def counting(self: Any) -> None:
        give_back(self)
        with engine.connect() as conn:
            query = (
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :c"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            held.append(int(conn.execute(sa.text(query), {"c": WRITER_LOCK_CLASS}).scalar_one()))

    monkeypatch.setattr(dbn_file._Run, "_give_back_old_locks", counting)
    summary = ingest_dbn(engine, path, batch_size=50)
    assert summary.events_stored == 600 and len(summary.streams) == 30
    assert held and max(held) <= 8
    again = ingest_dbn(engine, path, batch_size=50)
    assert (again.events_stored, again.duplicates) == (0, 600)


def test_arrow_events_carry_the_venue_fields_and_l1_the_warning(
    engine: Engine, database_url: URL, tmp_path: Path
) -> None:
    import ledger

    ingest_dbn(engine, ESM4_CLEAR)
    t = 1_703_462_400_000_000_000
    flagged = [
        mbo(order_id=1, ts_recv=t, side=dbn.Side.BID, price=4_799_000_000_000),
        mbo(order_id=2, ts_recv=t + 10, side=dbn.Side.ASK, price=4_800_000_000_000),
        mbo(order_id=3, ts_recv=t + 20, flags=128 | 4),
    ]
    ingest_dbn(engine, write(tmp_path, "flagged.dbn", metadata() + b"".join(flagged)))
    project(engine, streams=[ESH4])
    with ledger.open(database_url.render_as_string(hide_password=False)) as lg:
        table = lg.events("databento:GLBX.MDP3:ESM4")
        l1 = lg.l1(ESH4)
    records = decoded(ESM4_CLEAR)[1]
    assert table.num_rows == len(records)
    assert table.column("flags").to_pylist() == [int(r.flags) for r in records]
    assert table.column("ts_recv").to_pylist() == [r.ts_recv for r in records]
    assert table.column("ts_event").to_pylist() == [r.ts_event for r in records]
    assert table.column("sequence").to_pylist() == [r.sequence for r in records]
    assert table.column("channel").to_pylist() == [r.channel_id for r in records]
    assert l1.column("maybe_bad").to_pylist() == [False, True]
