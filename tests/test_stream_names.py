"""Stream names are checked wherever one comes in: not empty, no control characters."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ledger.cli import cli
from tests.conftest import V31

BAD = [
    ("", "empty"),
    ("csv:a\nb", "\\n"),
    ("csv:\x1b]0;x\x07", "\\x1b"),
    ("csv:del\x7f", "\\x7f"),
    ("csv:c1\x9b", "\\x9b"),
    ("csv:nul\x00", "\\x00"),
    ("csv:tab\t", "\\t"),
]


def _refused(args: list[str], shown: str) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, (args, result.output)
    assert "stream name" in result.output and shown in result.output, result.output
    return result.output


@pytest.mark.parametrize(("name", "shown"), BAD, ids=[shown for _, shown in BAD])
def test_bad_names_are_refused_everywhere(db_env: dict[str, str], name: str, shown: str) -> None:
    out = _refused(["ingest", "csv", str(V31), "--stream", name], shown)
    assert not any(c in out for c in "\x00\x1b\x7f\x9b\t"), out  # the name is shown escaped
    assert len([line for line in out.splitlines() if line.startswith("Error: ")]) == 1, out
    _refused(["project", "--stream", name], shown)
    _refused(["project", "--rebuild", "--stream", name], shown)
    _refused(["snapshots", "prune", "--keep", "1", "--stream", name], shown)
    for command in (["status"], ["gaps"], ["rejects"], ["book"], ["export", "l1"], ["snapshots", "list"], ["watch"]):
        _refused([*command, name], shown)
    # nothing was created
    assert "no streams yet" in CliRunner().invoke(cli, ["status"]).output


def test_a_file_name_that_makes_a_bad_default_name_asks_for_stream(db_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "l3\nfile.csv"
    path.write_bytes(V31.read_bytes())
    out = _refused(["ingest", "csv", str(path)], "\\n")
    assert "--stream" in out
    assert CliRunner().invoke(cli, ["ingest", "csv", str(path), "--stream", "csv:named"]).exit_code == 0


def test_unicode_names_are_fine(db_env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["ingest", "csv", str(V31), "--stream", "csv:données été 価格"])
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(cli, ["status", "csv:données été 価格"]).exit_code == 0


def test_help_says_what_a_stream_name_may_be() -> None:
    for command in (["ingest", "csv"], ["project"], ["status"], ["export", "l1"], ["watch"], ["gaps"]):
        out = CliRunner().invoke(cli, [*command, "--help"]).output
        assert "control characters" in " ".join(out.split()), (command, out)
