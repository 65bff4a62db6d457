"""``ledger plot``: the sample drawn to PNG and HTML; the picture has the size asked for,
is not blank, and shows the best bid and ask lines and the heat map in their colours; a
missing extra, a bad file name and an empty range are one clear line each."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy.engine import URL, Engine

import ledger
from ledger.cli import cli

DATA = Path(__file__).parent / "data" / "l3-l1" / "v3.1" / "l3_data_v3.1.csv"
STREAM = "csv:l3_data_v3.1"


@pytest.fixture
def sample(database_url: URL, engine: Engine, db_env: dict[str, str]) -> Iterator[None]:
    with ledger.open(database_url.render_as_string(hide_password=False)) as lg:
        lg.ingest_csv(DATA)
    yield


def _near(pixel: tuple[int, ...], colour: str, slack: int = 40) -> bool:
    want = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return all(abs(a - b) <= slack for a, b in zip(pixel[:3], want, strict=True))


def test_png_of_the_sample(sample: None, tmp_path: Path) -> None:
    out = tmp_path / "chart.png"
    result = CliRunner().invoke(cli, ["plot", STREAM, "-o", str(out), "--width", "1200", "--height", "700"])
    assert result.exit_code == 0, result.output
    assert "1200 book samples, 4 trades" in result.output
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1200, 700)
        data = image.convert("RGB").tobytes()
    pixels = [tuple(data[i : i + 3]) for i in range(0, len(data), 3)]
    white = sum(1 for p in pixels if p == (255, 255, 255))
    assert white < 0.95 * len(pixels)  # not blank (the sample's book is sparse: about 90% stays white)
    assert len(set(pixels)) > 200
    bid = sum(1 for p in pixels if _near(p, "#1a9850"))  # the best bid's line
    ask = sum(1 for p in pixels if _near(p, "#d73027"))  # the best ask's line
    heat = sum(1 for p in pixels if _near(p, "#6baed6", 60))  # the heat map's middle blues
    assert bid > 2_000 and ask > 2_000 and heat > 2_000, (bid, ask, heat)


def test_html_and_a_range(sample: None, tmp_path: Path) -> None:
    out = tmp_path / "hour.html"
    args = ["plot", STREAM, "--from", "2021-08-03 06:00", "--to", "2021-08-03 07:00", "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<?xml" not in page
    assert "<svg" in page and "</svg>" in page and "csv:l3_data_v3.1" in page
    assert "2021-08-03 06:00:00 .. 2021-08-03 06:59:56 UTC" in page  # the title: the events of that hour


def test_without_matplotlib(sample: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    result = CliRunner().invoke(cli, ["plot", STREAM, "-o", str(tmp_path / "c.png")])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: ledger plot needs matplotlib, the optional extra: "
        "pip install 'ledger[plot]' (or pip install matplotlib)"
    )
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plot", STREAM, "-o", "chart.jpg"], "give a file ending in .png, .svg or .html"),
        (["plot", "csv:nope", "-o", "c.png"], "no stream named 'csv:nope'"),
        (["plot", STREAM, "--from", "2030-01-01", "-o", "c.png"], "has no events with a time in that range"),
        (["plot", STREAM, "--from", "later", "-o", "c.png"], "not a seq or an ISO date and time"),
        (["plot", STREAM, "-o", "/nonexistent/dir/c.png"], "cannot write"),
    ],
)
def test_bad_input_is_one_line(sample: None, args: list[str], message: str, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "c.png").exists()
