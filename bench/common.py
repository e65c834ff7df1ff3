"""Shared pieces of the benchmarks: inputs from ../shared/bench, model shapes, timing, tables."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _shared_bench() -> Path:
    """``../shared/bench`` beside this checkout, or beside the main one from a git worktree."""
    beside = REPO.parent / "shared" / "bench"
    if beside.exists():
        return beside
    try:
        common = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--path-format=absolute", "--git-common-dir"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return beside
    return Path(common).parent.parent / "shared" / "bench"


SHARED_BENCH = _shared_bench()
sys.path.insert(0, str(REPO / "tests"))


def bench_workdir(name: str) -> Path:
    """A folder kept between runs (texts and built models are reused, not rebuilt)."""
    folder = Path(tempfile.gettempdir()) / f"bulkscore-bench-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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
    note: str = ""

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else float("nan")


def timed(name: str, items: int, work: Callable[[], object], repeat: int = 1) -> Row:
    """Run ``work`` ``repeat`` times and keep the fastest run.

    On a machine shared with other work, the fastest of a few runs is the one least
    disturbed; every row of a table gets the same number of runs, so no row is favoured.
    """
    best: Row | None = None
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        row = Row(name, items, time.perf_counter() - started)
        print(f"  {name}: {row.rate:.1f} items/s ({row.seconds:.1f} s)", flush=True)
        if best is None or row.seconds < best.seconds:
            best = row
    assert best is not None
    return best


def print_table(
    title: str, rows: list[Row], baselines: dict[str, str], unit: str = "items/s"
) -> None:
    """Markdown table of rates with a ratio column against each named baseline row."""
    by_name = {row.name: row for row in rows}
    present = {label: name for label, name in baselines.items() if name in by_name}
    notes = any(row.note for row in rows)
    header = ["approach", unit, *[f"x {label}" for label in present], *(["note"] if notes else [])]
    print(f"\n### {title}\n")
    print(
        f"machine: {platform.node()} ({machine_summary()}); load average before this table: "
        f"{load_summary()} (this benchmark's own earlier rows count in it too)\n"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        ratios = [f"{row.rate / by_name[name].rate:.2f}" for name in present.values()]
        cells = [row.name, f"{row.rate:,.1f}", *ratios, *([row.note] if notes else [])]
        print("| " + " | ".join(cells) + " |")


def load_summary() -> str:
    """The 1-minute load average: above the core count, other work shared the machine."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def busy_processes(threshold: float = 20.0) -> str:
    """Other processes using more than ``threshold`` % of a core now (``ps``), for the record."""
    try:
        listing = subprocess.run(
            ["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu", "--no-headers"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    busy = []
    for line in listing.splitlines():
        pid, cpu, command = line.split(None, 2)
        if float(cpu) < threshold:
            break
        if int(pid) != os.getpid():
            busy.append(f"{command[:60]} ({cpu}%)")
    return "; ".join(busy)


# The CPU features that change CPU figures most (int8 and bf16 kernels, wide vectors).
NOTABLE_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine_summary() -> str:
    cpu = "unknown cpu"
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown cpu":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                present = set(line.split(":", 1)[1].split())
                flags = [flag for flag in NOTABLE_FLAGS if flag in present]
    except OSError:
        pass
    shown = " ".join(flags) or "none of " + ",".join(NOTABLE_FLAGS)
    return f"{os.cpu_count()} cores, {cpu}, flags: {shown}"


def process_tree(pids: Collection[int]) -> Iterator[tuple[Path, list[str]]]:
    """``/proc`` entries of ``pids`` and their children, each with its ``stat`` fields after
    the process name (state, ppid, ..., utime at 11, stime at 12, counting from 0)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(proc.name) in pids or int(fields[1]) in pids:
            yield proc, fields


def claim_as_a_worker(engine: Any, model: str, settings: Any) -> Any:
    """One claim as ``bulkscore worker`` makes it: the fairest queued chunk of ``model`` and
    its job marked running, in one transaction (``core.chunks.claim.Claim`` or None)."""
    from core.chunks.fair import Fairness, claim_fairest
    from core.jobs.lifecycle import mark_running

    with engine.begin() as conn:
        claim = claim_fairest(
            conn,
            model,
            Fairness.of(settings),
            lease_s=settings.chunk_lease_s,
            max_attempts=settings.chunk_max_attempts,
        )
        if claim is not None and claim.chunk is not None:
            mark_running(conn, claim.chunk.job_id)
    return claim
