"""The per-key submission rate limit, on a real Redis: 429 with Retry-After, shared by
every API process, and let through (logged) when Redis cannot be reached."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import redis
from api_support import unit_api
from sqlalchemy import func, select

from core.rate_limit import BUCKET_PREFIX, RateLimiter
from core.tables import jobs


def test_a_key_over_its_rate_gets_429_with_retry_after(tmp_path: Path, redis_url: str) -> None:
    with unit_api(tmp_path, broker_url=redis_url, rate_limit_per_min=3) as api:
        accepted = [api.post_job(["a"]).status_code for _ in range(3)]
        refused = api.post_job(["a"])
        other = api.post_job(["a"], key=api.other_key)
        reads = [api.get("/v1/jobs").status_code for _ in range(5)]
        with api.engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(jobs)).scalar_one()

    assert accepted == [202, 202, 202]
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "rate_limited"
    # 3 a minute: the next token is back within 20 s.
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    assert "3 jobs a minute" in refused.json()["detail"]
    assert other.status_code == 202, "each key has its own bucket"
    assert reads == [200] * 5, "only submissions are limited"
    assert stored == 4, "a refused submission stores nothing"
    # A bucket expires once it would be full again (a minute from empty): nothing is left
    # in Redis for ever.
    client = redis.Redis.from_url(redis_url)
    buckets = list(client.scan_iter(f"{BUCKET_PREFIX}*"))
    assert len(buckets) == 2
    assert all(0 < client.pttl(bucket) <= 61_000 for bucket in buckets)


def test_the_bucket_refills_and_is_shared_by_api_processes(redis_url: str) -> None:
    # Two limiters stand for two API processes: one bucket per key between them.
    first, second = RateLimiter(redis_url, 120), RateLimiter(redis_url, 120)
    try:
        taken = [(first if n % 2 else second).take("key").allowed for n in range(120)]
        refused = first.take("key")
        assert all(taken)
        assert not refused.allowed and refused.retry_after_s == 1
        assert second.take("another key").allowed
        time.sleep(0.6)  # 2 tokens a second: one is back
        assert second.take("key").allowed
        assert not first.take("key").allowed
    finally:
        first.close()
        second.close()


def test_an_unreachable_redis_lets_submissions_through(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="core.rate_limit")
    with unit_api(tmp_path, broker_url="redis://127.0.0.1:1/0", rate_limit_per_min=1) as api:
        answers = [api.post_job(["a"]).status_code for _ in range(3)]
    assert answers == [202, 202, 202]
    assert "rate limit not applied: Redis cannot be reached" in caplog.text
