"""Benchmark ingest's memory on over-long lines (issue #10, item 7).

It writes three files of about the same size (default 400 MB) and runs ``ledger ingest csv``
on each as a child process, in a scratch database, printing wall time and the child's peak
memory (max RSS):

* normal:    generated L3 events (``generate_l3.py``), one per line;
* one line:  the header, then a single line without any newline to the end of the file;
* wide:      the header, then lines of about 1 MB each, all rejected.

A long line is read on to its newline in bounded memory and only its first 64 KiB kept
for the reject, so the last two must peak about as low as the normal file: the ratio
printed is their peak over the normal file's (the target is at most 1.5).

    python benchmarks/bench_long_lines.py                 # 400 MB each
    python benchmarks/bench_long_lines.py --size-mb 100

The server: LEDGER_BENCH_DATABASE_URL (an admin URL on which a scratch database is
created and dropped), else PostgreSQL on 127.0.0.1 as postgres.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from generate_l3 import generate
from scratch import scratch_database

HEADER = (
    "seq_num,add_order_id,add_side,add_price,add_qty,update_order_id,update_side,"
    "update_price,update_qty,delete_order_id,delete_side,trade_order_id,trade_side,"
    "trade_price,trade_qty,time"
)
_EVENT = b"1627942268920653172,7456389231055194163,BUY,218,300,,,,,,,,,,,2021-08-02 22:11:21.94404 UTC "
_BYTES_PER_EVENT = 93.3  # of generate_l3's output


def _write_one_line(path: Path, size: int) -> None:
    """The header, then ``size`` bytes without a newline (event text run together)."""
    piece = _EVENT * ((1 << 20) // len(_EVENT))
    with path.open("wb") as out:
        out.write(("\ufeff" + HEADER + "\n").encode())
        written = 0
        while written < size:
            chunk = piece[: size - written]
            out.write(chunk)
            written += len(chunk)


def _write_wide(path: Path, size: int) -> None:
    """The header, then lines of about 1 MB (event text run together, then a newline)."""
    line = _EVENT * ((1 << 20) // len(_EVENT)) + b"\n"
    with path.open("wb") as out:
        out.write(("\ufeff" + HEADER + "\n").encode())
        for _ in range(max(1, size // len(line))):
            out.write(line)


def _ingest(path: Path, env: dict[str, str], stream: str) -> tuple[float, int, dict[str, object]]:
    """(wall seconds, peak RSS in MiB, the --json summary) of one `ledger ingest csv`."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", "ingest", "csv", str(path), "--stream", stream, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"ledger ingest csv {path} failed ({code}):\n{err.decode()}")
    return wall, usage.ru_maxrss // 1024, json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=400, help="size of each file in MB (default 400)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ledger-bench")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()
    size = args.size_mb * 1_000_000
    args.workdir.mkdir(parents=True, exist_ok=True)
    events = round(size / _BYTES_PER_EVENT)
    normal = args.workdir / f"l3_{events}_42.csv"
    one_line = args.workdir / f"one_line_{args.size_mb}mb.csv"
    wide = args.workdir / f"wide_{args.size_mb}mb.csv"
    if not normal.exists():
        with normal.open("w", encoding="utf-8", newline="\n") as out:
            generate(events, 42, out)
    _write_one_line(one_line, size)
    _write_wide(wide, size)
    results = {}
    try:
        with scratch_database() as (_url, env):
            for name, path in (("normal", normal), ("one line", one_line), ("wide", wide)):
                wall, peak, summary = _ingest(path, env, "csv:" + name.replace(" ", "-"))
                results[name] = peak
                print(
                    f"{name:<9} {path.stat().st_size / 1e6:>6.0f} MB  {wall:>7.2f} s  peak {peak:>4} MiB  "
                    f"lines {summary['lines']:,}  stored {summary['events_stored']:,}  rejects {summary['rejects']:,}",
                    flush=True,
                )
    finally:
        if not args.keep:
            for path in (one_line, wide):
                path.unlink(missing_ok=True)
    for name in ("one line", "wide"):
        print(f"peak {name} / normal: {results[name] / results['normal']:.2f}")


if __name__ == "__main__":
    main()
