"""Fixtures shared by every test: tiny models, a models file, isolated settings."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import build_tiny_distilbert, write_models_file

from core.config import reset_settings_cache
from core.db import dispose_engines


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Markers come from folders: tests/unit -> unit, tests/integration -> integration.
    for item in items:
        parts = Path(str(item.fspath)).parts
        for marker in ("unit", "integration"):
            if marker in parts:
                item.add_marker(marker)


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_distilbert(tmp_path_factory.mktemp("tiny-distilbert"))


@pytest.fixture(scope="session")
def models_file(tmp_path_factory: pytest.TempPathFactory, tiny_text_model: Path) -> Path:
    folder = tmp_path_factory.mktemp("models")
    return write_models_file(
        folder / "models.toml",
        {
            "tiny": {
                "task": "text-classification",
                "backend": "transformers",
                "source": str(tiny_text_model),
                "max_batch_size": 8,
                "max_batch_tokens": 512,
            },
        },
    )


@pytest.fixture()
def settings_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, models_file: Path
) -> Iterator[dict[str, str]]:
    """BULKSCORE_* pointing at a fresh SQLite file and the tiny models file."""
    env = {
        "BULKSCORE_DATABASE_URL": f"sqlite:///{tmp_path / 'bulkscore.db'}",
        "BULKSCORE_MODELS": str(models_file),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    yield env
    reset_settings_cache()
    dispose_engines()


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on 127.0.0.1 (dropped after the test)."""
    from services import fresh_postgres_database

    with fresh_postgres_database() as url:
        yield url


@pytest.fixture()
def redis_url() -> Iterator[str]:
    """A flushed Redis database on 127.0.0.1 (flushed again after the test)."""
    from services import flushed_redis

    with flushed_redis() as url:
        yield url
