"""Benchmark many files in one run: ``ledger ingest csv FOLDER`` of F files of N/F events
against ``ledger ingest csv FILE`` of the same N events in one file.

The N events are generated once (``generate_l3.py``, seeded) and split into F files of
equal line counts, each with the header (each its own stream, as by default). Each
measurement is a whole ``ledger`` process into a fresh scratch database; the two are run
alternately, ``--repeat`` times, and the medians and their ratio are printed (the ratio of
one pair is what a loaded machine still measures fairly), with the CPU seconds of the
``ledger`` process, which neighbours on a busy machine disturb less than the wall time.

    python benchmarks/bench_many_files.py                       # 100 files of 10,000 vs one of 1,000,000
    python benchmarks/bench_many_files.py --events 200000 --files 20 --repeat 5

The server: LEDGER_BENCH_DATABASE_URL (an admin URL on which a scratch database is
created and dropped), else postgres on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from generate_l3 import generate
from scratch import scratch_database


def _files(workdir: Path, events: int, files: int, seed: int) -> tuple[Path, Path]:
    """The one file and the folder of ``files`` parts of it (made once, then reused)."""
    one = workdir / f"l3_{events}_{seed}.csv"
    if not one.exists():
        with one.open("w", encoding="utf-8", newline="\n") as out:
            generate(events, seed, out)
    folder = workdir / f"l3_{events}_{seed}_in_{files}"
    if not folder.exists():
        folder.mkdir()
        with one.open("rb") as src:
            header = src.readline()
            lines = src.readlines()
        per = -(-len(lines) // files)
        for i in range(files):
            (folder / f"part{i:05d}.csv").write_bytes(header + b"".join(lines[i * per : (i + 1) * per]))
    return one, folder


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ingest(target: Path) -> tuple[float, float, int]:
    """Wall seconds and CPU seconds of one ``ledger ingest csv`` of ``target`` into a fresh
    database, and the events it stored."""
    with scratch_database() as (_, env):
        cpu = _children_cpu()
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "ledger.cli", "ingest", "csv", str(target), "-f", "json"],
            env=env,
            capture_output=True,
            check=True,
        ).stdout
        wall = time.perf_counter() - started
        cpu = _children_cpu() - cpu
    result = json.loads(out)
    stored = result["total"]["events_stored"] if "total" in result else result["events_stored"]
    return wall, cpu, int(stored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in all (default 1,000,000)")
    parser.add_argument("--files", type=int, default=100, help="files they are split into (default 100)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating pairs (default 3)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ledger-bench")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    one, folder = _files(args.workdir, args.events, args.files, args.seed)
    single: list[float] = []
    many: list[float] = []
    cpu_ratios: list[float] = []
    for i in range(args.repeat):
        wall_one, cpu_one, stored_one = _ingest(one)
        wall_many, cpu_many, stored_many = _ingest(folder)
        assert stored_one == stored_many == args.events, (stored_one, stored_many)
        single.append(wall_one)
        many.append(wall_many)
        cpu_ratios.append(cpu_one / cpu_many)
        print(
            f"pair {i + 1}: one file {args.events / wall_one:>9,.0f} events/s ({wall_one:.2f}s, cpu {cpu_one:.2f}s) | "
            f"{args.files} files {args.events / wall_many:>9,.0f} events/s ({wall_many:.2f}s, cpu {cpu_many:.2f}s) | "
            f"ratio {wall_one / wall_many:.2f}, cpu ratio {cpu_one / cpu_many:.2f}"
        )
    one_rate = args.events / statistics.median(single)
    many_rate = args.events / statistics.median(many)
    print(
        f"median of {args.repeat}: one file of {args.events:,}: {one_rate:,.0f} events/s; "
        f"{args.files} files of {args.events // args.files:,}: {many_rate:,.0f} events/s; "
        f"ratio {many_rate / one_rate:.2f} (whole processes, start-up included); "
        f"ledger's CPU, one file over many files: {statistics.median(cpu_ratios):.2f}"
    )


if __name__ == "__main__":
    main()
