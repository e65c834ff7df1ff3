"""Liveness (stall detection), metrics and structured logs, without servers."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from api_support import TEXT_MODEL, UnitApi, bearer, unit_api
from prometheus_client import REGISTRY

from core.jobs.predictions import Prediction
from core.logs import ContextFilter, JsonFormatter, TextFormatter, job_context
from engine.runners.base import Progress, Runner
from worker.liveness import StallClock, check_interval_s
from worker.metrics import InstrumentedRunner

# -- liveness --------------------------------------------------------------------------------


def test_a_worker_is_stalled_only_after_waiting_idle_for_stall_s() -> None:
    clock = StallClock(stall_s=10, last_activity=0.0)
    assert not clock.observe(100.0, depth=3, busy=False), "the clock starts when work appears"
    assert not clock.observe(109.0, depth=3, busy=False)
    assert clock.observe(111.0, depth=3, busy=False)


@pytest.mark.parametrize(
    ("depth", "busy"),
    [(0, False), (3, True), (None, False)],
    ids=["nothing-queued", "busy-scoring", "redis-away"],
)
def test_idle_with_nothing_queued_busy_or_redis_away_is_not_a_stall(
    depth: int | None, busy: bool
) -> None:
    clock = StallClock(stall_s=10, last_activity=0.0)
    clock.observe(100.0, depth=3, busy=False)
    assert not clock.observe(105.0, depth=depth, busy=busy)
    # The wait starts over: a stall needs stall_s of uninterrupted waiting.
    assert not clock.observe(111.0, depth=3, busy=False)
    assert not clock.observe(120.0, depth=3, busy=False)
    assert clock.observe(121.5, depth=3, busy=False)


def test_receiving_a_message_resets_the_stall_clock() -> None:
    clock = StallClock(stall_s=10, last_activity=0.0)
    clock.observe(100.0, depth=3, busy=False)
    clock.activity(now=108.0)
    assert not clock.observe(115.0, depth=3, busy=False)
    assert clock.observe(118.5, depth=3, busy=False)


def test_checks_are_frequent_enough_to_catch_a_stall_within_a_minute() -> None:
    assert check_interval_s(45) == 10
    assert check_interval_s(6) == 2


# -- worker metrics --------------------------------------------------------------------------


class BatchingRunner(Runner):
    name = "metered"
    revision = None
    max_batch_size = 3

    def setup(self, device: str = "cpu") -> None:
        """Nothing to load."""

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        for start in range(0, len(batch), 3):
            if progress is not None:
                progress(len(batch[start : start + 3]))
        return [
            Prediction.failure("bad") if text == "" else Prediction(label="x", score=1.0)
            for text in batch
        ]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_instrumented_runner_counts_items_and_each_forward_batch() -> None:
    runner = InstrumentedRunner(BatchingRunner())
    before_ok = sample("bulkscore_worker_items_scored_total", model="metered", outcome="ok")
    before_batches = sample("bulkscore_worker_batch_size_count", model="metered")
    seen: list[int] = []

    predictions = runner.predict(["a", "b", "", "d", "e", "f", "g"], progress=seen.append)

    assert len(predictions) == 7 and seen == [3, 3, 1], "the caller's progress still runs"
    assert sample("bulkscore_worker_items_scored_total", model="metered", outcome="ok") == (
        before_ok + 6
    )
    assert sample("bulkscore_worker_items_scored_total", model="metered", outcome="error") >= 1
    assert sample("bulkscore_worker_batch_size_count", model="metered") == before_batches + 3
    assert runner.max_batch_size == 3 and runner.name == "metered", "attributes pass through"


# -- structured logs -------------------------------------------------------------------------


def record(message: str) -> logging.LogRecord:
    entry = logging.LogRecord("worker.tasks", logging.INFO, __file__, 1, message, None, None)
    ContextFilter().filter(entry)
    return entry


def test_log_lines_carry_the_job_and_chunk_they_concern() -> None:
    with job_context("abc123", 4):
        inside = record("scored")
    outside = record("idle")
    assert TextFormatter().format(inside).endswith("worker.tasks: scored job=abc123 chunk=4")
    assert TextFormatter().format(outside).endswith("worker.tasks: idle")
    line = json.loads(JsonFormatter().format(inside))
    assert line["job_id"] == "abc123" and line["chunk"] == 4 and line["message"] == "scored"
    assert "job_id" not in json.loads(JsonFormatter().format(outside))


# -- API metrics -----------------------------------------------------------------------------


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path) as api:
        yield api


def test_api_metrics_count_jobs_requests_errors_queues_and_workers(api: UnitApi) -> None:
    job_id = api.post_job(["a", "b"]).json()["id"]
    api.get(f"/v1/jobs/{job_id}")
    api.client.get("/v1/jobs", headers=bearer("bsk_wrong"))
    api.client.post("/v1/jobs", content=b"x", headers={**bearer(api.key), "Content-Type": "a/b"})

    response = api.client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'bulkscore_jobs{status="queued"} 1.0' in text
    assert 'bulkscore_jobs{status="completed"} 0.0' in text
    assert (
        'bulkscore_api_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 1.0'
        in text
    ), "routes are templates, never raw job ids"
    assert job_id not in text
    assert 'bulkscore_api_errors_total{kind="unauthorized"} 1.0' in text
    assert 'bulkscore_api_errors_total{kind="unsupported_media_type"} 1.0' in text
    assert f'bulkscore_queue_depth{{model="{TEXT_MODEL}"}} 1.0' in text
    assert f'bulkscore_workers{{model="{TEXT_MODEL}"}} 1.0' in text


def test_metrics_survive_a_broker_outage(api: UnitApi) -> None:
    api.queue.down = True
    response = api.client.get("/metrics")
    assert response.status_code == 200
    assert "bulkscore_jobs" in response.text and "bulkscore_workers{" not in response.text
