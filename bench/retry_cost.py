"""What a retry costs: a 5,000-text job with 50 failed items, then ``retry`` of its errors.

    .venv/bin/python bench/retry_cost.py [--count 5000] [--failed 50] [--tiny]

Inputs: ``../shared/bench/gen_texts.py 5000 7``. The first run scores every text through
a runner that raises for 50 of them (a transient failure, as an out-of-memory error
would), so they end as error rows; then the job's errors are retried
(``core.jobs.requeue.retry_errors``, the path of ``POST /v1/jobs/{id}/retry`` and
``bulkscore score --retry-errors``) and scored in-process through the same chunk path a
worker takes. Every input that reaches the model's forward pass is counted: the target is
exactly the 50 failed ones on the retry. Model: DistilBERT-base shaped, random weights
(``--tiny``: the 2-layer test model, for a quick run); the count does not depend on it.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import bench_texts, bench_workdir, build_distilbert_base, machine_summary

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_flags() -> str:
    """Which of the vector extensions that PyTorch's CPU kernels use this CPU has."""
    pattern = "\\|".join(CPU_FLAGS)
    found = subprocess.run(
        ["grep", "-o", "-w", pattern, "/proc/cpuinfo"], capture_output=True, text=True
    ).stdout.split()
    return ", ".join(sorted(set(found))) or "none of " + ", ".join(CPU_FLAGS)


class CountingRunner:
    """Wraps a runner: counts every input of every forward pass; raises for ``failing``."""

    def __init__(self, inner: Any, failing: set[str]) -> None:
        self._inner = inner
        self.failing = failing
        self.inputs = 0
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def predict(self, batch: Sequence[Any], progress: Any = None) -> Any:
        self.inputs += len(batch)
        self.calls += 1
        if any(text in self.failing for text in batch):
            raise RuntimeError("CUDA out of memory (injected by bench/retry_cost.py)")
        return self._inner.predict(batch, progress=progress)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--failed", type=int, default=50)
    parser.add_argument("--tiny", action="store_true", help="the 2-layer test model")
    args = parser.parse_args()

    import torch
    from models import build_tiny_distilbert

    from core.config import get_settings
    from core.db import get_engine
    from core.inputs.items import checked_text_item
    from core.jobs.lifecycle import get_job
    from core.jobs.requeue import retry_errors
    from core.migrate import upgrade
    from core.models.registry import Registry
    from engine.in_process import create_embedded_job, score_in_process
    from engine.runners import build_runner

    # Each injected failure is logged with its traceback by the failure isolation; the
    # table below is what this bench reports.
    logging.getLogger("engine.scoring").setLevel(logging.CRITICAL)
    workdir = bench_workdir("retry")
    print(f"machine: {machine_summary()}")
    print(f"CPU flags: {cpu_flags()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.tiny:
        model_dir = workdir / "tiny"
        if not (model_dir / "config.json").exists():
            build_tiny_distilbert(model_dir)
    else:
        model_dir = build_distilbert_base(bench_workdir("text") / "distilbert-base")
    records = bench_texts(args.count, total=args.count, seed=7, workdir=workdir)
    texts = [record["text"] for record in records]
    # Failing texts that occur once, spread over the job: exactly ``--failed`` error rows.
    once = Counter(texts)
    unique = [i for i, text in enumerate(texts) if once[text] == 1]
    step = max(len(unique) // args.failed, 1)
    failing_indexes = unique[::step][: args.failed]
    failing = {texts[i] for i in failing_indexes}

    settings = get_settings()
    entry = {"task": "text-classification", "backend": "transformers", "source": str(model_dir)}
    spec = Registry.from_mapping({"models": {"bench": entry}}, base_dir=workdir).get("bench")
    database = workdir / "retry.db"
    database.unlink(missing_ok=True)
    url = f"sqlite:///{database}"
    upgrade(url)
    engine = get_engine(url)
    inputs = [
        checked_text_item(f"r{i}", text, settings.max_text_chars) for i, text in enumerate(texts)
    ]
    inner = build_runner(spec, settings)
    inner.setup("cpu")

    job = create_embedded_job(engine, spec, inputs)
    first = CountingRunner(inner, failing)
    started = time.perf_counter()
    score_in_process(engine, settings, job.id, first)  # type: ignore[arg-type]
    first_s = time.perf_counter() - started
    with engine.connect() as conn:
        scored = get_job(conn, job.id)
    assert scored is not None

    with engine.begin() as conn:
        queued = retry_errors(conn, job.id, chunk_size=settings.chunk_size)
    again = CountingRunner(inner, set())
    started = time.perf_counter()
    score_in_process(engine, settings, job.id, again)  # type: ignore[arg-type]
    retry_s = time.perf_counter() - started
    with engine.connect() as conn:
        final = get_job(conn, job.id)
    assert final is not None

    print(f"\n### retry of {len(failing)} failed items of {len(texts)}\n")
    print("| run | status | succeeded | failed | forward-pass inputs | forward calls | seconds |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| first run ({len(failing)} fail) | {scored.status.value} | {scored.succeeded} | "
        f"{scored.failed} | {first.inputs} | {first.calls} | {first_s:.1f} |"
    )
    print(
        f"| retry ({queued.items} queued in {len(queued.chunk_indexes)} chunks) | "
        f"{final.status.value} | {final.succeeded} | {final.failed} | {again.inputs} | "
        f"{again.calls} | {retry_s:.2f} |"
    )
    verdict = "met" if again.inputs == len(failing) else "NOT met"
    target = f"target: exactly {len(failing)}: {verdict}"
    print(f"\nforward-pass inputs on retry: {again.inputs} ({target})")
    print(
        "(the first run's count includes the one-by-one rescoring of each failing batch, "
        "which isolates the failing inputs)"
    )
    Path(database).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
