"""The README's commands and SQL examples are the ones that work: run them here."""

from __future__ import annotations

import csv
import hashlib
import re
import shlex
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from ledger.cli import cli
from tests.conftest import V3, V31, V31_EXPECTED, V31_EXPECTED_SHA256

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _ledger(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_quick_start_runs_the_bundled_sample(
    db_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _blocks("sh")[0]
    ledger_commands = [shlex.split(part.strip()) for part in first.split("&&") if "bin/ledger " in part]
    assert [c[1:3] for c in ledger_commands] == [["ingest", "csv"], ["project"], ["export", "l1"]]
    monkeypatch.chdir(tmp_path)
    for args in ledger_commands:
        args = [str(ROOT / a) if a.startswith("tests/") else a for a in args[1:]]
        out = _ledger(args)
    written = tmp_path / "l1_csv_l3_data_v3.1.csv"
    assert f"to {written}" in out
    assert hashlib.sha256(written.read_bytes()).hexdigest() == V31_EXPECTED_SHA256


def test_the_test_command_is_what_ci_runs() -> None:
    test_command = _blocks("sh")[1].strip()
    assert test_command == ".venv/bin/python -m pytest"
    assert "python -m pytest\n" in (ROOT / ".ci" / "run").read_text()


def test_sql_examples(db_env: dict[str, str], engine: Engine) -> None:
    _ledger(["ingest", "csv", str(V31)])
    _ledger(["ingest", "csv", str(V3)])
    _ledger(["project", "--skip-gaps"])
    _, best_at, open_gaps, order_life, a_range = _blocks("sql")
    with engine.connect() as conn:
        [row] = conn.execute(sa.text(best_at)).all()
        with V31_EXPECTED.open(encoding="utf-8-sig") as f:
            before = [r for r in csv.DictReader(f) if r["time"] <= "2021-08-03 05:00:00"]
        ref = before[-1]
        assert (str(row.bid_price), str(row.bid_size), str(row.ask_price), str(row.ask_size), str(row.seq)) == (
            ref["bid_price"], ref["bid_size"], ref["ask_price"], ref["ask_size"], ref["seq_num"],
        )  # fmt: skip

        gaps = conn.execute(sa.text(open_gaps)).all()
        assert {g.name for g in gaps} == {"csv:l3_data_v3"} and len(gaps) == 9
        assert sum(g.missing for g in gaps) == 18

        life = conn.execute(sa.text(order_life)).all()
        lines = [line for line in V31.read_text(encoding="utf-8-sig").splitlines()[1:] if "7457972527797789251" in line]
        assert sorted(r.raw for r in life) == sorted(lines) and len(life) >= 2
        assert life[0].kind == "add"

    _ledger(["db", "compact"])  # the range's events from blocks: the file's lines of those seqs
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM event_blocks")).scalar_one() > 0
        got = conn.execute(sa.text(a_range)).all()
    by_seq = {int(line.split(",", 1)[0]): line for line in V31.read_text(encoding="utf-8-sig").splitlines()[1:]}
    assert [(r.seq, r.raw) for r in got] == [
        (seq, by_seq[seq]) for seq in range(1627942268920653172, 1627942268920653182)
    ]


def test_the_databento_commands_and_sql(
    db_env: dict[str, str], engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Databento section's commands as printed, then its query, against databento_dbn."""
    from collections import Counter
    from decimal import Decimal

    import databento_dbn

    (block,) = [b for b in _blocks("sh") if "ingest dbn" in b]
    monkeypatch.chdir(tmp_path)
    for line in block.replace("\\\n", " ").splitlines():
        args = shlex.split(line.split("#")[0])
        if args and args[0] == "ledger":
            _ledger([str(ROOT / a) if a.startswith("tests/") else a for a in args[1:]])
    # 25,439 L1 changes: the naive model's count over both days (tests/test_databento.py)
    assert len((tmp_path / "esh4-l1.csv").read_text(encoding="utf-8-sig").splitlines()) == 1 + 25_439

    records = []
    for name in ("nautilus__esh4-glbx-mdp3-20231224.mbo.dbn.zst", "nautilus__esh4-glbx-mdp3-20231225.mbo.dbn.zst"):
        decoder = databento_dbn.DBNDecoder(compression=databento_dbn.Compression.ZSTD)
        decoded = decoder.write_and_decode((ROOT / "tests" / "data" / "databento" / name).read_bytes())
        records += [r for r in decoded if isinstance(r, databento_dbn.MBOMsg)]
    kinds = {"A": "add", "C": "cancel", "M": "modify", "R": "clear", "T": "trade", "F": "fill", "N": "none"}
    expected = Counter(kinds[r.action.value] for r in records)
    (by_kind,) = [b for b in _blocks("sql") if "databento:" in b]
    with engine.connect() as conn:
        rows = conn.execute(sa.text(by_kind)).all()
    assert {r.kind: r.records for r in rows} == expected
    for r in rows:
        prices = [Decimal(p.price) / 10**9 for p in records if kinds[p.action.value] == r.kind and p.price < 2**63 - 1]
        assert (r.low, r.high) == ((min(prices), max(prices)) if prices else (None, None))
        assert r.bad_ts_recv == sum(1 for p in records if kinds[p.action.value] == r.kind and p.flags & 8)
