"""How long ``bulkscore --help`` takes to start, and what it imports (issue 17: < 0.3 s).

Runs ``python -m cli.main --help`` from a source tree (default: this one; ``--tree`` another,
e.g. a checkout of an older commit) ``--runs`` times in fresh interpreters and prints the
fastest and median wall-clock and CPU (user + system) times, and the ML/web frameworks the
command imported. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("torch", "transformers", "tensorflow", "celery", "fastapi", "uvicorn", "numpy")
PROBE = (
    "import sys, runpy\n"
    "sys.argv = ['bulkscore', '--help']\n"
    "try:\n    runpy.run_module('cli.main', run_name='__main__')\n"
    "except SystemExit:\n    pass\n"
    f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(FRAMEWORKS)!r}), "
    "file=sys.stderr)\n"
)


def one_run(tree: Path) -> tuple[float, float]:
    """(wall, cpu) seconds of one ``--help`` in a fresh interpreter."""
    env = os.environ | {"PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cli.main", "--help"],
        cwd=tree,
        env=env,
        stdout=subprocess.DEVNULL,
        check=True,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tree", type=Path, default=REPO)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    tree = args.tree.resolve()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    imported = (
        subprocess.run(
            [sys.executable, "-c", PROBE],
            cwd=tree,
            env=os.environ | {"PYTHONPATH": str(tree)},
            capture_output=True,
            text=True,
            check=True,
        )
        .stderr.strip()
        .splitlines()[-1]
    )
    one_run(tree)  # warm the file cache; timed runs below
    runs = [one_run(tree) for _ in range(args.runs)]
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    print(
        f"{tree}: bulkscore --help wall {min(walls):.3f}s min / {statistics.median(walls):.3f}s "
        f"median, cpu {min(cpus):.3f}s min / {statistics.median(cpus):.3f}s median "
        f"({args.runs} runs); frameworks imported: {imported}"
    )


if __name__ == "__main__":
    main()
