"""Settings, read once from ``BULKSCORE_*`` environment variables.

This is the only module that reads the environment (the worker's CUDA pinning is the one
documented exception, see ``worker/pinning.py``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.settings_errors import SettingsError, describe_errors

DEFAULT_MODELS_FILE = Path(__file__).resolve().parent / "models" / "models.toml"


class Settings(BaseSettings):
    """Every knob of bulkscore; each field is ``BULKSCORE_<FIELD>`` in the environment."""

    # A ``.env`` file in the working directory is read too (the environment wins over it),
    # as docker compose and most twelve-factor tools do.
    model_config = SettingsConfigDict(
        env_prefix="BULKSCORE_", extra="ignore", env_file=".env", env_file_encoding="utf-8"
    )

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

    # Batching defaults; a model's entry in the models file may override each. On CPU small
    # batches win (they stay in cache; measured in bench/: a 1k-token budget beat 8k by 2x);
    # a GPU needs large batches to fill it.
    max_batch_size: int = Field(
        default=64, ge=1, description="Most inputs in one CPU forward pass."
    )
    max_batch_tokens: int = Field(
        default=1024,
        ge=16,
        description="Token budget of one CPU text batch: batch size x longest sequence (padded).",
    )
    # Measured on an H200 with a DistilBERT-base shaped model (bench/gpu_check.py): the model
    # alone went from 10.7k texts/s at a 64k-token budget to 26k at 256k; per-batch overhead,
    # not arithmetic, dominates smaller batches. Lower them per model for large models.
    gpu_max_batch_size: int = Field(default=2048, ge=1, description="Most inputs in one GPU pass.")
    gpu_max_batch_tokens: int = Field(
        default=262_144, ge=16, description="Token budget of one GPU text batch."
    )
    first_token_last_layer: bool = Field(
        default=True,
        description=(
            "BERT-family classifiers compute only the [CLS] token in their last layer (the "
            "only one their head reads; checked against the full layer when a model loads)."
        ),
    )
    # Small windows cost nothing in padding (a call's texts are windowed in length order)
    # and bound how long a cancel, a deadline or a more urgent job waits for a worker.
    write_batch_size: int = Field(
        default=128,
        ge=1,
        description=(
            "Most items scored and written per database transaction (fewer long texts: a "
            "window costs at most this many texts of average length) until the worker knows "
            "the model's pace, which then sizes windows (fair_window_s); between two, a "
            "worker checks for cancellation and for more urgent work."
        ),
    )
    torch_threads: int = Field(
        default=0,
        ge=0,
        description=(
            "Compute threads per worker process (torch intra-op, TensorFlow intra-op); "
            "0 = the cores given to the process divided by worker_processes."
        ),
    )
    worker_processes: int = Field(
        default=1,
        ge=1,
        description=(
            "Worker processes sharing this machine's cores; with torch_threads = 0 each takes "
            "an equal share, so two workers split the cores instead of oversubscribing them."
        ),
    )

    # Service.
    api_url: str = Field(default="http://127.0.0.1:8000", description="URL the CLI client uses.")
    api_key: str = Field(default="", description="Bearer key the CLI client sends.")
    # A chunk is also the group a text runner sorts by length: 512 pads ~4% fewer tokens than
    # 256 on review-like texts and halves the tasks, while a CPU worker still finishes a chunk
    # in seconds, so several workers share any job of a few thousand items (bench/).
    chunk_size: int = Field(default=512, ge=1, description="Items per worker task.")
    chunk_claim_s: float = Field(
        default=2.0,
        ge=0,
        description=(
            "A service worker that knows its model's pace claims a chunk together with the "
            "queued chunks after it in its job, up to about this many seconds of work and a "
            "1/n share of those queued (n: the model's live workers, so each other worker "
            "finds its share), and scores them in one pipeline instead of filling and "
            "draining it per chunk; with fair claiming, at most fair_time_slice_s of work (a "
            "turn). 0: one chunk per claim."
        ),
    )
    cross_job_batching: bool = Field(
        default=True,
        description=(
            "A chunk task holding a small chunk also claims other jobs' queued chunks of the "
            "same model and scores them in the same forward passes (many small jobs)."
        ),
    )
    cross_job_max_items: int = Field(
        default=0,
        ge=0,
        description="Most items one cross-job batch holds; 0 = chunk_size.",
    )
    cross_job_wait_ms: int = Field(
        default=25,
        ge=0,
        le=1000,
        description=(
            "When a cross-job batch does not fill one forward pass, wait this long once for "
            "more small jobs to queue."
        ),
    )
    fair_claiming: bool = Field(
        default=True,
        description=(
            "A delivered chunk message claims the fairest queued chunk of its model "
            "(priority, then the key with the least worker time, then its jobs) instead of the "
            "one it names; "
            "false: first in, first out."
        ),
    )
    fair_window_s: float = Field(
        default=0.4,
        ge=0,
        description=(
            "Once a worker knows the model's pace, a write window holds about this many "
            "seconds of work: a fast model's windows are merged (fewer transactions and "
            "checks per item), and with fair claiming a slow model's are scored in parts, "
            "so that it checks for a job that ranks first (and hands the rest back) this "
            "often whatever the model's speed. 0: windows by count only (write_batch_size)."
        ),
    )
    fair_time_slice_s: float = Field(
        default=1.0,
        ge=0,
        description=(
            "A job's turn on a worker: its chunks run at least this long from the claim that "
            "opened the turn (across chunks, when one runs out early) before the unscored rest "
            "goes back to a job that ranks before it (a new or higher-priority job)."
        ),
    )
    priority_aging_s: float = Field(
        default=600.0,
        ge=0,
        description=(
            "A job waiting this long since its last chunk ran climbs one priority level "
            "(low -> normal -> high), so no job starves; 0 = no aging."
        ),
    )
    max_items_per_job: int = Field(
        default=100_000, ge=1, description="Most inputs in one job (more: 413)."
    )
    max_text_chars: int = Field(
        default=20_000, ge=1, description="Longest text; a longer one is a per-item error."
    )
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest request body; refused with 413 before it is read whole.",
    )
    max_upload_files: int = Field(
        default=1000, ge=1, description="Most files in one multipart request (images)."
    )
    rate_limit_per_min: int = Field(
        default=600,
        ge=0,
        description=(
            "Job submissions (POST /v1/jobs) one API key may make per minute, in bursts of "
            "up to as many; more are answered 429 with Retry-After. 0 = no limit."
        ),
    )

    # Images.
    max_image_pixels: int = Field(
        default=40_000_000,
        ge=1,
        description=(
            "Largest image (width x height, from its header) decoded; larger is a per-item "
            "error. Pillow's own bomb limit (89.5 MP) also applies."
        ),
    )
    max_image_bytes: int = Field(
        default=20 * 1024 * 1024, ge=1, description="Largest image file accepted, in bytes."
    )
    image_decode_threads: int = Field(
        default=0, ge=0, description="Image decoding threads per runner; 0 = the cores given."
    )
    visibility_timeout_s: int = Field(
        default=6 * 3600, ge=60, description="Redis redelivery timeout; longer than any chunk."
    )
    chunk_lease_s: int = Field(
        default=600,
        ge=5,
        description=(
            "How long a worker holds a chunk without progress before another may take it over; "
            "renewed while the chunk makes progress. Keep it well under visibility_timeout_s."
        ),
    )
    chunk_max_attempts: int = Field(
        default=3,
        ge=1,
        description=(
            "Attempts of one chunk before it is split in halves to isolate a poison item; "
            "a single item that still fails becomes a per-item error."
        ),
    )
    worker_heartbeat_file: Path | None = Field(
        default=None,
        description="A file the worker touches while it consumes or makes progress (healthcheck).",
    )
    log_level: str = Field(default="INFO", description="Logging level (DEBUG, INFO, ...).")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text: one readable line per record; json: one JSON object per line "
        "(with job_id and chunk when a record concerns one).",
    )

    # Operations (docs/promise.md).
    worker_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of a worker's Prometheus /metrics endpoint; 0 = off.",
    )
    worker_metrics_host: str = Field(
        default="127.0.0.1",
        description="Interface the worker's metrics endpoint listens on (0.0.0.0: all).",
    )
    worker_stall_s: int = Field(
        default=45,
        ge=5,
        description=(
            "A worker holding no task while one of its queues holds messages for this long is "
            "connected but not consuming (celery#9054): it exits non-zero so that its "
            "supervisor restarts it."
        ),
    )
    worker_heartbeat_ttl_s: int = Field(
        default=30,
        ge=3,
        description="Lifetime of the per-model worker heartbeat in Redis that /readyz reads.",
    )
    chunk_resend_after_s: int = Field(
        default=300,
        ge=5,
        description=(
            "A chunk queued this long while its model's queue is empty lost its message "
            "(Redis lost it, or the API died between commit and send): a worker re-sends it."
        ),
    )

    # Database sessions (PostgreSQL; see core/db.py). Set by every connection the service
    # opens, because the server's defaults (0: no limit) let a process frozen inside a
    # transaction hold its row locks, and so every writer of the same job, for ever.
    db_idle_in_transaction_timeout_s: int = Field(
        default=60,
        ge=0,
        description=(
            "A session of any bulkscore process idle inside a transaction this long (a frozen "
            "or paused process) is ended by the server, which releases its locks; 0 = never."
        ),
    )
    api_db_lock_timeout_s: int = Field(
        default=5,
        ge=0,
        description=(
            "Longest an API request waits for a row lock (a cancel behind a write, a retry "
            "behind the same Idempotency-Key) before answering 503 with Retry-After; 0 = no limit."
        ),
    )
    worker_db_lock_timeout_s: int = Field(
        default=120,
        ge=0,
        description=(
            "Longest a worker waits for a row lock before the chunk attempt fails; longer than "
            "db_idle_in_transaction_timeout_s, so a frozen holder is ended first; 0 = no limit."
        ),
    )
    beat_db_lock_timeout_s: int = Field(
        default=30,
        ge=0,
        description=(
            "Longest the beat waits for a row lock before the tick gives up (the next tick "
            "tries again); 0 = no limit."
        ),
    )
    cli_db_lock_timeout_s: int = Field(
        default=120,
        ge=0,
        description=(
            "Longest a CLI command (embedded scoring, training, keys) waits for a row lock on "
            "PostgreSQL; 0 = no limit."
        ),
    )

    # The result cache (core/cache): a row per (model, revision, SHA-256 of an input).
    cache_max_rows: int = Field(
        default=1_000_000,
        ge=0,
        description=(
            "Most rows the result cache keeps; the oldest beyond it are evicted by the "
            "workers' reconciler, in small batches; 0 = no limit."
        ),
    )
    cache_max_age_s: int = Field(
        default=30 * 24 * 3600,
        ge=0,
        description="Cache rows older than this are evicted by the reconciler; 0 = no limit.",
    )

    # Retention (core.jobs.purge): run by the beat every ``purge_every_s`` while either is on,
    # and by ``bulkscore purge``. Counted from a job's ``finished_at``; active jobs are never
    # touched.
    retain_inputs_days: int = Field(
        default=0,
        ge=0,
        description=(
            "Days a finished job's inputs are kept; then they are purged (the job can still "
            "be exported, not retried or resumed); 0 = forever."
        ),
    )
    retain_results_days: int = Field(
        default=0,
        ge=0,
        description=(
            "Days a finished job's results (and inputs) are kept; then they are purged and "
            "the job row says so; 0 = forever."
        ),
    )
    purge_every_s: int = Field(
        default=3600,
        ge=1,
        description="Seconds between two retention purges by the beat (when retention is on).",
    )

    # Schedules (``[schedules.NAME]`` in the models file; ``bulkscore beat``).
    schedule_timezone: str = Field(
        default="UTC",
        description="IANA timezone the schedules' cron expressions are read in (Europe/Paris).",
    )
    schedule_tick_s: int = Field(
        default=30, ge=1, description="Seconds between two checks for due schedules by the beat."
    )

    @model_validator(mode="after")
    def _workers_outwait_frozen_sessions(self) -> Settings:
        # A worker that gives up on a lock fails its chunk attempt; when the holder is a
        # frozen session, waiting until the server ends it costs no attempt at all.
        lock, idle = self.worker_db_lock_timeout_s, self.db_idle_in_transaction_timeout_s
        if lock and idle and lock <= idle:
            raise ValueError(
                f"BULKSCORE_WORKER_DB_LOCK_TIMEOUT_S ({lock}) must be longer than "
                f"BULKSCORE_DB_IDLE_IN_TRANSACTION_TIMEOUT_S ({idle}), or 0: a worker must "
                "outwait a frozen session until the server ends it"
            )
        return self

    @field_validator("schedule_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        # Fail at start-up, not at the first due time, on a misspelt zone.
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}; use an IANA name such as UTC") from exc
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings (read once).

    Raises :class:`SettingsError` with one line such as ``BULKSCORE_MAX_BATCH_SIZE: must be
    an integer >= 1 (got 'abc')``: entry points print it and exit with status 2.
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc, Settings.model_fields, "BULKSCORE_")) from None


def reset_settings_cache() -> None:
    """Forget the cached settings, so the next call re-reads the environment (tests, CLI)."""
    get_settings.cache_clear()
