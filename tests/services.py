"""Real PostgreSQL and Redis for integration tests: a fresh database per test, flushed Redis.

Every test gets its own PostgreSQL database (created from the server on 127.0.0.1 and
dropped afterwards) and a Redis database number that is flushed before and after, so tests
never see each other's rows or messages.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import redis

PG_ADMIN_DSN = os.environ.get(
    "BULKSCORE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE = os.environ.get("BULKSCORE_TEST_REDIS", "redis://127.0.0.1:6379")
# Separate helpers or parallel runs may pick other numbers.
REDIS_DB = int(os.environ.get("BULKSCORE_TEST_REDIS_DB", "9"))


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create an empty database; yield its SQLAlchemy URL; drop it."""
    name = f"bulkscore_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        from core.db import dispose_engines

        dispose_engines()
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def flushed_redis(db: int = REDIS_DB) -> Iterator[str]:
    url = f"{REDIS_BASE}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
