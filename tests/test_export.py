"""``ledger export l1 -o PATH``: what it does to what is at PATH, write errors, and streams
with no projection or one behind the log."""

from __future__ import annotations

import io
import os
import select
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks.generate_l3 import generate
from ledger.cli import cli

STREAM = "csv:small"


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def _ledger(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "ledger.cli", *args], env=env, capture_output=True, timeout=120)


def _small_file(path: Path, n: int = 3000, seed: int = 3) -> Path:
    with path.open("w", encoding="utf-8", newline="\n") as out:
        generate(n, seed, out)
    return path


@pytest.fixture
def projected(db_env: dict[str, str], tmp_path: Path) -> bytes:
    """A small stream, ingested and projected; the bytes its export must give."""
    run("ingest", "csv", str(_small_file(tmp_path / "small.csv")), "--stream", STREAM)
    run("project")
    reference = tmp_path / "reference.csv"
    run("export", "l1", STREAM, "-o", str(reference))
    data = reference.read_bytes()
    assert data.count(b"\n") > 100
    return data


def test_a_fifo_is_written_to_not_replaced(projected: bytes, tmp_path: Path) -> None:
    fifo = tmp_path / "l1.fifo"
    os.mkfifo(fifo)
    # Read and write ends held by the test: opening it for writing never blocks, and the
    # reader gives up after a quiet while instead of hanging when nothing comes.
    fd = os.open(fifo, os.O_RDWR)
    received = bytearray()

    def read() -> None:
        while len(received) < len(projected) and select.select([fd], [], [], 10)[0]:
            received.extend(os.read(fd, 1 << 16))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        out = run("export", "l1", STREAM, "-o", str(fifo))
        reader.join(30)
    finally:
        os.close(fd)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a regular file"
    assert bytes(received) == projected
    rows = projected.count(b"\n") - 1  # less the header
    assert f"wrote {rows} L1 rows" in out


def test_a_symlink_is_followed_to_its_target(projected: bytes, tmp_path: Path) -> None:
    target = tmp_path / "real.csv"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    out = run("export", "l1", STREAM, "-o", str(link))
    assert link.is_symlink() and os.readlink(link) == str(target), "the link was replaced"
    assert target.read_bytes() == projected
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640, "the file it replaced kept its mode"
    assert str(target) in out
    # a dangling link: its target is created
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "new.csv")
    run("export", "l1", STREAM, "-o", str(dangling))
    assert dangling.is_symlink() and (tmp_path / "new.csv").read_bytes() == projected
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], "no temporary file left"


def test_dev_stdout_is_written_through(projected: bytes, db_env: dict[str, str], tmp_path: Path) -> None:
    # /dev/stdout itself, and a link of one's own to this process's standard output
    own = tmp_path / "out"
    own.symlink_to("/proc/self/fd/1")
    for target in ("/dev/stdout", str(own)):
        done = _ledger(db_env, "export", "l1", STREAM, "-o", target)
        assert done.returncode == 0, done.stderr
        assert done.stdout == projected, target  # the note goes to stderr
    assert own.is_symlink()


def _full_device(tmp_path: Path) -> Path:
    """A character device that fails every write with ENOSPC, like /dev/full: a node of
    our own where we may make one (root), else /dev/full itself (not writable as a folder
    entry by others, so nothing can replace it)."""
    node = tmp_path / "full"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except OSError:
        return Path("/dev/full")
    return node


def test_a_character_device_is_written_to_and_a_write_error_is_one_line(
    projected: bytes, db_env: dict[str, str], tmp_path: Path
) -> None:
    device = _full_device(tmp_path)
    done = _ledger(db_env, "export", "l1", STREAM, "-o", str(device))
    assert stat.S_ISCHR(os.lstat(device).st_mode), "the device node was replaced by a regular file"
    err = done.stderr.decode()
    assert done.returncode == 1, (done.stdout, err)
    assert err.count("\n") == 1 and err.startswith("Error: ") and "No space left on device" in err, err
    assert str(device) in err


def test_a_full_stdout_is_one_error_line(projected: bytes, db_env: dict[str, str]) -> None:
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [sys.executable, "-m", "ledger.cli", "export", "l1", STREAM, "-o", "-"],
            env=db_env,
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert err.count("\n") == 1 and err.startswith("Error: ") and "No space left on device" in err, err


def test_an_unwritable_folder_is_one_error_line(projected: bytes, db_env: dict[str, str], tmp_path: Path) -> None:
    # /proc/self: no file can be created there, for root either
    done = _ledger(db_env, "export", "l1", STREAM, "-o", "/proc/self/l1.csv")
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert err.count("\n") == 1 and err.startswith("Error: cannot write /proc/self/l1.csv"), err


def test_a_stream_never_projected_is_an_error_not_an_empty_file(db_env: dict[str, str], tmp_path: Path) -> None:
    run("ingest", "csv", str(_small_file(tmp_path / "small.csv")), "--stream", STREAM)
    target = tmp_path / "l1.csv"
    result = CliRunner().invoke(cli, ["export", "l1", STREAM, "-o", str(target)])
    assert result.exit_code == 1, result.output
    assert "has no projection yet" in result.output and f"ledger project {STREAM}" in result.output
    assert not target.exists(), "no header-only file"


def test_a_projection_behind_the_log_is_exported_with_a_warning(db_env: dict[str, str], tmp_path: Path) -> None:
    text = io.StringIO()
    generate(3000, 5, text)
    header, *rows = text.getvalue().splitlines(keepends=True)
    first, rest = tmp_path / "first.csv", tmp_path / "rest.csv"
    first.write_text(header + "".join(rows[:2000]), encoding="utf-8")
    rest.write_text(header + "".join(rows[2000:]), encoding="utf-8")
    run("ingest", "csv", str(first), "--stream", STREAM)
    run("project")
    run("ingest", "csv", str(rest), "--stream", STREAM)
    done = _ledger(db_env, "export", "l1", STREAM, "-o", str(tmp_path / "l1.csv"))
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert "1000 events behind the log" in err and f"ledger project {STREAM}" in err, err
    assert (tmp_path / "l1.csv").exists()
    # up to date: no warning
    run("project")
    done = _ledger(db_env, "export", "l1", STREAM, "-o", str(tmp_path / "l1.csv"))
    assert done.returncode == 0 and b"behind" not in done.stderr, done.stderr
