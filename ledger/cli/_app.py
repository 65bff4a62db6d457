"""The ``ledger`` command line: a thin click layer over the services.

Each command parses its options, opens the database, calls one service function and turns
a :class:`~ledger.errors.LedgerError` (or a driver error) into a one-line error and a
non-zero exit code. The commands live in modules by theme (db, ingest, project, reports);
this package puts them on one click group.
"""

from __future__ import annotations

import functools
import gc
import importlib
import re
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ledger.cli._signals import Terminated, end_on_termination
from ledger.errors import LedgerError, first_line

if TYPE_CHECKING:  # the database modules load SQLAlchemy and psycopg: only when a command needs them
    from ledger.api import Ledger

__all__ = [
    "STREAM",
    "STREAM_NAME_HELP",
    "cli",
    "fail_on_ledger_error",
    "level_dict",
    "level_table",
    "main",
    "open_ledger",
    "printable",
    "printable_text",
    "progress_bar",
    "stream_name_problem",
    "streams_argument",
]

F = TypeVar("F", bound=Callable[..., Any])


# Human output shows text that came from input (rejected lines, stream and file names,
# reasons quoting a field) as it is, except what a terminal would act on instead of
# showing: C0 and C1 control characters and DEL become visible escapes (``\x1b``, ``\t``,
# ``\n``), as do the Unicode line separators and the bidirectional overrides, which can
# make a line show something else than it holds. So a line holding ``ESC ]0;...BEL``
# cannot retitle the terminal. Printable non-ASCII text (accented letters) stays as it is.
# JSON output escapes by itself.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) <= 0xFF else f"\\u{ord(char):04x}"


def printable(value: object) -> str:
    """``value`` as text safe to print in human output: one line, controls escaped
    (see the rule above)."""
    text = str(value)
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


def printable_text(text: str) -> str:
    """A message of several lines (an error, a log record with its traceback): each line
    made :func:`printable`, the line breaks kept."""
    return "\n".join(printable(line) for line in text.split("\n"))


# Rule: a stream name is any text that is not empty and holds no control character (C0,
# DEL, C1). Names are printed one per line in reports, quoted in messages and typed on
# command lines, where a newline or an escape sequence would break or forge output; and an
# empty --stream would quietly mean the default name. The rule is checked wherever a name
# comes in: --stream, a STREAM argument, and the names derived from a file or a product.
# Other text (accented letters, spaces, any script) is fine.
STREAM_NAME_HELP = (
    "A stream name is any non-empty text without control characters (C0, DEL, C1), "
    "for example csv:l3_data_v3.1 or coinbase:BTC-USD."
)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def stream_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a stream name (see the rule above), or None when it can."""
    if not name:
        return "a stream name cannot be empty"
    found = _CONTROL.search(name)
    if found is not None:
        return (
            f"'{printable(name)}' is not a stream name: it holds the control character "
            f"{printable(found.group())} (a stream name is any non-empty text without control characters)"
        )
    return None


class _StreamName(click.types.StringParamType):
    name = "stream"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        name = super().convert(value, param, ctx)
        problem = stream_name_problem(name)
        if problem is not None:
            self.fail(problem, param, ctx)
        return name


#: The click type of a stream name option or argument: refuses what the rule above refuses.
STREAM = _StreamName()


def streams_argument(func: F) -> F:
    """``[STREAM]...``: the streams a command works on (none: all of them), as positional
    arguments by the convention of docs/cli.md, with the old ``-s/--stream`` (repeatable) kept
    as a hidden alias; the command gets ``streams``, the names of both in the order given."""

    @functools.wraps(func)
    def wrapper(*args: Any, streams: tuple[str, ...], streams_alias: tuple[str, ...], **kwargs: Any) -> Any:
        return func(*args, streams=tuple(dict.fromkeys((*streams, *streams_alias))), **kwargs)

    wrapper = click.option(
        "-s", "--stream", "streams_alias", type=STREAM, multiple=True, hidden=True, help="Same as STREAM."
    )(wrapper)
    wrapper = click.argument("streams", nargs=-1, type=STREAM, metavar="[STREAM]...")(wrapper)
    return wrapper  # type: ignore[return-value]


#: Each top-level command: the modules that define it (and its subcommands) and the first
#: paragraph of its help. ``ledger --help`` lists the commands from here and a command's
#: modules are imported only when it is looked up, so that a command imports no other
#: command's dependencies (tests/test_cli_help.py checks this table against the commands).
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "book": (("ledger.cli.project",), "Show a stream's book now, or at any past seq or time."),
    "db": (("ledger.cli.db",), "Database housekeeping."),
    "export": (
        ("ledger.cli.export",),
        "Write a stream's history out for research: L1 rows, L2 depth, trades, events.",
    ),
    "gaps": (
        ("ledger.cli.reports",),
        "List the runs of seqs missing from a stream's log: first and last seq, how many, status (open, "
        "filled, or snapshot: made up for by the venue's book at resolved_by_seq), when found and resolved, "
        "and whether the projector skipped it.",
    ),
    "ingest": (("ledger.cli.ingest", "ledger.cli.ingest_dbn"), "Append raw L3 events to the event log."),
    "plot": (
        ("ledger.cli.plot",),
        "Draw a stream from --from to --to: best bid and ask (and mid) over time, trades as points (green: the "
        "buyer took liquidity, red: the seller, grey: not said), and the size resting in the top N levels as a "
        "heat map behind them.",
    ),
    "project": (
        ("ledger.cli.project",),
        "Replay the event log into books and record every best bid/offer change (L1).",
    ),
    "psql": (
        ("ledger.cli.sql",),
        "Open psql on the ledger database, keeping the embedded PostgreSQL up while it runs.",
    ),
    "rejects": (
        ("ledger.cli.reports",),
        "List the input rows of a stream that could not be stored, with file, line and reason.",
    ),
    "run": (("ledger.cli.live",), "Capture Coinbase products and project them live, in one process."),
    "snapshots": (("ledger.cli.project",), "List and prune the projector's book snapshots."),
    "sql": (
        ("ledger.cli.sql",),
        "Run a SQL query on the ledger database (the embedded one too) and print its rows.",
    ),
    "status": (
        ("ledger.cli.reports",),
        "Per stream: events, seq range, gaps, duplicates, rejects, projector position and lag, latest book "
        "snapshot, last ingest activity.",
    ),
    "watch": (
        ("ledger.cli.live",),
        "Show a stream's top levels live, redrawn as ingest appends events (Ctrl-C to stop).",
    ),
}


def load_commands() -> None:
    """Import every command's module (the full click tree: for documentation and tests)."""
    for modules, _ in COMMANDS.values():
        for module in modules:
            importlib.import_module(module)


class _Cli(click.Group):
    """The ``ledger`` group: its commands are loaded when looked up (see :data:`COMMANDS`),
    and an error message (a ClickException, which is also what a LedgerError becomes) is
    made printable before click shows it, whichever command raised it.

    ``commands`` (click's dict of them) loads them all first; click's own lookups go through
    :meth:`get_command` and :meth:`list_commands`, which load only what they return."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loaded: dict[str, click.Command] = {}
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def commands(self) -> dict[str, click.Command]:
        load_commands()
        return self._loaded

    @commands.setter
    def commands(self, value: dict[str, click.Command]) -> None:
        self._loaded = dict(value)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        name = name or cmd.name
        if name is None:
            raise TypeError("Command has no name.")
        self._loaded[name] = cmd

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        # Every module of the command, even when the command is loaded: a group whose
        # subcommands live in several modules (ingest: csv and coinbase, then dbn) is there
        # as soon as its first module is imported, by anyone, without the others.
        for module in COMMANDS.get(cmd_name, ((), ""))[0]:
            importlib.import_module(module)
        return self._loaded.get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self._loaded) | set(COMMANDS))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The list of commands, from :data:`COMMANDS` for those not loaded: no import."""
        listed: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            command = self._loaded.get(name)
            if command is None:  # click's own short help of the same text, without loading it
                command = click.Command(name, help=COMMANDS[name][1])
            if not command.hidden:
                listed.append((name, command))
        if listed:
            limit = formatter.width - 6 - max(len(name) for name, _ in listed)
            with formatter.section("Commands"):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in listed])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as e:
            e.message = printable_text(e.message)  # type: ignore[misc]  # typed Final, a plain attribute
            raise


@contextmanager
def open_ledger() -> Iterator[Ledger]:
    """The library's :class:`~ledger.api.Ledger` on the configured (or embedded) database:
    the one door of every command to the data."""
    from ledger.api import open as open_ledger_database

    try:
        with open_ledger_database() as ledger:
            if _process["freeze"]:
                # What the command has imported and opened so far (SQLAlchemy, psycopg, the
                # engine, ledger's modules) lives as long as the process: moved out of the
                # cyclic GC's sight, its collections no longer walk it again and again
                # (a projection 6-9% faster). Only in the `ledger` process (main), not when
                # the commands run inside another program (CliRunner, a test session).
                gc.freeze()
            yield ledger
    except LedgerError as e:
        raise click_error(e) from e


def level_table(bids: Sequence[Any], asks: Sequence[Any]) -> list[str]:
    """Bids and asks (LevelViews, best first) side by side, a header line first."""
    lines = [f"{'orders':>7} {'bid size':>12} {'bid':>12} | {'ask':<12} {'ask size':<12} {'orders':<7}"]
    for i in range(max(len(bids), len(asks))):
        left = f"{bids[i].orders:>7} {bids[i].size!s:>12} {bids[i].price!s:>12}" if i < len(bids) else " " * 33
        right = f"{asks[i].price!s:<12} {asks[i].size!s:<12} {asks[i].orders:<7}" if i < len(asks) else ""
        lines.append(f"{left} | {right}".rstrip())
    return lines


def level_dict(level: Any) -> dict[str, Any]:
    """A price level (a LevelView) as JSON has it: exact price and size as text (a price may
    be an int or a Decimal: the text is the same either way), and its number of orders."""
    return {"price": str(level.price), "size": str(level.size), "orders": level.orders}


class _CannotAnswer(click.ClickException):
    """A stream cannot answer at that point (exit code 3, as for a stream that stopped)."""

    exit_code = 3


def click_error(error: LedgerError) -> click.ClickException:
    """The one-line message and exit code the command line gives ``error``."""
    return (_CannotAnswer if error.exit_code == 3 else click.ClickException)(str(error))


def _driver_error(error: BaseException) -> bool:
    """Whether ``error`` comes from the database driver (or SQLAlchemy around it). Both are
    loaded by then if it does: checking costs no import."""
    psycopg = sys.modules.get("psycopg")
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    return (psycopg is not None and isinstance(error, psycopg.Error)) or (
        sqlalchemy_exc is not None and isinstance(error, sqlalchemy_exc.DBAPIError)
    )


def _compact_every(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    from ledger.services.read.depth import parse_duration

    try:
        return parse_duration(value) / 1_000_000
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def compact_every_option(func: F) -> F:
    """``--compact-every DURATION`` (``ingest coinbase``, ``run``, ``project --follow``): fold
    the command's streams into compressed blocks at that interval while it runs; the command
    gets ``compact_every`` in seconds, or None."""
    return click.option(
        "--compact-every",
        metavar="DURATION",
        callback=_compact_every,
        help="Fold the streams' older events into compressed blocks at this interval (e.g. 10m), "
        "up to the projector's position, or all when not projected: see `ledger db compact`.",
    )(func)


def compacting(ledger: Ledger, streams: Sequence[str] | None, every: float | None) -> AbstractContextManager[Any]:
    """While the block runs, fold ``streams`` (None or empty: every stream) every ``every``
    seconds (None: not at all): ``--compact-every``'s effect."""
    if every is None:
        return nullcontext()
    return ledger.compacting(streams, every)


def fail_on_ledger_error(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LedgerError as e:
            raise click_error(e) from e
        except Exception as e:
            if _driver_error(e):  # the one boundary for driver errors
                raise click.ClickException(f"database error: {first_line(e)}") from e
            raise

    return wrapper  # type: ignore[return-value]


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log more (SQL-level details stay off).")
@click.version_option(package_name="ledger")
def cli(verbose: bool) -> None:
    """Rebuild limit order books from Level-3 market data kept in PostgreSQL.

    Uses LEDGER_DATABASE_URL when set; otherwise an embedded PostgreSQL under LEDGER_HOME.

    \b
    Example:
      ledger ingest csv l3_data_v3.1.csv
      ledger project
      ledger export l1 csv:l3_data_v3.1 -o l1.csv
    """
    import logging  # here, not at the top: `ledger --help` starts without it

    class PrintableFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return printable_text(super().format(record))

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrintableFormatter("ledger: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    for noisy in ("alembic", "sqlalchemy", "psycopg"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # After a lost connection the pool logs each failed reset with a traceback; the command
    # itself says what happened and what to do.
    logging.getLogger("sqlalchemy.pool").setLevel(logging.WARNING if verbose else logging.CRITICAL)


@contextmanager
def progress_bar(total: int | None, label: str) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on a terminal (stderr); nothing when output is piped."""
    if total is None or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        done = 0

        def update(position: int) -> None:
            nonlocal done
            bar.update(position - done)
            done = position

        yield update


#: Set by :func:`main`: the commands run in a `ledger` process of their own.
_process = {"freeze": False}


def main() -> None:
    # Projecting and ingesting allocate and free millions of small objects (rows, orders,
    # L1 rows) that hardly ever form cycles: run the cycle collector every 100,000 new
    # objects rather than every 700, which cost a projection about a tenth of its time.
    gc.set_threshold(100_000, *gc.get_threshold()[1:])
    _process["freeze"] = True
    # SIGTERM and SIGHUP unwind the command like an exception, so that it lets go of the
    # embedded PostgreSQL (stopped when this was its last user): see ledger.cli._signals.
    end_on_termination()
    try:
        cli(prog_name="ledger")
    except Terminated as e:
        click.echo(f"ledger: stopped by {signal.Signals(e.signum).name}", err=True)
        raise
