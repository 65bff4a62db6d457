"""How a command prints its result: ``-f/--format table|csv|json`` (the rules of docs/cli.md).

Rules:

* **Every command that reports** takes ``-f/--format`` (:func:`format_option`): ``table``, the
  default, is for people (aligned columns under a header where the result is rows; a few
  lines of text where it is one summary); ``csv`` and ``json`` are for programs and carry
  the same fields under the same names (a CSV header is the JSON keys). The old ``--json``
  is a hidden alias of ``--format json``.
* **JSON** is one document: an array of objects for a list of rows, an object for one
  result. A command that runs until stopped (``status --watch``, ``watch``) prints one
  compact document per line instead. Integers (seqs, counts) are numbers; exact decimals
  (prices, sizes) are strings of their exact text, so that no reader turns them into floats;
  times are strings in the one time format; absent values are null.
* **CSV** is a header line, then one line per row (RFC 4180 quoting, LF line ends). An
  absent value is an empty cell; a list or an object in a cell is its compact JSON.
* **Times**, in every format and in messages, are ISO 8601 in UTC with six fractional
  digits, ``2021-08-03T05:00:00.123456+00:00`` (:func:`~ledger.services.read.times.iso_time`).
* Results go to stdout; progress, warnings and errors go to stderr.
"""

from __future__ import annotations

import csv
import functools
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from ledger.cli._app import printable
from ledger.services.read.times import iso_time

__all__ = [
    "FORMATS",
    "cell",
    "echo_csv",
    "echo_json",
    "echo_one",
    "echo_rows",
    "echo_table",
    "format_option",
    "json_ready",
]

F = TypeVar("F", bound=Callable[..., Any])

FORMATS = ("table", "csv", "json")
_FORMAT_HELP = "table: for people; csv: a header and a line per row; json: for programs (see docs/cli.md)."


def format_option(func: F) -> F:
    """``-f/--format table|csv|json`` (default table) and the hidden ``--json`` alias; the
    command gets ``fmt``."""

    @functools.wraps(func)
    def wrapper(*args: Any, fmt: str, as_json: bool, **kwargs: Any) -> Any:
        if as_json:
            ctx = click.get_current_context()
            if fmt != "json" and ctx.get_parameter_source("fmt") == ParameterSource.COMMANDLINE:
                raise click.UsageError(f"--json means --format json: it cannot go with --format {fmt}")
            fmt = "json"
        return func(*args, fmt=fmt, **kwargs)

    wrapper = click.option("--json", "as_json", is_flag=True, hidden=True, help="Same as --format json.")(wrapper)
    wrapper = click.option(
        "-f",
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help=_FORMAT_HELP,
    )(wrapper)
    return wrapper  # type: ignore[return-value]


def json_ready(value: Any) -> Any:
    """``value`` with what JSON has no type for made into text: times in the one format,
    exact decimals as their text, tuples as lists."""
    if isinstance(value, datetime):
        return iso_time(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def echo_json(data: Any, *, line: bool = False) -> None:
    """``data`` as one JSON document: indented, or on one line (``line``, for commands that
    print one document per round)."""
    click.echo(json.dumps(json_ready(data), indent=None if line else 2))


def cell(value: Any) -> str:
    """One CSV or table cell: empty for an absent value, times in the one format, a list or
    an object as its compact JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(json_ready(value), separators=(",", ":"))
    ready = json_ready(value)
    return ready if isinstance(ready, str) else str(ready)


def echo_csv(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, header: bool = True) -> None:
    """A CSV header (unless ``header`` is false: a later round of the same table), then one
    line per row."""
    out = csv.writer(sys.stdout, lineterminator="\n")
    if header:
        out.writerow(columns)
    for row in rows:
        out.writerow([cell(v) for v in row])
    sys.stdout.flush()


_TABLE_SAMPLE = 200  # rows looked at to size the columns; the rest stream


def echo_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, count: str | None = "row") -> None:
    """Aligned columns under a header: the widths are those of the first rows (the rest
    stream), cells made printable. Ends with the number of rows (``count`` names them;
    None: no count line)."""
    iterator: Iterator[Sequence[Any]] = iter(rows)
    head: list[list[str]] = []
    for row in iterator:
        head.append([printable(cell(v)) for v in row])
        if len(head) >= _TABLE_SAMPLE:
            break
    widths = [max([len(c), *(len(r[i]) for r in head)]) for i, c in enumerate(columns)]
    click.echo(" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    click.echo("-+-".join("-" * w for w in widths))
    n = 0
    for cells in head:
        click.echo(" | ".join(v.ljust(w) for v, w in zip(cells, widths, strict=True)).rstrip())
        n += 1
    for row in iterator:
        cells = [printable(cell(v)) for v in row]
        click.echo(" | ".join(v.ljust(w) for v, w in zip(cells, widths, strict=True)).rstrip())
        n += 1
    if count is not None:
        click.echo(f"({n} {count}{'s' if n != 1 else ''})")


def echo_one(fmt: str, data: Mapping[str, Any], *, table: Callable[[], None]) -> None:
    """One result in ``fmt``: a JSON object, a CSV header and one line, or what ``table``
    prints for people."""
    if fmt == "json":
        echo_json(data)
    elif fmt == "csv":
        echo_csv(list(data), [list(data.values())])
    else:
        table()


def echo_rows(
    fmt: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    columns: Sequence[str],
    table: Callable[[], None] | None = None,
    count: str = "row",
) -> None:
    """A list of rows in ``fmt``: JSON objects, CSV lines or a table with ``columns`` (the
    keys of each row), or what ``table`` prints for people instead of aligned columns."""
    if fmt == "json":
        echo_json([{c: r.get(c) for c in columns} for r in rows])
    elif fmt == "csv":
        echo_csv(columns, ([r.get(c) for c in columns] for r in rows))
    elif table is not None:
        table()
    else:
        echo_table(columns, ([r.get(c) for c in columns] for r in rows), count=count)
