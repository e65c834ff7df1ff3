"""Request and response bodies of the HTTP API (pydantic models, shown in ``/docs``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
)

from core.jobs.expiry import MAX_EXPIRES_AFTER_S, MIN_EXPIRES_AFTER_S
from core.jobs.lifecycle import Job
from core.jobs.priority import Priority
from core.jobs.status import JobStatus


class InputRecord(BaseModel):
    """One input to score: a ``text`` for text models, an ``image_base64`` for image models."""

    # Unknown fields are ignored rather than refused: a bulk job should not fail as a whole
    # because its rows carry extra columns.
    model_config = ConfigDict(extra="ignore")

    id: str | int | None = Field(
        default=None,
        description="Your id for this input, echoed in its result (default: 1-based position): "
        "at most 256 characters, no NUL; an unusable id is that input's error.",
        examples=["r1"],
    )
    # Length and content are checked per item (a bad input becomes that item's error), so
    # there are no constraints here that would refuse the whole job.
    text: str | None = Field(
        default=None, description="The text to score.", examples=["A wonderful little film."]
    )
    image_base64: str | None = Field(
        default=None,
        description="An image file (JPEG, PNG, WebP, GIF, BMP or TIFF), base64-encoded.",
    )
    # Bounded like a job's metadata (JobMetadata, defined below: resolved by model_rebuild).
    metadata: JobMetadata | None = Field(
        default=None,
        description="Strings carried with this input into its result rows and every export "
        "(passthrough columns).",
    )

    @field_validator("id", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: object) -> object:
        # pydantic would read true as the integer 1, an id another input may have.
        if isinstance(value, bool):
            raise ValueError("an id is a string or an integer, not true or false")
        return value


PRIORITY_DESCRIPTION = (
    "`high`, `normal` (default) or `low`: workers take higher levels first, and share each "
    "level across API keys by the worker time each has had, then across a key's jobs. A "
    "job waiting `priority_aging_s` (default 10 min) climbs a level, so low jobs never "
    "starve. Schedules' jobs default to `low`."
)


METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512


def _storable(text: str) -> str:
    # Stored as JSON in SQL: PostgreSQL refuses a NUL and a lone surrogate is not UTF-8.
    if "\x00" in text:
        raise ValueError("metadata keys and values may not contain NUL")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("metadata keys and values must be valid Unicode text") from None
    return text


MetadataKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=METADATA_MAX_KEY_CHARS),
    AfterValidator(_storable),
]
MetadataValue = Annotated[
    str, StringConstraints(max_length=METADATA_MAX_VALUE_CHARS), AfterValidator(_storable)
]
JobMetadata = Annotated[
    dict[MetadataKey, MetadataValue],
    Field(
        max_length=METADATA_MAX_KEYS,
        description=f"Your own labels for the job, echoed with it (never read by the service): "
        f"at most {METADATA_MAX_KEYS} keys of 1 to {METADATA_MAX_KEY_CHARS} characters, "
        f"string values of at most {METADATA_MAX_VALUE_CHARS}.",
        examples=[{"team": "search", "run": "2026-12-01"}],
    ),
]
# For the multipart form, whose ``metadata`` field is a JSON string.
METADATA_ADAPTER: TypeAdapter[dict[str, str]] = TypeAdapter(JobMetadata)
# InputRecord refers to JobMetadata, defined after it.
InputRecord.model_rebuild()

UNIQUE_IDS_DESCRIPTION = (
    "Refuse the job (422, naming the first duplicates) if two inputs have the same id. "
    "Default: ids may repeat."
)


class JobRequest(BaseModel):
    """``POST /v1/jobs`` as JSON."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A model name from `GET /v1/models`.", examples=["sentiment"])
    inputs: list[InputRecord] = Field(
        description="The inputs to score, in order: texts, or base64 images for image models."
    )
    expires_after_s: float | None = Field(
        default=None,
        ge=MIN_EXPIRES_AFTER_S,
        le=MAX_EXPIRES_AFTER_S,
        description="A deadline, in seconds from now (1 s to 30 days): a job not finished "
        "by then ends `expired`, keeping the results written so far. Default: none.",
        examples=[3600],
    )
    priority: Priority = Field(default=Priority.NORMAL, description=PRIORITY_DESCRIPTION)
    metadata: JobMetadata | None = None
    unique_ids: bool = Field(default=False, description=UNIQUE_IDS_DESCRIPTION)
    cache: bool = Field(
        default=True,
        description="Use the result cache: an input the same model and revision already "
        "scored gets the stored label, score and top-k without a forward pass (its row says "
        "`cached: true`). false: every input is scored afresh and nothing is stored.",
    )


class Counts(BaseModel):
    total: int
    succeeded: int
    failed: int


STATUS_DESCRIPTION = (
    "`queued`: waiting for a worker of its model (see `queue`); `running`: being scored; "
    "then one final state: `completed` (every item has a result row: a label or a per-item "
    "error), `failed` (the job itself could not run; see `error`), `cancelled` (cancelled "
    "by its owner), `expired` (not finished by its `expires_after_s` deadline). A cancelled "
    "or expired job keeps the results written so far; its remaining items are never scored."
)


class QueueInfo(BaseModel):
    """Where an active job stands in its model's queue."""

    runs_on: str = Field(description="The model whose workers run the job.")
    chunks_ahead: int = Field(
        description="Chunks of other jobs of the same model to be run before this job's next "
        "chunk, in the fair order (higher priority first, then across keys by worker time had "
        "and across a key's jobs), if nothing more urgent arrives."
    )
    worker_live: bool | None = Field(
        description="Whether a worker serving the model has a live heartbeat (null: the "
        "broker could not be asked)."
    )


class Purged(BaseModel):
    """What the retention purge removed of a job, and when (null: still there)."""

    inputs: datetime | None = Field(
        default=None,
        description="When its inputs were purged: it can be exported, not retried or resumed.",
    )
    results: datetime | None = Field(
        default=None, description="When its results were purged: its results answer 410."
    )


class JobOut(BaseModel):
    """A job as the API shows it."""

    id: str
    model: str
    status: JobStatus = Field(description=STATUS_DESCRIPTION)
    counts: Counts
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    expires_at: datetime | None = Field(
        default=None, description="The job's deadline (`expires_after_s`), if it has one."
    )
    priority: Priority = Field(default=Priority.NORMAL, description=PRIORITY_DESCRIPTION)
    cache: bool = Field(
        default=True, description="Whether the job uses the result cache (`cache` at submission)."
    )
    queue: QueueInfo | None = Field(
        default=None, description="While the job is queued or running: what it waits for."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="Why the job may not advance (no live worker serves its model).",
    )
    metadata: dict[str, str] | None = Field(
        default=None, description="The metadata the job was submitted with, if any."
    )
    purged: Purged = Field(
        default_factory=Purged,
        description="What the retention purge removed (BULKSCORE_RETAIN_*_DAYS), and when.",
    )

    @classmethod
    def from_job(
        cls, job: Job, queue: QueueInfo | None = None, warnings: list[str] | None = None
    ) -> JobOut:
        return cls(
            id=job.id,
            model=job.model,
            status=job.status,
            counts=Counts(total=job.total, succeeded=job.succeeded, failed=job.failed),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            error=job.error,
            expires_at=job.expires_at,
            priority=job.priority,
            cache=job.use_cache,
            queue=queue,
            warnings=warnings or [],
            metadata=job.metadata,
            purged=Purged(inputs=job.inputs_purged_at, results=job.results_purged_at),
        )


class RetryRequest(BaseModel):
    """Which error rows ``POST /v1/jobs/{id}/retry`` scores again (the body is optional)."""

    model_config = ConfigDict(extra="forbid")

    errors_matching: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description="Only error rows whose error contains this text (case-sensitive); "
        "default: every error row.",
        examples=["out of memory"],
    )


class RequeuedJobOut(JobOut):
    """A job put back to work by a retry or a resume."""

    requeued: int = Field(
        description="Items queued by this call: error rows to score again (retry), or "
        "unscored items (resume)."
    )


class DeletedCounts(BaseModel):
    items: int = Field(description="Input rows removed.")
    chunks: int = Field(description="Chunk rows removed.")
    results: int = Field(description="Result rows removed.")


class DeletedJobOut(BaseModel):
    """What ``DELETE /v1/jobs/{id}`` removed: the job and, by table, its rows."""

    id: str
    deleted: DeletedCounts


class JobList(BaseModel):
    data: list[JobOut]
    next_after: str | None = Field(
        default=None,
        description="Pass as `after` for the next (older) page; null on the last page.",
    )


class ResultRow(BaseModel):
    """One item's result: a label and score, or a per-item ``error``."""

    index: int = Field(description="0-based position of the input in the job.")
    id: str
    label: str | None
    score: float | None
    top_k: list[tuple[str, float]] | None = Field(
        description="The best labels, best first, as [label, score] pairs."
    )
    error: str | None
    cached: bool = Field(
        default=False,
        description="True: the label came from the result cache (the same input scored "
        "earlier by the same model and revision), not from a forward pass for this job.",
    )
    metadata: dict[str, str] | None = Field(
        default=None,
        description="The input's metadata (its `metadata` object, or the columns kept from "
        "an input file with `keep_columns`); null when it had none.",
    )
    input: str | None = Field(
        default=None,
        description="The input's text, with `include=input` (null for an image, or without).",
    )


class ResultPage(BaseModel):
    data: list[ResultRow]
    next_after: int | None = Field(
        description=(
            "Pass as `after` for the next page. While the job runs a page stops at the first "
            "row not yet written; null only when the job is final and all rows were returned."
        )
    )


class ModelOut(BaseModel):
    name: str
    task: str
    backend: str
    source: str
    revision: str | None
    input_kind: str
    description: str
