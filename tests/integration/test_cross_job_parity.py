"""Small jobs scored together (cross-job batching) equal each text scored alone.

A real tiny model and PostgreSQL: one delivery claims the other jobs' queued chunks (``FOR
UPDATE SKIP LOCKED``), pads their texts into shared batches, writes each job's rows with
COPY, and every label and score equals ``pipeline(...)`` on that text alone, within 1e-4.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from models import write_models_file
from sqlalchemy import select

from core.config import Settings
from core.db import get_engine
from core.inputs.items import checked_text_item
from core.jobs.lifecycle import create_job, get_job
from core.jobs.results import iter_results
from core.jobs.status import JobStatus
from core.migrate import upgrade
from core.models.registry import Registry
from core.tables import chunks
from engine.chunk_work import work_on_chunk
from engine.delivery import ChunkOutcome
from engine.runners import build_runner
from engine.runners.base import Progress, Runner

HEAD_SCALE = 1000.0
WORDS = [
    *("good", "bad", "film", "plot", "actor", "music", "boring"),
    *("great", "awful", "scene", "story", "love", "hate"),
]


class CountingRunner(Runner):
    """A real runner that records how many inputs each ``predict`` call got."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.name = runner.name
        self.revision = runner.revision
        self.max_batch_size = 64
        self.calls: list[int] = []

    def setup(self, device: str = "cpu") -> None:
        """Nothing to load."""

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Any]:
        self.calls.append(len(batch))
        return self.runner.predict(batch, progress=progress)


def job_texts(seed: int = 11) -> list[list[str]]:
    """Twelve jobs of one to three texts, 1 to 600 words, one of them empty."""
    rng = random.Random(seed)
    lengths = [1, 600, 3, 90, 250, 8, 40, 505, 2, 13, 350, 5, 1, 120, 30, 70, 200, 4]
    texts = [" ".join(rng.choice(WORDS) for _ in range(n)) for n in lengths]
    texts[6] = "   "  # refused at intake: a per-item error inside a shared batch
    sizes = [1, 2, 1, 3, 1, 1, 2, 1, 1, 2, 1, 2]
    jobs, start = [], 0
    for size in sizes:
        jobs.append(texts[start : start + size])
        start += size
    return jobs


@pytest.fixture(scope="module")
def spread_model(tiny_text_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a head that tells this test's texts apart.

    The plain tiny model's representations hardly vary with the text, so it scores every
    text within ~4e-5 of 0.5034, under the 1e-4 tolerance: a result landing on the wrong
    text or job would go unnoticed. Scaling the head by ``HEAD_SCALE`` around the texts'
    mean representation spreads the scores over ~0.49-0.53 (gaps ~1e-3) without changing
    the model's arithmetic, so padding and batching differences stay as small as before.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path_factory.mktemp("spread-model")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_text_model))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_text_model)).eval()
    texts = [text for texts in job_texts() for text in texts if text.strip()]
    with torch.no_grad():
        features = [
            model.pre_classifier(
                model.distilbert(
                    **tokenizer(t, truncation=True, return_tensors="pt")
                ).last_hidden_state[:, 0]
            ).relu()[0]
            for t in texts
        ]
        mean = torch.stack(features).mean(dim=0)
        head = model.classifier
        head.weight.mul_(HEAD_SCALE)
        head.bias.copy_(-(head.weight @ mean))  # the mean text scores 0.5
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def test_small_jobs_scored_together_equal_each_text_alone(
    pg_url: str, spread_model: Path, tmp_path: Path
) -> None:
    from transformers import pipeline

    upgrade(pg_url)
    engine = get_engine(pg_url)
    models_file = write_models_file(
        tmp_path / "models.toml",
        {
            "tiny": {
                "task": "text-classification",
                "backend": "transformers",
                "source": str(spread_model),
                "max_batch_size": 8,
                "max_batch_tokens": 512,
            }
        },
    )
    spec = Registry.load(models_file).get("tiny")
    settings = Settings(database_url=pg_url, cross_job_wait_ms=0, write_batch_size=512)
    runner = build_runner(spec, settings)
    runner.setup("cpu")
    counting = CountingRunner(runner)

    per_job = job_texts()
    with engine.begin() as conn:
        jobs = [
            create_job(
                conn,
                spec,
                [checked_text_item(f"j{n}-{k}", t, 20_000) for k, t in enumerate(texts)],
                chunk_size=len(texts),
            )
            for n, texts in enumerate(per_job)
        ]
    report = work_on_chunk(engine, settings, jobs[0].id, 0, {"tiny": counting}.get)
    assert report.outcome == ChunkOutcome.DONE
    assert {b.job_id for b in report.batched} == {job.id for job in jobs[1:]}
    # All usable texts of all twelve jobs went through one predict call.
    assert counting.calls == [sum(len(t) for t in per_job) - 1]

    classifier = pipeline("text-classification", model=str(spread_model), device="cpu")
    usable = [text for texts in per_job for text in texts if text.strip()]
    expected_scores = sorted(classifier(t, truncation=True)[0]["score"] for t in usable)
    gaps = [b - a for a, b in pairwise(expected_scores)]
    assert sorted(gaps)[len(gaps) // 2] > 5e-4, "texts must be told apart by their scores"
    with engine.connect() as conn:
        for job, texts in zip(jobs, per_job, strict=True):
            final = get_job(conn, job.id)
            assert final is not None and final.status == JobStatus.COMPLETED
            assert final.succeeded + final.failed == len(texts)
            rows = list(iter_results(conn, job.id))
            assert [row["index"] for row in rows] == list(range(len(texts)))
            for text, row in zip(texts, rows, strict=True):
                if not text.strip():
                    assert row["error"] == "empty text" and final.failed == 1
                    continue
                expected = classifier(text, truncation=True, max_length=512)[0]
                assert row["label"] == expected["label"]
                assert abs(row["score"] - expected["score"]) < 1e-4
        states = conn.execute(select(chunks.c.status, chunks.c.attempts)).all()
    assert sorted(states) == [("done", 1)] * len(jobs)

    # The other jobs' own messages, delivered now, are no-ops.
    for job in jobs[1:]:
        again = work_on_chunk(engine, settings, job.id, 0, {"tiny": counting}.get)
        assert again.outcome == ChunkOutcome.SKIPPED
    assert len(counting.calls) == 1
