"""What a test run costs: wall time and bytes written, pytest and every process it starts.

    python benchmarks/test_cost.py -- -m "not slow" -q

Bytes written are the kernel's I/O accounting (``/proc/self/io``): once pytest has been
waited for, its counters, and those of every child it waited for, are added to this
process's, so subprocess CLI runs and DataLoader workers count too.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def io_counters() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest")
    args = parser.parse_args()
    before, start = io_counters(), time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "pytest", *args.pytest_args])
    seconds, after = time.perf_counter() - start, io_counters()
    written = after["write_bytes"] - before["write_bytes"]
    cancelled = after["cancelled_write_bytes"] - before["cancelled_write_bytes"]
    print(f"test_cost: exit {code}, {seconds:.1f} s wall, {written / 2**20:.0f} MB written "
          f"({cancelled / 2**20:.0f} MB of it deleted before it reached the disk)")
    sys.exit(code)


if __name__ == "__main__":
    main()
