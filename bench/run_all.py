"""Every CPU throughput benchmark, one after the other, in one run: the whole table.

    .venv/bin/python bench/run_all.py [--skip-slow]

Runs ``text_throughput.py`` (text rows and the int8 quality table), then
``service_throughput.py`` (database, API, many small jobs, threads), then
``image_throughput.py`` and ``imagenet_lite.py`` (two interleaved runs of each image row),
each in its own process so that one's threads and caches cannot colour the other's figures.
Prints the load average before each, because other work on a shared machine slows every row.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from common import busy_processes, load_summary, machine_summary

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--skip-slow", action="store_true", help="--skip-slow for the text benches, 1 image run."
    )
    args = parser.parse_args()
    extra = ["--skip-slow"] if args.skip_slow else []
    print(f"# bulkscore CPU benchmarks\n\n{machine_summary()}; load {load_summary()}")
    print(f"other busy processes at the start: {busy_processes() or 'none'}\n", flush=True)
    for script in ("text_throughput.py", "service_throughput.py"):
        subprocess.run([sys.executable, str(HERE / script), *extra], check=True)
    repeats = "1" if args.skip_slow else "2"
    for script in ("image_throughput.py", "imagenet_lite.py"):
        subprocess.run([sys.executable, str(HERE / script), "--repeats", repeats], check=True)


if __name__ == "__main__":
    main()
