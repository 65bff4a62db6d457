"""Every command has --help, and every help text shows an example."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ledger.cli import cli


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out += _commands(command, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


@pytest.mark.parametrize("path", _commands(cli), ids=lambda p: " ".join(p) or "ledger")
def test_help_shows_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output
    assert "ledger " in result.output.split("Example:", 1)[1]


def test_the_table_of_commands_is_the_commands() -> None:
    """``ledger --help`` lists the commands from a table without importing them: the table
    names every command, the module that defines it, and the first paragraph of its help."""
    import importlib

    from ledger.cli._app import COMMANDS

    commands = cli.commands  # every module loaded
    package = Path(cli.callback.__code__.co_filename).parent if cli.callback else None
    assert package is not None
    modules_of_commands = {f"ledger.cli.{p.stem}" for p in package.glob("*.py") if not p.stem.startswith("_")}
    assert {m for modules, _ in COMMANDS.values() for m in modules} == modules_of_commands
    assert sorted(commands) == sorted(COMMANDS)
    for name, (modules, first_paragraph) in COMMANDS.items():
        command = commands[name]
        assert command.callback is not None and command.callback.__module__ == modules[0], name
        assert " ".join((command.help or "").partition("\n\n")[0].split()) == first_paragraph, name
        for module in modules:  # each module listed adds to this command
            source = importlib.import_module(module).__file__
            assert source is not None, module
            assert module == modules[0] or f"@{name}." in Path(source).read_text(encoding="utf-8"), module


def test_help_imports_no_command_and_lists_them_as_click_would() -> None:
    """The lazy listing equals click's own listing of the loaded commands, and ``--help``
    (and one command's help) import no other command's module."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from ledger.cli import cli\n"
        "out = CliRunner().invoke(cli, sys.argv[1:]).output\n"
        "print(sorted(m for m in sys.modules if m.startswith('ledger.cli.') and m != 'ledger.cli._app'"
        " and m != 'ledger.cli._signals'))\n"
        "print(sorted(m for m in ('sqlalchemy', 'psycopg', 'ledger.api') if m in sys.modules))\n"
        "print(out, end='')\n"
    )

    def run(*args: str) -> tuple[str, str, str]:
        done = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True, timeout=60
        )
        modules, heavy, out = done.stdout.split("\n", 2)
        return modules, heavy, out

    modules, heavy, lazy = run("--help")
    assert modules == "[]" and heavy == "[]", (modules, heavy)
    _ = cli.commands  # all loaded: click's own listing
    assert lazy == CliRunner().invoke(cli, ["--help"]).output
    modules, heavy, _out = run("sql", "--help")
    assert "ledger.cli.sql" in modules and "ledger.cli.project" not in modules, modules
    assert heavy == "[]", heavy


def test_a_group_is_whole_when_one_of_its_modules_was_imported_first() -> None:
    """`ingest` lives in two modules: importing the first one (as a library user or a test
    may) must not leave `ingest dbn` out of a later lookup."""
    import subprocess
    import sys

    probe = (
        "import ledger.cli.ingest\n"
        "from click.testing import CliRunner\n"
        "from ledger.cli import cli\n"
        "result = CliRunner().invoke(cli, ['ingest', 'dbn', '--help'])\n"
        "print(result.exit_code, 'Databento' in result.output)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.split() == ["0", "True"], done.stdout + done.stderr


def test_the_ledger_process_freezes_what_it_opened_and_a_host_program_is_left_alone(db_env: dict[str, str]) -> None:
    """main() (the `ledger` process) moves what a command imported and opened out of the
    cyclic GC's sight once the database is open; commands run inside another program
    (CliRunner here) leave that program's GC as it is."""
    import gc
    import subprocess
    import sys

    from click.testing import CliRunner

    from ledger.cli import cli

    frozen = gc.get_freeze_count()
    assert CliRunner().invoke(cli, ["status"], env=db_env).exit_code == 0
    assert gc.get_freeze_count() == frozen
    probe = (
        "import gc, sys\n"
        "from ledger.cli import _app\n"
        "sys.argv = ['ledger', 'status']\n"
        "try:\n    _app.main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print('frozen', code, gc.get_freeze_count() > 10_000)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120, env=db_env
    )
    assert done.stdout.split()[-3:] == ["frozen", "0", "True"], done.stdout + done.stderr
