"""Request and response bodies of the HTTP API (pydantic models, shown in ``/docs``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.jobs.lifecycle import Job
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

    @field_validator("id", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: object) -> object:
        # pydantic would read true as the integer 1, an id another input may have.
        if isinstance(value, bool):
            raise ValueError("an id is a string or an integer, not true or false")
        return value


class JobRequest(BaseModel):
    """``POST /v1/jobs`` as JSON."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A model name from `GET /v1/models`.", examples=["sentiment"])
    inputs: list[InputRecord] = Field(
        description="The inputs to score, in order: texts, or base64 images for image models."
    )


class Counts(BaseModel):
    total: int
    succeeded: int
    failed: int


class JobOut(BaseModel):
    """A job as the API shows it."""

    id: str
    model: str
    status: JobStatus
    counts: Counts
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None

    @classmethod
    def from_job(cls, job: Job) -> JobOut:
        return cls(
            id=job.id,
            model=job.model,
            status=job.status,
            counts=Counts(total=job.total, succeeded=job.succeeded, failed=job.failed),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            error=job.error,
        )


class JobList(BaseModel):
    data: list[JobOut]


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


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` inlined.

    For ``openapi_extra``: a ``#/$defs/...`` reference would resolve against the root of
    the OpenAPI document, where those definitions do not exist.
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved
