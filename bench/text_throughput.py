"""Text throughput, side by side in one run: the common loops against ``bulkscore score``.

    .venv/bin/python bench/text_throughput.py [--count 500]

Inputs: the first 500 lines of ``../shared/bench/gen_texts.py 2000 7``. Model: DistilBERT-base
shaped, random weights (speed only; labels are meaningless). Prints items/s and ratios.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import Row, bench_texts, build_distilbert_base, print_table, timed


def bulkscore_in_process(model_dir: Path, records: list[dict[str, str]], workdir: Path) -> Row:
    """The embedded path of ``bulkscore score``: spec -> runner -> score_items -> SQLite."""
    from core.config import get_settings
    from core.db import get_engine
    from core.items import checked_text_item
    from core.jobs import create_job, load_items
    from core.migrate import upgrade
    from core.registry import Registry
    from core.status import JobStatus
    from worker.runners import build_runner
    from worker.scoring import score_items

    settings = get_settings()
    registry = Registry.from_mapping(
        {
            "models": {
                "bench": {
                    "task": "text-classification",
                    "backend": "transformers",
                    "source": str(model_dir),
                }
            }
        },
        base_dir=workdir,
    )
    spec = registry.get("bench")
    url = f"sqlite:///{workdir / 'bench.db'}"
    upgrade(url)
    engine = get_engine(url)
    runner = build_runner(spec, settings)
    runner.setup("cpu")
    items = [checked_text_item(r["id"], r["text"], settings.max_text_chars) for r in records]

    def run() -> None:
        with engine.begin() as conn:
            job = create_job(conn, spec, items, chunk_size=len(items), status=JobStatus.RUNNING)
        with engine.connect() as conn:
            indexed = load_items(conn, job.id, 0, job.total)
        totals = score_items(
            engine, job.id, runner, indexed, write_batch_size=settings.write_batch_size
        )
        assert totals.succeeded == len(items), totals

    return timed("bulkscore score (in-process, SQLite)", len(items), run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args()

    import torch
    from transformers import pipeline

    workdir = Path(tempfile.mkdtemp(prefix="bench-text-"))
    records = bench_texts(args.count, workdir=workdir)
    texts = [r["text"] for r in records]
    model_dir = build_distilbert_base(workdir / "distilbert-base")
    print(f"{len(texts)} texts, torch threads {torch.get_num_threads()}", flush=True)

    classifier = pipeline("text-classification", model=str(model_dir), device="cpu")
    classifier(texts[:4])  # warm-up, as every row below gets one
    rows = [
        timed(
            "pipeline once per text",
            len(texts),
            lambda: [classifier(t, truncation=True) for t in texts],
        ),
        timed(
            "pipeline(texts, batch_size=32), arrival order",
            len(texts),
            lambda: classifier(texts, batch_size=32, truncation=True),
        ),
    ]
    rows.append(bulkscore_in_process(model_dir, records, workdir))
    print_table(
        "Text throughput (DistilBERT-base shape, fp32, CPU)",
        rows,
        {"once per text": rows[0].name, "batch_size=32": rows[1].name},
    )


if __name__ == "__main__":
    main()
