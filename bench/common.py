"""Shared pieces of the benchmarks: inputs from ../shared/bench, model shapes, timing, tables."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_BENCH = REPO.parent / "shared" / "bench"
sys.path.insert(0, str(REPO / "tests"))


def bench_texts(
    count: int = 500, total: int = 2000, seed: int = 7, workdir: Path | None = None
) -> list[dict[str, str]]:
    """The first ``count`` records of ``gen_texts.py total seed`` (the agreed bench input)."""
    workdir = workdir or Path("/tmp")
    path = workdir / f"bench_texts_{total}_{seed}.jsonl"
    if not path.exists():
        subprocess.run(
            [sys.executable, str(SHARED_BENCH / "gen_texts.py"), str(total), str(seed), str(path)],
            check=True,
        )
    lines = path.read_text().splitlines()[:count]
    return [json.loads(line) for line in lines]


def build_distilbert_base(folder: Path) -> Path:
    """DistilBERT-base shaped sequence classifier (random weights), saved to ``folder``."""
    from models import build_tiny_distilbert

    if not (folder / "config.json").exists():
        build_tiny_distilbert(folder, dim=768, hidden_dim=3072, n_layers=6, n_heads=12)
    return folder


@dataclass
class Row:
    name: str
    items: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else float("nan")


def timed(name: str, items: int, work: Callable[[], object]) -> Row:
    started = time.perf_counter()
    work()
    row = Row(name, items, time.perf_counter() - started)
    print(f"  {name}: {row.rate:.1f} items/s ({row.seconds:.1f} s)", flush=True)
    return row


def print_table(title: str, rows: list[Row], baselines: dict[str, str]) -> None:
    """Markdown table of items/s with a ratio column against each named baseline."""
    by_name = {row.name: row for row in rows}
    header = ["approach", "items/s", *[f"x {label}" for label in baselines]]
    print(f"\n### {title}\n")
    print(f"machine: {platform.node()} ({machine_summary()})\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        ratios = [f"{row.rate / by_name[name].rate:.2f}" for name in baselines.values()]
        print(f"| {row.name} | {row.rate:.1f} | " + " | ".join(ratios) + " |")


def machine_summary() -> str:
    import os

    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}"
