"""Settings, read once from ``BULKSCORE_*`` environment variables.

This is the only module that reads the environment (the worker's CUDA pinning is the one
documented exception, see ``worker/pinning.py``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODELS_FILE = Path(__file__).resolve().parent / "models.toml"


class Settings(BaseSettings):
    """Every knob of bulkscore; each field is ``BULKSCORE_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="BULKSCORE_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///bulkscore.db",
        description="SQLAlchemy URL of the results database (PostgreSQL in production).",
    )
    broker_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Celery broker (Redis) URL."
    )
    models: Path = Field(
        default=DEFAULT_MODELS_FILE, description="Path of the TOML models (and schedules) file."
    )

    # Batching defaults; a model's entry in the models file may override each.
    max_batch_size: int = Field(default=64, ge=1, description="Most inputs in one forward pass.")
    max_batch_tokens: int = Field(
        default=8192,
        ge=16,
        description="Token budget of one text batch: batch size x longest sequence (padded).",
    )
    write_batch_size: int = Field(
        default=512, ge=1, description="Results written per database transaction (embedded)."
    )
    torch_threads: int = Field(
        default=0, ge=0, description="torch intra-op threads per process; 0 = the cores given."
    )

    # Service.
    api_url: str = Field(default="http://127.0.0.1:8000", description="URL the CLI client uses.")
    api_key: str = Field(default="", description="Bearer key the CLI client sends.")
    chunk_size: int = Field(default=256, ge=1, description="Items per worker task.")
    max_items_per_job: int = Field(default=100_000, ge=1)
    max_text_chars: int = Field(default=20_000, ge=1)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    visibility_timeout_s: int = Field(
        default=6 * 3600, ge=60, description="Redis redelivery timeout; longer than any chunk."
    )
    log_level: str = Field(default="INFO")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings (read once)."""
    return Settings()


def reset_settings_cache() -> None:
    """Forget the cached settings, so the next call re-reads the environment (tests, CLI)."""
    get_settings.cache_clear()
