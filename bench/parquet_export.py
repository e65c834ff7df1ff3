"""A Parquet export of a 1,000,000-row job through the API, streamed in row groups.

    .venv/bin/python bench/parquet_export.py [--rows 1000000] [--include-input]

A real ``bulkscore api`` process on a fresh PostgreSQL database (service_support). The job
is stored directly (items with a kept column, results via ``write_results``' COPY), then
``GET /v1/jobs/{id}/results?format=parquet`` is streamed to a file by an httpx client while
a thread samples the API process's RSS (``/proc/PID/status`` VmRSS) every 0.1 s. Reported:
rows/s from the request to the last byte, the RSS before, its peak and its last sample,
and the rows read back with pyarrow (must equal the job's). For comparison the same job's
JSON Lines export is timed the same way. It asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import bench_workdir, load_summary, machine_summary, process_tree
from service_support import Service, bench_models_file, running_service

WRITE_BATCH = 50_000


def _store_job(service: Service, rows: int) -> str:
    from sqlalchemy import create_engine, select

    from core.inputs.items import InputItem
    from core.jobs.lifecycle import create_job
    from core.jobs.predictions import Prediction
    from core.jobs.results import ScoredItem, write_results
    from core.models.registry import Backend, ModelSpec, Task
    from core.tables import api_keys

    engine = create_engine(service.database_url)
    spec = ModelSpec(
        name="bench", task=Task.TEXT_CLASSIFICATION, backend=Backend.TRANSFORMERS, source="/"
    )
    langs = ("en", "de", "fr")
    inputs = [
        InputItem(
            item_id=f"r{i}",
            text=f"review number {i}: a fine film, all things considered",
            metadata={"lang": langs[i % 3]},
        )
        for i in range(rows)
    ]
    with engine.begin() as conn:
        owner = conn.scalar(select(api_keys.c.id).where(api_keys.c.name == "bench"))
        job_id = create_job(conn, spec, inputs, chunk_size=10_000, owner_key_id=owner).id
    del inputs
    good = Prediction(
        label="POSITIVE", score=0.731, top_k=[("POSITIVE", 0.731), ("NEGATIVE", 0.269)]
    )
    for start in range(0, rows, WRITE_BATCH):
        batch = [
            ScoredItem(i, f"r{i}", good if i % 50 else Prediction.failure("bad input"))
            for i in range(start, min(start + WRITE_BATCH, rows))
        ]
        with engine.begin() as conn:
            write_results(conn, job_id, "bench", None, batch)
    engine.dispose()
    return job_id


def _rss_kib(pid: int) -> int:
    """RSS of ``pid`` and its children (the API serves from one process; counted anyway)."""
    total = 0
    for proc, _ in process_tree({pid}):
        try:
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append(_rss_kib(self.pid))
            time.sleep(self.every_s)


def _download(
    service: Service, job_id: str, params: dict[str, str], out: Path, pid: int
) -> dict[str, Any]:
    sampler = RssSampler(pid)
    before = _rss_kib(pid)
    sampler.start()
    started = time.perf_counter()
    first_byte = None
    size = 0
    path = f"/v1/jobs/{job_id}/results"
    with (
        service.client(timeout=600) as client,
        out.open("wb") as handle,
        client.stream("GET", path, params=params) as answer,
    ):
        answer.raise_for_status()
        for piece in answer.iter_bytes():
            if first_byte is None:
                first_byte = time.perf_counter() - started
            size += len(piece)
            handle.write(piece)
    elapsed = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    samples = sampler.samples
    return {
        "seconds": elapsed,
        "first_byte_s": first_byte,
        "bytes": size,
        "rss_before_mib": before / 1024,
        "rss_peak_mib": max(samples) / 1024,
        "rss_last_mib": samples[-1] / 1024,
        # RSS over the first and the last quarter of the download: flat when they match.
        "rss_first_quarter_mib": max(samples[: max(1, len(samples) // 4)]) / 1024,
        "rss_last_quarter_mib": max(samples[-max(1, len(samples) // 4) :]) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    workdir = bench_workdir("parquet-export")
    models = bench_models_file(workdir, workdir)
    print(f"machine: {machine_summary()}")
    with running_service(workdir, models) as service:
        api_pid = service.api_pid
        stored = time.perf_counter()
        job_id = _store_job(service, args.rows)
        print(f"stored {args.rows:,} items and results in {time.perf_counter() - stored:.1f} s")
        with tempfile.TemporaryDirectory() as folder:
            for label, params, name in (
                ("parquet + include=input", {"format": "parquet", "include": "input"}, "a.parquet"),
                ("parquet", {"format": "parquet"}, "b.parquet"),
                ("jsonl + include=input", {"format": "jsonl", "include": "input"}, "c.jsonl"),
            ):
                out = Path(folder) / name
                found = _download(service, job_id, params, out, api_pid)
                if name.endswith(".parquet"):
                    import pyarrow.parquet as pq

                    meta = pq.ParquetFile(out).metadata
                    read = f"{meta.num_rows:,} rows in {meta.num_row_groups} row groups"
                    assert meta.num_rows == args.rows, read
                else:
                    with out.open("rb") as handle:
                        read = f"{sum(1 for _ in handle):,} lines"
                print(
                    f"{label:26} {args.rows / found['seconds']:>10,.0f} rows/s  "
                    f"{found['seconds']:6.1f} s  {found['bytes'] / 2**20:7.1f} MiB  "
                    f"first byte {found['first_byte_s']:.2f} s  API RSS MiB: before "
                    f"{found['rss_before_mib']:.0f}, "
                    f"first quarter {found['rss_first_quarter_mib']:.0f}, "
                    f"last quarter {found['rss_last_quarter_mib']:.0f}, "
                    f"peak {found['rss_peak_mib']:.0f}  ({read})"
                )
    print(f"load: {load_summary()}")


if __name__ == "__main__":
    main()
