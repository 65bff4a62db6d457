"""A seeded fuzz of `ledger ingest csv` over the real v3.1 sample.

Some lines of the sample are damaged (byte flips, NULs, invalid UTF-8, integers beyond
int()'s 4,300 digits, a BOM, a lone CR, truncation, many columns, over-long lines), every
tenth line or so ends in CRLF, and the last line has no newline. Whatever the damage:

- the run ends with exit code 0;
- every line is either stored or a reject carrying its line number;
- the stored rows are exactly an independent parse (a plain split, written here) of the
  untouched lines, plus the damaged lines that are still valid events, stored as they are;
- a second run stores nothing again, and the same bytes fed through stdin with
  --flush-interval give the same log and rejects.

A damaged line never carries another seq_num that may be valid (its seq field is the
original one, or not a plain integer, or one of more than 19 digits): a repeated seq is a
duplicate, tested in test_csv_pipeline.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from ledger.cli import cli
from tests.conftest import V31
from tests.test_hostile_input import unescape_reject

_GROUPS = (("add", 1, 4), ("update", 5, 4), ("delete", 9, 2), ("trade", 11, 4))
_INVALID_UTF8 = (b"\xff", b"\xc3", b"\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82")


def independent_parse(line: str) -> tuple[object, ...]:
    """The event row of an untouched sample line, by a plain split (not ledger's parser)."""
    cells = line.split(",")
    assert len(cells) == 16, line
    [(kind, first, width)] = [g for g in _GROUPS if cells[g[1]]]
    price = Decimal(cells[first + 2]) if width == 4 else None
    size = Decimal(cells[first + 3]) if width == 4 else None
    side = {"BUY": "B", "SELL": "S"}[cells[first + 1]]
    ts = datetime.strptime(cells[15], "%Y-%m-%d %H:%M:%S.%f UTC").replace(tzinfo=UTC)
    return (int(cells[0]), kind, cells[first], side, price, size, ts, line)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _damage(rng: random.Random, line: bytes, kind: str) -> bytes:
    pos = rng.randrange(1, len(line))
    if kind == "flip":
        out = bytearray(line)
        for _ in range(rng.randint(1, 3)):
            out[rng.randrange(len(out))] ^= rng.randrange(1, 256)
        return bytes(out)
    if kind == "nul":
        return line[:pos] + b"\x00" + line[pos:]
    if kind == "utf8":
        return line[:pos] + rng.choice(_INVALID_UTF8) + line[pos:]
    if kind == "utf8+nul":
        return line[:pos] + rng.choice(_INVALID_UTF8) + b"\x00" + line[pos:]
    if kind == "huge":
        cells = line.split(b",")
        cells[rng.choice([0, next(i for i in (1, 5, 9, 11) if cells[i])])] = b"9" * rng.randint(4_301, 9_000)
        return b",".join(cells)
    if kind == "bom":
        return b"\xef\xbb\xbf" + line
    if kind == "cr":
        return line[:pos] + b"\r" + line[pos:]
    if kind == "truncate":
        return line[:pos]
    if kind == "columns":
        return line + b"," * rng.choice([1, 2, 500, 50_000])
    if kind == "million":
        return line + b"," * 999_999  # a million columns
    assert kind == "long"
    return line + b"x" * rng.randint(70_000, 400_000)


_KINDS = ["flip"] * 6 + ["nul", "utf8", "utf8+nul", "huge", "bom", "cr", "truncate", "columns", "long"]


def fuzzed_sample(seed: int) -> tuple[bytes, list[str], dict[int, bytes]]:
    """(the file, its untouched data lines by index (None where damaged), damaged lines by
    line number). Line numbers count the header as line 1."""
    rng = random.Random(seed)
    text = V31.read_bytes()
    header, *lines = text.split(b"\n")
    assert lines[-1] == b""
    lines.pop()
    seq_fields = {line.split(b",", 1)[0] for line in lines}
    damaged: dict[int, bytes] = {}
    chosen = rng.sample(range(len(lines)), 700)
    for n, i in enumerate(chosen):
        kind = "million" if n == 0 else rng.choice(_KINDS)
        while True:
            new = _damage(rng, lines[i], kind)
            seq_field = new.split(b",", 1)[0]
            if new == lines[i] or b"\n" in new or not new.strip():
                continue  # no damage, or a line split in two, or a blank line: try again
            if seq_field != lines[i].split(b",", 1)[0] and (
                seq_field in seq_fields or (seq_field.isdigit() and len(seq_field.lstrip(b"0")) <= 19)
            ):
                continue  # another seq_num that may be valid: that is a duplicate, not damage
            break
        damaged[i + 2] = new
        lines[i] = new
    last = len(lines) - 1
    if last + 2 not in damaged:  # the last line is cut short, without a newline
        damaged[last + 2] = lines[last] = lines[last][: rng.randrange(1, len(lines[last]))]
    out = [header + b"\n"]
    for i, line in enumerate(lines):
        ending = b"" if i == last else b"\r\n" if rng.random() < 0.1 else b"\n"
        out.append(line + ending)
    untouched = [line.decode() if i + 2 not in damaged else "" for i, line in enumerate(lines)]
    return b"".join(out), untouched, damaged


def _log(engine: Engine, stream: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with engine.connect() as conn:
        sid = conn.execute(sa.text("SELECT id FROM streams WHERE name = :n"), {"n": stream}).scalar_one()
        events = conn.execute(
            sa.text(
                "SELECT seq, kind, order_id, side, price, size, ts, ledger_raw(events) FROM events WHERE stream_id = :s"
            ),
            {"s": sid},
        )
        rejects = conn.execute(
            sa.text("SELECT line_no, raw, reason FROM rejects WHERE stream_id = :s ORDER BY line_no"), {"s": sid}
        )
        return sorted(tuple(r) for r in events), [tuple(r) for r in rejects]


def _ingest(*args: str, input: bytes | None = None) -> dict[str, object]:
    result = CliRunner().invoke(cli, ["ingest", "csv", *args, "--json"], input=input, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary: dict[str, object] = json.loads(result.output)
    return summary


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzzed_sample_stores_every_good_line_and_rejects_the_rest(
    db_env: dict[str, str], engine: Engine, tmp_path: Path, seed: int
) -> None:
    data, untouched, damaged = fuzzed_sample(seed)
    path = tmp_path / "fuzz.csv"
    path.write_bytes(data)
    summary = _ingest(str(path), "--stream", "csv:fuzz", "--batch-size", "997")
    events, rejects = _log(engine, "csv:fuzz")

    expected = [independent_parse(line) for line in untouched if line]
    by_seq = {row[0]: row for row in events}
    assert len(by_seq) == len(events)
    # Every untouched line is stored exactly as the independent parse says...
    assert [by_seq.get(row[0]) for row in expected] == expected
    # ...and every damaged line is a reject with its line number, or (still a valid event)
    # stored as it came; nothing else is stored or rejected.
    rejected = {line_no: (raw, reason) for line_no, raw, reason in rejects}
    assert len(rejected) == len(rejects)
    stored_damaged = []
    for line_no, line in damaged.items():
        if line_no in rejected:
            assert rejected[line_no][1], line_no
            continue
        seq = int(line.split(b",", 1)[0])
        assert by_seq[seq][7] == line.rstrip(b"\r\n").decode(), line_no
        stored_damaged.append(seq)
    assert set(rejected) <= set(damaged)
    assert len(events) == len(expected) + len(stored_damaged)
    assert summary["lines"] == len(untouched)
    assert summary["events_stored"] == len(events) and summary["rejects"] == len(rejects)
    assert len(rejects) > 500  # most damage is fatal; some flips and cuts leave a valid line

    # A reject keeps the line as it is, or (not UTF-8, or holding a NUL) escaped; of a line
    # longer than 64 KiB, its first 64 KiB (less a character the cut would split).
    physical = data.split(b"\n")
    for line_no, (raw, reason) in rejected.items():
        line = damaged[line_no].rstrip(b"\r\n")
        size = len(physical[line_no - 1]) + (line_no < len(physical))  # with its newline
        kept = unescape_reject(str(raw)) if "escaped" in str(reason) else str(raw).encode()
        assert "\x00" not in str(raw)
        if size > 65536:
            assert str(reason).startswith(f"a line of {size:,} bytes"), (line_no, reason)
            assert line.startswith(kept) and 65536 - 3 <= len(kept) <= 65536, line_no
        else:
            assert kept == line, line_no
            assert ("escaped" in str(reason)) == (b"\x00" in line or not _is_utf8(line)), line_no

    # Again: nothing new; then the same bytes through stdin, flushed on a timer.
    again = _ingest(str(path), "--stream", "csv:fuzz")
    assert again["events_stored"] == 0 and again["duplicates"] == len(events)
    assert _log(engine, "csv:fuzz") == (events, rejects)
    _ingest("-", "--stream", "csv:fuzz-stdin", "--flush-interval", "0.05", input=data)
    events_in, rejects_in = _log(engine, "csv:fuzz-stdin")
    assert events_in == events
    assert [(n, raw, reason) for n, raw, reason in rejects_in] == rejects
