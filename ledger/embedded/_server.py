"""The :class:`EmbeddedPostgres` lifecycle: the cluster, starting or reusing the server, the
database, and the reference count of ledger processes that decides when it stops."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
import signal
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg
from psycopg import sql

from ledger.embedded._common import (
    _LOG_ROTATE_BYTES,
    _PORT,
    _SAFE_PATH,
    _SOCKET_NAME,
    _SOCKET_PATH_MAX,
    DATABASE_NAME,
    DB_ROLE,
    _tail,
)
from ledger.embedded._install import _Install
from ledger.embedded._users import _ServerHome, _ServerUser
from ledger.errors import EmbeddedServerError

log = logging.getLogger("ledger.embedded")


# --------------------------------------------------------------------------- processes


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


# --------------------------------------------------------------------------- the server


class EmbeddedPostgres(_ServerHome):
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
        with _signals_held():
            return self._start()

    def _start(self) -> str:
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
        with _signals_held():
            self._stop()

    def _stop(self) -> None:
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

_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Rule: a SIGINT, SIGTERM or SIGHUP that arrives while the server is being started or
    let go of waits until that is done, then goes to the handler that was in place. So a
    signal never leaves a server started but not yet counted (its owner file unwritten: no
    one would ever stop it), nor a client entry half removed, and a command that the signal
    then ends still lets go of the server (its ``finally`` blocks and the atexit hook run).
    Only the main thread can do this (Python runs signal handlers there); elsewhere nothing
    is held. A handler installed outside Python, which cannot be put back, is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {}
    for sig in _HELD_SIGNALS:
        handler = signal.getsignal(sig)
        if handler is None or handler is signal.SIG_IGN:
            continue
        previous[sig] = handler
        signal.signal(sig, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(pending):  # each once, in the order they came
            signal.raise_signal(signum)


def _is_pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
