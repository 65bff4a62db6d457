"""The files of an ingest run, from what the command line names: files, folders and globs.

Rules (``ledger ingest csv A B ...``, :meth:`ledger.api.Ledger.ingest_csv_files`):

- an argument that is a file is that file; a folder stands for the files in it (not below)
  whose name ends with the venue's suffix (``.csv``, any case), in name order; any other
  argument holding ``*``, ``?`` or ``[`` is a glob that ledger expands itself (quote it so
  the shell does not; ``**`` spans folders), its files in name order. The files come in
  the order of the arguments; a file named twice is read once, where it first comes;
- a folder without such a file, or a glob that matches no file, is a usage error, said
  before anything is read; a file that is not there is an error of that file only (see
  :func:`~ledger.services.ingest.csv_file.ingest_csv_files`);
- each file is its own stream, ``<venue>:<file name without extension>``, unless one
  stream is given: then every file is appended to it, in that order (daily files of one
  product, say). Two files that would give the same stream name are a usage error (name
  one stream for both, or ingest them in separate runs), so that files are never merged
  into one stream by accident.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("b.csv", "a.CSV", "notes.txt"):
    ...     _ = (folder / name).write_text("x")
    >>> [p.name for p in expand([str(folder)], ".csv")]
    ['a.CSV', 'b.csv']
    >>> [p.name for p in expand([str(folder / "*.txt"), str(folder / "b.csv")], ".csv")]
    ['notes.txt', 'b.csv']
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from ledger.errors import InputError

__all__ = ["InputsError", "default_stream", "expand", "streams_of"]

_GLOB_CHARACTERS = frozenset("*?[")


class InputsError(InputError):
    """The files named do not make a run (an empty folder, a glob matching nothing, two
    files giving one stream name): said before anything is read (the command line's usage
    error, exit code 2)."""


def expand(arguments: Sequence[str], suffix: str | tuple[str, ...]) -> list[Path]:
    """The files ``arguments`` name (see the module's rules), in order, each once; a folder's
    files are those whose name ends with ``suffix`` (or one of several), in any case."""
    files: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.name.lower().endswith(suffix) and p.is_file())
            if not found:
                wanted = suffix if isinstance(suffix, str) else " or ".join(suffix)
                raise InputsError(f"the folder {argument} holds no {wanted} file")
            files.extend(found)
        elif not path.exists() and _GLOB_CHARACTERS.intersection(argument):
            matched = sorted(Path(p) for p in glob.glob(argument, recursive=True) if Path(p).is_file())
            if not matched:
                raise InputsError(f"no file matches {argument}")
            files.extend(matched)
        else:
            files.append(path)  # missing or unreadable: that file's error when its turn comes
    seen: set[Path] = set()
    unique = []
    for file in files:
        key = file.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(file)
    return unique


def default_stream(venue: str, path: str | Path) -> str:
    """A file's stream when none is named: ``<venue>:<file name without extension>``."""
    return f"{venue}:{Path(path).stem}"


def streams_of(files: Sequence[Path], venue: str, stream: str | None) -> list[str]:
    """The stream of each file: ``stream`` for all, else each its default; InputsError
    when two files would give the same default name."""
    if stream is not None:
        return [stream] * len(files)
    names = [default_stream(venue, f) for f in files]
    first: dict[str, Path] = {}
    for name, file in zip(names, files, strict=True):
        if name in first:
            raise InputsError(
                f"{first[name]} and {file} would both go to stream {name!r}: give --stream to append "
                "both to one stream, or ingest them in separate runs"
            )
        first[name] = file
    return names
