"""`ledger ingest csv` of several files in one run: files, a folder, a glob, one stream for
all, a bad file among good ones, and kill -9 of a multi-file run then the same command
again. Expectations come from the files themselves (their lines), or from an undisturbed
run of the same files."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import URL, Engine

from ledger.cli import cli
from ledger.venues.csv.format import HEADER
from tests.children import track
from tests.conftest import V31
from tests.test_crash_ingest import _messy_file
from tests.test_crash_ingest import _state as stream_state

SAMPLE = V31.read_text(encoding="utf-8-sig").splitlines()[1:]


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def run_json(*args: str, code: int = 0) -> dict[str, object]:
    out = run(*args, "-f", "json", code=code)
    return json.JSONDecoder().raw_decode(out[out.index("{") :])[0]  # type: ignore[no-any-return]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\ufeff" + HEADER + "\n" + "".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def parts(folder: Path, count: int, prefix: str = "part") -> list[Path]:
    """The sample cut into ``count`` consecutive files (in seq ranges that do not overlap)."""
    folder.mkdir(exist_ok=True)
    per = -(-len(SAMPLE) // count)
    return [write(folder / f"{prefix}{i}.csv", SAMPLE[i * per : (i + 1) * per]) for i in range(count)]


def raws(engine: Engine, stream: str) -> list[str]:
    with engine.connect() as conn:
        query = (
            "SELECT ledger_raw(events) FROM events"
            " WHERE stream_id = (SELECT id FROM streams WHERE name = :n) ORDER BY seq"
        )
        return list(conn.execute(sa.text(query), {"n": stream}).scalars())


def by_seq(lines: list[str]) -> list[str]:
    return sorted(lines, key=lambda line: int(line.split(",", 1)[0]))


def test_several_files_each_their_own_stream(db_env: dict[str, str], engine: Engine, tmp_path: Path) -> None:
    files = parts(tmp_path / "in", 3)
    out = run_json("ingest", "csv", *map(str, files))
    assert [f["stream"] for f in out["files"]] == ["csv:part0", "csv:part1", "csv:part2"]  # type: ignore[index]
    for path in files:
        assert raws(engine, f"csv:{path.stem}") == by_seq(path.read_text(encoding="utf-8-sig").splitlines()[1:])
    assert out["total"] == {
        "files": 3,
        "failed": 0,
        "not_begun": 0,
        "lines": len(SAMPLE),
        "events_stored": len(SAMPLE),
        "duplicates": 0,
        "rejects": 0,
        "seconds": out["total"]["seconds"],  # type: ignore[index]
        "events_per_second": out["total"]["events_per_second"],  # type: ignore[index]
    }
    # Again: every file is read again and its lines are duplicates, as a single file's are.
    again = run_json("ingest", "csv", *map(str, files))
    assert [(f["events_stored"], f["duplicates"]) for f in again["files"]] == [  # type: ignore[index]
        (0, len(p.read_text(encoding="utf-8-sig").splitlines()) - 1) for p in files
    ]


def test_a_folder_is_its_csv_files_in_name_order(db_env: dict[str, str], engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "day"
    parts(folder, 2, prefix="b")
    write(folder / "a.CSV", SAMPLE[:10])
    (folder / "notes.txt").write_text("not a csv\n")
    (folder / "sub").mkdir()
    write(folder / "sub" / "c.csv", SAMPLE[:5])  # below the folder: not read
    out = run_json("ingest", "csv", str(folder))
    assert [Path(f["source"]).name for f in out["files"]] == ["a.CSV", "b0.csv", "b1.csv"]  # type: ignore[index]
    with engine.connect() as conn:
        names = list(conn.execute(sa.text("SELECT name FROM streams ORDER BY name")).scalars())
    assert names == ["csv:a", "csv:b0", "csv:b1"]
    assert raws(engine, "csv:a") == by_seq(SAMPLE[:10])


def test_a_quoted_glob_is_expanded_by_ledger(db_env: dict[str, str], engine: Engine, tmp_path: Path) -> None:
    files = parts(tmp_path / "g", 4)
    write(tmp_path / "g" / "other.csv", SAMPLE[:3])
    nested = tmp_path / "g" / "deep" / "er"
    nested.mkdir(parents=True)
    write(nested / "part9.csv", SAMPLE[-3:])
    out = run_json("ingest", "csv", str(tmp_path / "g" / "part[0-2].csv"))
    assert [f["source"] for f in out["files"]] == [str(p.resolve()) for p in files[:3]]  # type: ignore[index]
    out = run_json("ingest", "csv", str(tmp_path / "g" / "**" / "part9.csv"))
    assert [f["stream"] for f in out["files"]] == ["csv:part9"]  # type: ignore[index]
    assert raws(engine, "csv:part9") == by_seq(SAMPLE[-3:])
    # A file named twice (by a glob and by name) is read once, where it first comes.
    out = run_json("ingest", "csv", str(tmp_path / "g" / "part*.csv"), str(files[0]))
    assert [f["stream"] for f in out["files"]] == [f"csv:part{i}" for i in range(4)]  # type: ignore[index]


def test_one_stream_for_all_files_in_order_equals_the_whole_file(
    db_env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    files = parts(tmp_path / "days", 4)
    out = run_json("ingest", "csv", "-s", "csv:all", *map(str, files))
    assert {f["stream"] for f in out["files"]} == {"csv:all"}  # type: ignore[index]
    run("ingest", "csv", str(V31), "-s", "csv:whole")
    assert raws(engine, "csv:all") == raws(engine, "csv:whole") == by_seq(SAMPLE)
    with engine.connect() as conn:
        gaps = conn.execute(sa.text("SELECT count(*) FROM gaps")).scalar()
        checkpoints = conn.execute(sa.text("SELECT count(*) FROM ingest_checkpoints WHERE complete")).scalar()
    assert gaps == 0  # the seqs run on across the files' edges
    assert checkpoints == 4 + 1  # one per file and stream


def test_a_bad_file_among_good_ones_is_named_and_the_others_are_ingested(
    db_env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    good = parts(tmp_path / "in", 2)
    header_wrong = tmp_path / "in" / "wrong.csv"
    header_wrong.write_text("a,b,c\n1,2,3\n")
    empty = tmp_path / "in" / "empty.csv"
    empty.write_bytes(b"")
    taken = write(tmp_path / "in" / "taken.csv", SAMPLE[:5])
    with engine.begin() as conn:  # a stream that holds another venue's events
        conn.execute(sa.text("INSERT INTO streams (name, source) VALUES ('csv:taken', 'coinbase')"))
    missing = tmp_path / "in" / "missing.csv"
    args = [str(good[0]), str(header_wrong), str(missing), str(empty), str(taken), str(good[1])]
    result = CliRunner().invoke(cli, ["ingest", "csv", *args], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert "4 of 6 files could not be ingested (the others were)" in result.output
    for path in (header_wrong, missing, empty):
        assert f"stream csv:{path.stem}: not ingested: " in result.output and str(path) in result.output
    assert "stream csv:taken: not ingested: stream 'csv:taken' holds coinbase events" in result.output
    assert "total: 6 files, 4 not ingested, " in result.output
    for path in good:
        assert raws(engine, f"csv:{path.stem}") == by_seq(path.read_text(encoding="utf-8-sig").splitlines()[1:])
    with engine.connect() as conn:
        names = set(conn.execute(sa.text("SELECT name FROM streams")).scalars())
    assert names == {"csv:part0", "csv:part1", "csv:taken"}  # no stream for a file that was not read
    out = run_json("ingest", "csv", *args, code=1)
    assert [f["error"] is None for f in out["files"]] == [True, False, False, False, False, True]  # type: ignore[index]


def test_what_cannot_make_a_run_is_refused_before_anything_is_read(
    db_env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write(tmp_path / "a" / "x.csv", SAMPLE[:3])
    write(tmp_path / "b" / "x.csv", SAMPLE[3:6])
    (tmp_path / "none").mkdir()
    for args, said in [
        ([str(tmp_path / "a" / "x.csv"), str(tmp_path / "b" / "x.csv")], "would both go to stream 'csv:x'"),
        ([str(tmp_path / "none")], "holds no .csv file"),
        ([str(tmp_path / "a" / "*.txt")], "no file matches"),
        ([str(tmp_path / "a" / "x.csv"), "-"], "'-' (stdin) is read alone"),
    ]:
        result = CliRunner().invoke(cli, ["ingest", "csv", *args])
        assert result.exit_code == 2 and said in result.output, result.output
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM streams")).scalar() == 0
    # With one stream named, the two files go to it.
    run("ingest", "csv", "-s", "csv:x", str(tmp_path / "a" / "x.csv"), str(tmp_path / "b" / "x.csv"))
    assert raws(engine, "csv:x") == by_seq(SAMPLE[:6])


def _state(engine: Engine, stream: str) -> dict[str, list[tuple[object, ...]]]:
    """The stream's events, gaps and rejects, without the rejects' source (the file's path)."""
    state = stream_state(engine, stream)
    return {**state, "rejects": [row[1:] for row in state["rejects"]]}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_a_killed_multi_file_run_resumes_to_the_undisturbed_result(
    seed: int, database_url: URL, engine: Engine, tmp_path: Path
) -> None:
    calm_dir, killed_dir = tmp_path / "calm", tmp_path / "killed"
    calm_dir.mkdir()
    killed_dir.mkdir()
    names = [f"f{i}" for i in range(6)]
    for i, name in enumerate(names):  # messy files: rejects, gaps, late rows; each 2-3 copies of the sample
        _messy_file(calm_dir / f"calm_{name}.csv", copies=2 + i % 2)
        (killed_dir / f"{name}.csv").write_bytes((calm_dir / f"calm_{name}.csv").read_bytes())
    env = {**os.environ, "LEDGER_DATABASE_URL": database_url.render_as_string(hide_password=False)}

    def ingest(folder: Path) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "ledger.cli", "ingest", "csv", str(folder), "--batch-size", "3000"]
        return track(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

    started = time.monotonic()
    assert ingest(calm_dir).wait(timeout=300) == 0
    calm = time.monotonic() - started
    rng = random.Random(seed)
    kills = 0
    for _ in range(3):
        proc = ingest(killed_dir)
        time.sleep(rng.uniform(0.1, 0.3) * calm + 0.3)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    final = ingest(killed_dir)
    assert final.wait(timeout=300) == 0, final.stderr.read() if final.stderr else ""
    assert kills >= 2, "the ingest finished before it could be killed: make the files larger"
    for name in names:
        calm_state, killed_state = _state(engine, f"csv:calm_{name}"), _state(engine, f"csv:{name}")
        assert len(calm_state["events"]) > 60_000 and calm_state["rejects"] and calm_state["gaps"]
        assert killed_state == calm_state, name


def test_the_library_ingests_many_files_with_progress_over_all_of_them(
    db_env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    import ledger

    files = parts(tmp_path / "lib", 3)
    seen: list[int] = []
    with ledger.open() as lg:
        assert lg.csv_files([str(tmp_path / "lib")]) == [(p, f"csv:{p.stem}") for p in files]
        summaries = lg.ingest_csv_files([tmp_path / "lib"], batch_size=1000, progress=seen.append)
    assert [s.stream for s in summaries] == [f"csv:{p.stem}" for p in files]
    lines = [len(p.read_text(encoding="utf-8-sig").splitlines()) - 1 for p in files]
    assert [s.events_stored for s in summaries] == lines
    assert seen == sorted(seen) and seen[-1] == sum(p.stat().st_size for p in files)
    assert all(s.error is None and s.seconds > 0 for s in summaries)


@pytest.mark.slow
def test_ctrl_c_in_a_multi_file_run_stores_whole_lines_and_the_same_command_resumes(
    database_url: URL, engine: Engine, tmp_path: Path
) -> None:
    folder, calm = tmp_path / "sig", tmp_path / "calm"
    folder.mkdir()
    calm.mkdir()
    for i in range(8):
        _messy_file(folder / f"f{i}.csv", copies=2)
        (calm / f"calm_f{i}.csv").write_bytes((folder / f"f{i}.csv").read_bytes())
    env = {**os.environ, "LEDGER_DATABASE_URL": database_url.render_as_string(hide_password=False)}
    args = [sys.executable, "-m", "ledger.cli", "ingest", "csv", str(folder), "--batch-size", "2000", "-f", "json"]
    proc = track(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    deadline = time.monotonic() + 120
    with engine.connect() as conn:  # wait for the first commits, then stop it
        while conn.execute(sa.text("SELECT count(*) FROM events")).scalar() == 0 and time.monotonic() < deadline:
            conn.commit()
            time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert b"stopped by SIGINT in " in err and b"run the same command again to resume" in err
    stopped = json.loads(out)
    begun = stopped["files"]
    assert begun[-1]["interrupted"] and not any(f["interrupted"] for f in begun[:-1])
    assert stopped["total"]["not_begun"] == 8 - len(begun)
    again = subprocess.run(args, env=env, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()
    resumed = json.loads(again.stdout)["files"]
    # The file that was stopped goes on after its last stored line; those before are read again
    # (their lines are duplicates); every file ends with the lines of its own.
    last = begun[-1]
    [same] = [f for f in resumed if f["source"] == last["source"]]
    if last["lines"]:
        assert same["resumed_from_line"] == last["lines"] + 2
    undisturbed = [sys.executable, "-m", "ledger.cli", "ingest", "csv", str(calm), "--batch-size", "2000"]
    assert subprocess.run(undisturbed, env=env, capture_output=True, timeout=300).returncode == 0
    for i in range(8):
        got, want = _state(engine, f"csv:f{i}"), _state(engine, f"csv:calm_f{i}")
        assert got["events"] == want["events"] and got["rejects"] == want["rejects"], i
        # A stop commits the batch in hand, so batches end elsewhere than in an undisturbed
        # run: a late row that came in the next batch leaves a 'filled' gap row of its own.
        # The gaps still open are the same.
        assert [g for g in got["gaps"] if g[2] == "open"] == [g for g in want["gaps"] if g[2] == "open"], i


def test_an_ingest_whose_lock_connection_is_lost_stops_before_writing_more(
    db_env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    import threading

    import ledger
    from ledger.errors import LockLost

    path = _messy_file(tmp_path / "locked.csv", copies=6)
    killed: list[int] = []

    def kill_the_lock_holder() -> None:
        query = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = 7894 AND granted"  # 0x1ED6
        with engine.connect() as conn:
            for _ in range(2000):
                if conn.execute(sa.text("SELECT count(*) FROM events")).scalar():
                    pids = list(conn.execute(sa.text(query)).scalars())
                    if pids:
                        conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pids[0]})
                        killed.extend(pids)
                        return
                conn.commit()
                time.sleep(0.01)

    killer = threading.Thread(target=kill_the_lock_holder)
    killer.start()
    with pytest.raises(LockLost, match="lost its lock on the stream"), ledger.open() as lg:
        lg.ingest_csv(path, stream="csv:locked", batch_size=500)
    killer.join()
    assert killed
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM events")).scalar()
        done = conn.execute(sa.text("SELECT lines_done FROM ingest_checkpoints")).scalar()
    assert stored and done  # what was committed before stays, with its checkpoint...
    with ledger.open() as lg:  # ...and the same call resumes after it, to the undisturbed result
        assert lg.ingest_csv(path, stream="csv:locked", batch_size=500).resumed_from_line == done + 1
        lg.ingest_csv(path, stream="csv:calm", batch_size=500)
    assert _state(engine, "csv:locked") == _state(engine, "csv:calm")
