"""The command line's one convention (docs/cli.md, #14 item 5): the stream spelled one way,
short options that mean one thing, -f/--format table|csv|json on every report, JSON of
named fields, one time format, and the old spellings kept as hidden aliases."""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import subprocess
import sys
from typing import Any

import click
import pytest
from click.testing import CliRunner

from ledger.cli import cli
from tests.children import track
from tests.conftest import V3, V31, V31_AS_FOUND

STREAM = "csv:l3_data_v3.1"
MIDDLE = str(1627942268920653171 + 17001)  # a seq of the sample where both sides have levels
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")

# The commands that report, and what their -f/--format offers.
REPORTS = [
    ("ingest", "csv"),
    ("ingest", "coinbase"),
    ("project",),
    ("run",),
    ("watch",),
    ("book",),
    ("status",),
    ("gaps",),
    ("rejects",),
    ("snapshots", "list"),
    ("snapshots", "prune"),
    ("sql",),
]
# Commands about one stream (or some) that name it as a positional STREAM.
POSITIONAL = [
    (("book",), "STREAM"),
    (("watch",), "STREAM"),
    (("status",), "[STREAM]"),
    (("gaps",), "STREAM"),
    (("rejects",), "STREAM"),
    (("snapshots", "list"), "STREAM"),
    (("snapshots", "prune"), "[STREAM]..."),
    (("project",), "[STREAM]..."),
]
# Short options: one letter, one meaning, wherever it appears.
SHORT = {
    "-s": "--stream",
    "-o": "--output",
    "-f": "--format",
    "-n": "--depth",
    "-q": "--quiet",
    "-h": "--help",
    "-v": "--verbose",
}


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out += _commands(command, (*prefix, name))
        else:
            out.append(((*prefix, name), command))
    return out


def _help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def run(*args: str, code: int = 0) -> str:
    """stdout of a command (stderr apart)."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.stdout


def run_json(*args: str) -> Any:
    return json.loads(run(*args))


def run_csv(*args: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(run(*args))))


def _times(value: Any) -> list[str]:
    """Every string in ``value`` (JSON) that looks like a time of some format."""
    if isinstance(value, dict):
        return [t for v in value.values() for t in _times(v)]
    if isinstance(value, list):
        return [t for v in value for t in _times(v)]
    return [value] if isinstance(value, str) and re.match(r"\d{4}-\d\d-\d\d[T ]\d", value) else []


# ---------------------------------------------------------------- help: no database needed


@pytest.mark.parametrize("path", [p for p, _ in _commands(cli)], ids=" ".join)
def test_short_options_mean_one_thing_everywhere(path: tuple[str, ...]) -> None:
    command = dict(_commands(cli))[path]
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        shorts = [o for o in param.opts + param.secondary_opts if re.fullmatch(r"-[A-Za-z]", o)]
        longs = [o for o in param.opts if o.startswith("--")]
        for short in shorts:
            assert short in SHORT, f"{' '.join(path)}: {short} is not one of the short options of docs/cli.md"
            assert SHORT[short] in longs, f"{' '.join(path)}: {short} means {longs}, elsewhere {SHORT[short]}"


@pytest.mark.parametrize("path", REPORTS, ids=" ".join)
def test_every_report_offers_table_csv_and_json_and_hides_the_old_json_flag(path: tuple[str, ...]) -> None:
    text = _help(path)
    assert "-f, --format [table|csv|json]" in text, text
    assert "--json" not in text, text


@pytest.mark.parametrize(("path", "metavar"), POSITIONAL, ids=[" ".join(p) for p, _ in POSITIONAL])
def test_the_stream_is_positional_and_the_old_option_hidden(path: tuple[str, ...], metavar: str) -> None:
    text = _help(path)
    usage = text.splitlines()[0]
    assert usage.endswith(f"[OPTIONS] {metavar}"), usage
    assert "--stream" not in text, text


def test_ingest_names_the_stream_it_writes_with_s() -> None:
    assert "-s, --stream STREAM" in _help(("ingest", "csv"))


def test_no_visible_option_is_only_an_old_spelling() -> None:
    """The aliases stay out of every help, and every help's options are the visible ones."""
    for path, command in _commands(cli):
        text = _help(path)
        for param in command.params:
            if isinstance(param, click.Option) and param.hidden:
                for name in param.opts:
                    assert not re.search(rf"(?<![\w-]){re.escape(name)}\b", text), (path, name)


def test_json_with_another_format_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["status", "--json", "-f", "csv"])
    assert result.exit_code == 2 and "--json means --format json" in result.output


# ---------------------------------------------------------------- against the database


@pytest.fixture
def sample(db_env: dict[str, str]) -> None:
    """The v3.1 sample ingested and projected (snapshots every 10,000 events), the v3 one
    (with gaps) ingested, the as-found one (with rejects) ingested."""
    run("ingest", "csv", str(V31), "-s", STREAM)
    run("project", STREAM, "--snapshot-every", "10000")
    run("ingest", "csv", str(V3))
    run("ingest", "csv", str(V31_AS_FOUND), "-s", "csv:as-found")


def test_ingest_summary_in_each_format(db_env: dict[str, str]) -> None:
    table = run("ingest", "csv", str(V31), "-s", "csv:a")
    assert "stream csv:a: 34247 lines read" in table
    [row] = run_csv("ingest", "csv", str(V31), "-s", "csv:a", "-f", "csv")
    assert row["stream"] == "csv:a" and row["duplicates"] == "34247" and row["reject_samples"] == "[]"
    as_json = run_json("ingest", "csv", str(V31), "-s", "csv:a", "-f", "json")
    alias = run_json("ingest", "csv", str(V31), "--stream", "csv:a", "--json")
    assert as_json.keys() == alias.keys() == row.keys()
    assert as_json["duplicates"] == alias["duplicates"] == 34247


def test_project_takes_streams_as_arguments_and_the_old_option(db_env: dict[str, str]) -> None:
    run("ingest", "csv", str(V31), "-s", "csv:a")
    run("ingest", "csv", str(V31), "-s", "csv:b")
    [a] = run_json("project", "csv:a", "-f", "json")
    assert a["stream"] == "csv:a" and a["events_applied"] == 34247 and a["gaps_skipped"] == []
    [b] = run_csv("project", "--stream", "csv:b", "-f", "csv")  # the hidden alias
    assert b["stream"] == "csv:b" and b["events_applied"] == "34247"
    assert {s["stream"]: s["events_applied"] for s in run_json("project", "--json")} == {"csv:a": 0, "csv:b": 0}


def test_status_in_each_format(sample: None) -> None:
    rows = run_json("status", "-f", "json")
    assert [r["stream"] for r in rows] == ["csv:as-found", "csv:l3_data_v3", STREAM]
    assert run_json("status", "--json") == rows  # the alias
    [one] = run_json("status", STREAM, "-f", "json")
    assert one["events"] == 34247 and one["projected_seq"] == one["last_seq"]
    assert one["last_ingest"] and one["latest_snapshot_at"]
    assert all(TIME.fullmatch(t) for r in rows for t in _times(r)), _times(rows)
    lines = run_csv("status", "-f", "csv")
    assert [r["stream"] for r in lines] == [r["stream"] for r in rows]
    assert lines[2]["events"] == "34247" and json.loads(lines[2]["anomalies"]) == rows[2]["anomalies"]
    assert TIME.fullmatch(lines[2]["last_ingest"])
    text = run("status", STREAM)
    assert f"last ingest {one['last_ingest']}" in text  # the same time, the same format


def test_gaps_in_each_format(sample: None) -> None:
    rows = run_json("gaps", "csv:l3_data_v3", "-f", "json")
    assert len(rows) == 9 and sum(g["missing"] for g in rows) == 18
    assert run_json("gaps", "csv:l3_data_v3", "--json") == rows
    assert all(TIME.fullmatch(g["detected_at"]) for g in rows)
    lines = run_csv("gaps", "csv:l3_data_v3", "-f", "csv")
    assert [(int(g["first_seq"]), int(g["last_seq"])) for g in lines] == [(g["first_seq"], g["last_seq"]) for g in rows]
    assert list(lines[0]) == list(rows[0])  # the CSV header is the JSON keys
    table = run("gaps", "csv:l3_data_v3").splitlines()
    assert table[0].split(" | ")[:4] == ["first_seq          ", "last_seq           ", "missing", "status"]
    assert table[-1] == "(9 gaps)" and rows[0]["detected_at"] in table[2]


def test_rejects_in_each_format(sample: None) -> None:
    rows = run_json("rejects", "csv:as-found", "-f", "json")
    assert len(rows) == 6 and set(rows[0]) == {"source", "line_no", "reason", "raw"}
    assert run_json("rejects", "csv:as-found", "--json") == rows
    lines = run_csv("rejects", "csv:as-found", "-f", "csv", "--limit", "2")
    assert [(r["line_no"], r["raw"]) for r in lines] == [(str(r["line_no"]), r["raw"]) for r in rows[:2]]
    assert "E+18" in run("rejects", "csv:as-found")


def test_book_in_each_format(sample: None) -> None:
    at = ("--at-seq", MIDDLE)
    data = run_json("book", STREAM, *at, "-n", "3", "-f", "json")
    assert run_json("book", STREAM, *at, "--depth", "3", "--json") == data  # the aliases
    assert set(data) == {"stream", "seq", "time", "from_snapshot", "missing", "bids", "asks"}
    assert len(data["bids"]) == len(data["asks"]) == 3
    assert all(set(level) == {"price", "size", "orders"} for level in data["bids"] + data["asks"])
    assert all(isinstance(level["price"], str) and isinstance(level["size"], str) for level in data["bids"])
    assert TIME.fullmatch(data["time"])
    lines = run_csv("book", STREAM, *at, "-n", "3", "-f", "csv")
    assert list(lines[0]) == ["stream", "seq", "time", "side", "level", "price", "size", "orders"]
    assert [(r["side"], r["level"], r["price"], r["size"]) for r in lines] == [
        ("B", str(i), lv["price"], lv["size"]) for i, lv in enumerate(data["bids"], 1)
    ] + [("S", str(i), lv["price"], lv["size"]) for i, lv in enumerate(data["asks"], 1)]
    assert all(r["time"] == data["time"] and r["seq"] == str(data["seq"]) for r in lines)
    orders = run_json("book", STREAM, *at, "--orders", "-f", "json")["orders"]
    assert set(orders[0]) == {"side", "price", "size", "order_id"}
    assert len(run_csv("book", STREAM, *at, "--orders", "-f", "csv")) == len(orders)
    assert f"({data['time']})" in run("book", STREAM, *at, "-n", "3").splitlines()[0]


def test_snapshots_in_each_format(sample: None) -> None:
    rows = run_json("snapshots", "list", STREAM, "-f", "json")
    assert [r["seq"] for r in rows] == sorted((r["seq"] for r in rows), reverse=True) and len(rows) == 3
    assert run_json("snapshots", "list", STREAM, "--json") == rows
    assert all(TIME.fullmatch(r["created_at"]) for r in rows)
    lines = run_csv("snapshots", "list", STREAM, "-f", "csv")
    assert [int(r["seq"]) for r in lines] == [r["seq"] for r in rows]
    assert run("snapshots", "list", STREAM).splitlines()[-1] == "(3 snapshots)"
    assert run_json("snapshots", "prune", STREAM, "--keep", "2", "-f", "json") == [{"stream": STREAM, "deleted": 1}]
    assert run_csv("snapshots", "prune", "--stream", STREAM, "--keep", "1", "-f", "csv") == [
        {"stream": STREAM, "deleted": "1"}
    ]


def test_sql_writes_times_in_the_one_format(sample: None) -> None:
    query = "SELECT ts, seq FROM l1 ORDER BY seq LIMIT 3"
    lines = run_csv("sql", query, "-f", "csv")
    assert len(lines) == 3 and all(TIME.fullmatch(r["ts"]) for r in lines)
    [first, *_] = [json.loads(line) for line in run("sql", query, "-f", "json").splitlines()]
    assert first["ts"] == lines[0]["ts"]
    assert lines[0]["ts"] in run("sql", query)


def test_watch_as_csv_and_json_lines(sample: None, db_env: dict[str, str]) -> None:
    def first_lines(fmt: str, n: int) -> list[str]:
        proc = track(
            subprocess.Popen(
                [sys.executable, "-m", "ledger.cli", "watch", STREAM, "-n", "2", "-f", fmt],
                env=db_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(n)]
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert proc.returncode == 0
        return lines

    [frame] = [json.loads(line) for line in first_lines("json", 1)]
    book = run_json("book", STREAM, "-n", "2", "-f", "json")
    assert frame == {"stream": STREAM, "seq": book["seq"], "bids": book["bids"], "asks": book["asks"]}
    levels = [("B", i, lv) for i, lv in enumerate(book["bids"], 1)] + [
        ("S", i, lv) for i, lv in enumerate(book["asks"], 1)
    ]
    assert levels  # the head of the sample has bids
    rows = list(csv.DictReader(io.StringIO("".join(first_lines("csv", 1 + len(levels))))))
    assert [(r["stream"], r["seq"], r["side"], r["level"], r["price"], r["size"], r["orders"]) for r in rows] == [
        (STREAM, str(book["seq"]), side, str(i), lv["price"], lv["size"], str(lv["orders"])) for side, i, lv in levels
    ]
