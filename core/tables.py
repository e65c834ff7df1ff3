"""The SQL schema (SQLAlchemy Core). Alembic migrations in ``migrations/`` create it."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    true,
)

# The largest value of an INTEGER column (results.index, trained_models.version...): 32-bit
# on PostgreSQL, which refuses a larger parameter outright. Numbers from outside compared
# with such a column are bounded by this first.
MAX_INTEGER = 2**31 - 1

# Stable constraint names, so migrations can drop and alter them on every backend.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    # SHA-256 of the key; the key itself is shown once and never stored.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("model", String(64), nullable=False),
    Column("model_revision", String(128)),
    Column("input_kind", String(8), nullable=False),
    Column("status", String(16), nullable=False),
    Column("total", Integer, nullable=False),
    Column("succeeded", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("owner_key_id", Integer, ForeignKey("api_keys.id")),
    Column("idempotency_key", String(200)),
    Column("request_hash", String(64)),
    Column("schedule", String(64)),
    Column("error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    # Who claims the job's chunks (core.jobs.status.JobDriver): the service's workers, or
    # the one `bulkscore score` process that made it. The service never touches the latter.
    Column("driver", String(16), nullable=False, server_default="service"),
    # The model whose workers run the job's chunks, and so the queue they are sent to: the
    # job's own model for scoring, the base for a training job (which trains `model`).
    # Everything that routes or sweeps chunks by model reads this column.
    Column("runs_on", String(64), nullable=False),
    # Not finished by then, the job ends ``expired`` (core.jobs.expiry); NULL: no deadline.
    Column("expires_at", DateTime(timezone=True)),
    # high, normal or low (core.jobs.priority): higher levels are claimed first.
    Column("priority", String(8), nullable=False, server_default="normal"),
    # When a worker last claimed one of the job's chunks: the round-robin clock of fair
    # claiming (core.chunks.fair). NULL: never served, so first in line within its level.
    Column("last_served_at", DateTime(timezone=True)),
    # When the turn that claim opened ends (NULL: no turn).
    Column("turn_ends_at", DateTime(timezone=True)),
    # SHA-256 of an embedded job's inputs (core.jobs.inputs_hash): a re-run of the same
    # ``--job-id`` with other inputs is refused. NULL for service jobs.
    Column("inputs_hash", String(64)),
    # The caller's small string-to-string object (api.schemas.JobMetadata), echoed with the
    # job and never read by the service. NULL: none was sent.
    Column("metadata", JSON(none_as_null=True)),
    # False: the job asked for fresh scores (``cache: false``): its items are neither looked
    # up in nor stored into the result cache (core.cache).
    Column("use_cache", Boolean, nullable=False, server_default=true()),
    # When the retention purge (core.jobs.purge) removed the job's inputs (its items rows),
    # and its results: the job row stays, so its status says what is gone. NULL: all there.
    Column("inputs_purged_at", DateTime(timezone=True)),
    Column("results_purged_at", DateTime(timezone=True)),
    UniqueConstraint("owner_key_id", "idempotency_key", name="uq_jobs_owner_idempotency"),
    Index("ix_jobs_owner_created", "owner_key_id", "created_at"),
    Index("ix_jobs_status", "status"),
)

items = Table(
    "items",
    metadata,
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("index", Integer, primary_key=True, autoincrement=False),
    Column("item_id", String(256), nullable=False),
    Column("text", Text),
    Column("data", LargeBinary),
    # Set when the input was refused at intake (e.g. NUL bytes); scored as a per-item error.
    Column("error", Text),
    # The input's kept columns / JSON ``metadata`` (strings), echoed in results and
    # exports; NULL when it carried none.
    Column("metadata", JSON(none_as_null=True)),
)

chunks = Table(
    "chunks",
    metadata,
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("index", Integer, primary_key=True, autoincrement=False),
    Column("start", Integer, nullable=False),
    Column("stop", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("leased_until", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_chunks_status", "status"),
)

results = Table(
    "results",
    metadata,
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    # (job_id, index) is the primary key: a re-run of an item cannot write a second row.
    Column("index", Integer, primary_key=True, autoincrement=False),
    Column("item_id", String(256), nullable=False),
    Column("label", String(256)),
    Column("score", Float),
    Column("top_k", JSON),
    Column("error", Text),
    Column("model", String(64), nullable=False),
    Column("model_revision", String(128)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # True: the row's label, score and top-k came from the result cache (core.cache), not
    # from a forward pass run for this job.
    Column("cached", Boolean, nullable=False, server_default=false()),
)

# The result cache (core.cache): what a model said about an input, keyed by the model, the
# revision it keys on (a trained model's includes its version and head digest) and the
# SHA-256 of the input (an image's raw bytes, a text's UTF-8). Only successful predictions;
# evicted oldest first by ``created_at`` (core.cache.evict).
result_cache = Table(
    "result_cache",
    metadata,
    Column("model", String(64), primary_key=True),
    # "" for a model without a revision: a primary key column cannot be NULL.
    Column("model_revision", String(200), primary_key=True),
    Column("input_sha256", String(64), primary_key=True),
    Column("label", String(256), nullable=False),
    Column("score", Float, nullable=False),
    Column("top_k", JSON),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_result_cache_created_at", "created_at"),
)

# Web sessions (api/web): a signed-in browser's cookie holds a random token; only its
# SHA-256 is stored, so a leaked database yields no usable session.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("key_id", Integer, ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_web_sessions_expires_at", "expires_at"),
)

# Error rows waiting to be replaced by a retry (core.jobs.retry_marks): the mark is deleted
# in the very transaction that replaces its row, so a redelivered chunk finds no mark and
# writes nothing, and a job completes only once no mark of it is left.
retry_items = Table(
    "retry_items",
    metadata,
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("index", Integer, primary_key=True, autoincrement=False),
)

# One row per retention purge (core.jobs.purge): what it removed, for ``/metrics`` and for
# an operator asking what went when. A dry run's row counts what would have gone.
purge_runs = Table(
    "purge_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("jobs", Integer, nullable=False, server_default="0"),
    Column("input_rows", BigInteger, nullable=False, server_default="0"),
    Column("result_rows", BigInteger, nullable=False, server_default="0"),
    Column("dry_run", Boolean, nullable=False, server_default=false()),
)

# Schedules (``[schedules.NAME]`` in the models file). One row per schedule and due time:
# inserting it is the claim, so two beats (or a beat and ``schedules run``) cannot both
# create a job for the same due time.
schedule_runs = Table(
    "schedule_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("schedule", String(64), nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    # claimed, running, completed, failed, cancelled, skipped, empty (core.schedules.runner).
    Column("status", String(16), nullable=False),
    # SET NULL: deleting a job (it could not be queued) must not be blocked by its run.
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="SET NULL")),
    # The watermark the run read from, and the one it commits when its job completes
    # (JSON: a tagged timestamp or number for SQL sources, the files seen for file sources).
    Column("window_start", JSON),
    Column("window_end", JSON),
    Column("items", Integer, nullable=False, default=0),
    Column("error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    UniqueConstraint("schedule", "due_at", name="uq_schedule_runs_schedule_due_at"),
    Index("ix_schedule_runs_status", "status"),
)

# The committed watermark of each SQL schedule: moved only when a run's job completes.
schedule_state = Table(
    "schedule_state",
    metadata,
    Column("schedule", String(64), primary_key=True),
    Column("watermark", JSON),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Worker seconds each owner key has received on each model (``runs_on``): fair claiming
# ranks keys by it (core.chunks.fair). ``owner`` 0: jobs without an owner key.
key_clocks = Table(
    "key_clocks",
    metadata,
    Column("owner", Integer, primary_key=True),
    Column("runs_on", String(64), primary_key=True),
    Column("clock_s", Float, nullable=False),
)

# The files a files/jsonl/csv schedule has scored, as they were: a file whose size or
# modification time differs from its row here (or that has no row) is new to the next run.
schedule_files = Table(
    "schedule_files",
    metadata,
    Column("schedule", String(64), primary_key=True),
    Column("path", String(1024), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # SHA-256 of the bytes read and how many inputs they held: a file that grew by appended
    # lines (its first ``size`` bytes unchanged) has only its inputs past ``rows`` scored.
    Column("sha256", String(64)),
    Column("rows", Integer),
)

# Models trained with ``bulkscore train`` / ``POST /v1/models``: a small head over a frozen
# backbone from the models file. One row per (name, version); the head itself (a safetensors
# file: ``weight`` [labels x dim], ``bias`` [labels], ``labels`` metadata) lives in the row, so
# every worker loads it from SQL without a shared disk. No pickle anywhere.
trained_models = Table(
    "trained_models",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("base", String(64), nullable=False),
    Column("task", String(32), nullable=False),
    Column("input_kind", String(8), nullable=False),
    Column("labels", JSON, nullable=False),
    # The evaluation on the stratified hold-out: accuracy, per-label precision/recall/F1,
    # confusion matrix, sizes, the classifier's settings (engine.training).
    Column("metrics", JSON, nullable=False),
    Column("head", LargeBinary, nullable=False),
    Column("head_sha256", String(64), nullable=False),
    # The training job that made it; unique, so a redelivered training task cannot register
    # a second version for the same job.
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="SET NULL"), unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # The API key whose training job registered this version; NULL: the operator's
    # (``bulkscore train``). A name belongs to the owner of its first version: only that
    # owner registers more, and other keys neither see nor score it (core.models.trained).
    Column("owner_key_id", Integer, ForeignKey("api_keys.id")),
    UniqueConstraint("name", "version", name="uq_trained_models_name_version"),
)

# What a training job trains: the job row itself (jobs) holds status, counts and error; this
# row says it is a training job and holds its request. ``data`` is the upload (CSV, or a zip
# of one folder per label) for jobs that run on the workers; NULL for ``bulkscore train``,
# which reads its files in-process.
training_runs = Table(
    "training_runs",
    metadata,
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("base", String(64), nullable=False),
    Column("data_format", String(8), nullable=False),
    Column("data", LargeBinary),
    Column("holdout_fraction", Float, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
