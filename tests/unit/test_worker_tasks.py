"""The chunk task's messaging: what it retries, re-routes or lets go (no broker needed)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import pytest
from celery.exceptions import Retry

from core.queues import SCORE_CHUNK_TASK
from engine.delivery import ChunkAttemptError, ChunkOutcome, ChunkReport
from worker import tasks
from worker.main import WorkerStartError, parse_model_names, pool_for


@pytest.fixture()
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Messages the task sends (re-routes), instead of a broker."""
    messages: list[dict[str, Any]] = []

    def send_task(name: str, args: Any = None, producer: Any = None, **options: Any) -> None:
        messages.append({"name": name, "args": tuple(args), **options})

    monkeypatch.setattr(tasks.app, "send_task", send_task)
    # No pooled broker connection to acquire a producer from.
    monkeypatch.setattr(tasks.app, "producer_or_acquire", lambda producer=None: nullcontext())
    return messages


def returning(monkeypatch: pytest.MonkeyPatch, outcome: ChunkReport | Exception) -> None:
    def fake(*_args: Any, **_kwargs: Any) -> ChunkReport:
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(tasks, "work_on_chunk", fake)


def retry_countdown(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def retry(**options: Any) -> Retry:
        calls.append(options)
        return Retry("retry", when=options.get("countdown"))

    monkeypatch.setattr(tasks.score_chunk, "retry", retry)
    return calls


def test_the_task_has_its_stable_name() -> None:
    assert tasks.score_chunk.name == SCORE_CHUNK_TASK == "bulkscore.score_chunk"


def test_a_busy_chunk_is_retried_when_its_lease_runs_out(monkeypatch: pytest.MonkeyPatch) -> None:
    returning(monkeypatch, ChunkReport(ChunkOutcome.BUSY, retry_in_s=7.2))
    calls = retry_countdown(monkeypatch)
    with pytest.raises(Retry):
        tasks.score_chunk("job", 3)
    assert calls == [{"countdown": 8}]


def test_a_failed_attempt_is_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    error = ChunkAttemptError("boom", attempts=2, retry=True)
    returning(monkeypatch, error)
    calls = retry_countdown(monkeypatch)
    with pytest.raises(Retry):
        tasks.score_chunk("job", 0)
    assert calls == [{"exc": error, "countdown": 4}]


def test_the_last_failed_attempt_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    returning(monkeypatch, ChunkAttemptError("boom", attempts=3, retry=False))
    calls = retry_countdown(monkeypatch)
    tasks.score_chunk("job", 0)
    assert calls == []


def test_an_error_before_the_claim_is_retried_a_bounded_number_of_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    returning(monkeypatch, ConnectionError("database down"))
    calls = retry_countdown(monkeypatch)
    with pytest.raises(Retry):
        tasks.score_chunk("job", 0)
    assert calls[0]["max_retries"] == tasks.INFRA_RETRIES
    assert calls[0]["countdown"] == 1


def test_a_message_for_a_model_not_loaded_here_is_re_routed(
    monkeypatch: pytest.MonkeyPatch, sent: list[dict[str, Any]]
) -> None:
    returning(monkeypatch, ChunkReport(ChunkOutcome.WRONG_MODEL, model="resnet50"))
    calls = retry_countdown(monkeypatch)
    tasks.score_chunk("job", 5)
    assert sent == [
        {"name": SCORE_CHUNK_TASK, "args": ("job", 5), "queue": "bulkscore.model.resnet50"}
    ]
    assert calls == []


@pytest.mark.parametrize(
    "outcome", [ChunkOutcome.DONE, ChunkOutcome.SKIPPED, ChunkOutcome.CANCELLED]
)
def test_finished_deliveries_send_nothing(
    monkeypatch: pytest.MonkeyPatch, sent: list[dict[str, Any]], outcome: ChunkOutcome
) -> None:
    returning(monkeypatch, ChunkReport(outcome))
    calls = retry_countdown(monkeypatch)
    tasks.score_chunk("job", 1)
    assert sent == [] and calls == []


def test_backoff_is_capped() -> None:
    assert [tasks.backoff_s(n) for n in (0, 1, 3, 10)] == [1, 2, 8, 60]


def test_model_names_and_pools() -> None:
    assert parse_model_names(" sentiment, resnet50,sentiment ") == ["sentiment", "resnet50"]
    with pytest.raises(WorkerStartError):
        parse_model_names(" , ")
    assert pool_for(1) == "solo" and pool_for(4) == "threads"
    with pytest.raises(WorkerStartError):
        pool_for(0)
