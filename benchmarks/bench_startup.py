"""Benchmark the command line's start-up: ``ledger --help`` (and other commands that need no
database) against ``python -c pass`` in the same run.

    python benchmarks/bench_startup.py               # 15 alternating runs of each
    python benchmarks/bench_startup.py --runs 30

Prints the median and minimum wall time of each command and the ratio of medians. The
commands run as on a user's machine: with Python's bytecode cache (a PYTHONDONTWRITEBYTECODE
in the environment is dropped for them, and one run of each before timing fills the cache;
without it every start compiles ledger's modules again).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _time(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_ENV)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    script = Path(sys.executable).with_name("ledger")  # the console script pip installed
    ledger = [str(script)] if script.exists() else [sys.executable, "-m", "ledger.cli"]
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "ledger --help": [*ledger, "--help"],
        "ledger sql --help": [*ledger, "sql", "--help"],
        "import ledger": [sys.executable, "-c", "import ledger"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for command in commands.values():  # fills the bytecode cache
        _time(command)
    for _ in range(args.runs):  # alternating, so a slow moment of the machine hits all alike
        for name, command in commands.items():
            times[name].append(_time(command))
    base = statistics.median(times["python -c pass"])
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:<20} median {median * 1000:6.1f} ms  min {min(values) * 1000:6.1f} ms  ratio {median / base:4.1f}"
        )


if __name__ == "__main__":
    main()
