"""``/v1/jobs``: submit, list, read and cancel jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.deps import (
    ConnDep,
    CurrentKey,
    EngineDep,
    JobQueueDep,
    OwnedJob,
    SettingsDep,
    job_not_found,
)
from api.dispatch import JobQueue
from api.schemas import JobList, JobOut, JobRequest, inline_schema
from api.submission import (
    Submission,
    check_idempotency_key,
    parse_cache_field,
    parse_expires_after_s,
    parse_file_upload,
    parse_image_uploads,
    parse_json_body,
    submit,
    unprocessable,
    with_cache_choice,
    with_deadline,
)
from api.waiting import job_view
from core.config import Settings
from core.jobs.expiry import MAX_EXPIRES_AFTER_S, MIN_EXPIRES_AFTER_S
from core.jobs.lifecycle import Job, cancel_job, get_job, list_jobs
from core.jobs.status import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# The body is read by hand (JSON or multipart, one endpoint), so FastAPI cannot infer its
# schema; this documents both forms in /docs.
_SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(JobRequest)},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["model"],
                    "properties": {
                        "model": {"type": "string", "description": "A registered model name."},
                        "expires_after_s": {
                            "type": "number",
                            "minimum": MIN_EXPIRES_AFTER_S,
                            "maximum": MAX_EXPIRES_AFTER_S,
                            "description": "A deadline in seconds (1 s to 30 days): not "
                            "finished by then, the job ends `expired`.",
                        },
                        "cache": {
                            "type": "boolean",
                            "default": True,
                            "description": "false: score every input afresh, without the "
                            "result cache.",
                        },
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": '.jsonl ({"id", "text"} per line), .csv (a '
                            "text column, optional id) or .txt (a text per line).",
                        },
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "Image files, for image models (one part each; "
                            "the file name is the item's id).",
                        },
                    },
                }
            },
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    openapi_extra=_SUBMIT_BODY,
    responses={
        200: {"model": JobOut, "description": "Idempotent replay: the job this key made."},
        409: {"description": "The Idempotency-Key was used with a different request."},
        413: {"description": "Body too large, or too many inputs."},
        422: {"description": "Unknown model, no inputs, or a malformed body."},
        503: {"description": "The broker is unreachable; no job was created."},
    },
)
async def create(
    request: Request,
    response: Response,
    key_id: CurrentKey,
    settings: SettingsDep,
    engine: EngineDep,
    queue: JobQueueDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="Resending the same request with the same key returns the same job "
            "(200) instead of a new one; the same key with another request answers 409."
        ),
    ] = None,
) -> JobOut:
    """Submit texts or images to score; answers 202 with the queued job, its place in
    its model's queue, and a warning if no live worker serves the model.

    Send JSON (`{"model", "inputs": [{"id", "text"}]}`, or `[{"id", "image_base64"}]` for an
    image model) or multipart (`model` plus a `file` of texts, or many `images` files),
    with an optional `expires_after_s` deadline and `cache` choice in either form.
    An input that cannot be scored (empty or too long text, NUL, an image that is not one)
    does not refuse the job: it becomes that item's error in the results.
    """
    key = check_idempotency_key(idempotency_key)
    submission = await _read_submission(request, settings)
    job, created = await run_in_threadpool(submit, engine, queue, settings, key_id, submission, key)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.status_code = status.HTTP_200_OK
    return await run_in_threadpool(_view, engine, queue, job)


def _view(engine: Engine, queue: JobQueue, job: Job) -> JobOut:
    with engine.connect() as conn:
        return job_view(conn, queue, job)


async def _read_submission(request: Request, settings: Settings) -> Submission:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        # A bounded number of parts: the parser stops at once past these, so a form of
        # 10,000 fields costs nothing.
        async with request.form(max_files=settings.max_upload_files, max_fields=5) as form:
            model = form.get("model")
            if not isinstance(model, str) or not model:
                raise unprocessable("the multipart form needs a 'model' field")
            expires = form.get("expires_after_s")
            expires_after_s = parse_expires_after_s(expires if isinstance(expires, str) else None)
            cache = form.get("cache")
            use_cache = parse_cache_field(cache if isinstance(cache, str) else None)
            images = [part for part in form.getlist("images") if isinstance(part, UploadFile)]
            upload = form.get("file")
            if images:
                uploads = [(part.filename or "", await part.read()) for part in images]
                parsed = await run_in_threadpool(
                    parse_image_uploads, model, uploads, settings.max_image_bytes
                )
                return with_cache_choice(with_deadline(parsed, expires_after_s), use_cache)
            if not isinstance(upload, UploadFile):
                raise unprocessable(
                    "the multipart form needs a 'file' part (texts) or 'images' parts"
                )
            raw = await upload.read()
            filename = upload.filename or ""
        parsed = await run_in_threadpool(
            parse_file_upload, model, filename, raw, settings.max_text_chars
        )
        return with_cache_choice(with_deadline(parsed, expires_after_s), use_cache)
    if content_type in ("application/json", ""):
        body = await request.body()
        return await run_in_threadpool(
            parse_json_body, body, settings.max_text_chars, settings.max_image_bytes
        )
    raise HTTPException(
        status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        detail="send application/json or multipart/form-data",
    )


@router.get("", response_model=JobList)
def list_(
    key_id: CurrentKey,
    conn: ConnDep,
    job_status: JobStatus | None = Query(
        default=None, alias="status", description="Only jobs in this state."
    ),
    limit: int = Query(default=50, ge=1, le=1000),
) -> JobList:
    """The caller's jobs, newest first."""
    found = list_jobs(conn, key_id, job_status, limit)
    return JobList(data=[JobOut.from_job(job) for job in found])


@router.get("/{job_id}", response_model=JobOut, responses={404: {"description": "No such job."}})
def read(job: OwnedJob, conn: ConnDep, queue: JobQueueDep) -> JobOut:
    """A job's status and counts; while it is active, its place in its model's queue and
    whether a worker serves that model (a warning when none does)."""
    return job_view(conn, queue, job)


@router.post(
    "/{job_id}/cancel", response_model=JobOut, responses={404: {"description": "No such job."}}
)
def cancel(job: OwnedJob, key_id: CurrentKey, engine: EngineDep) -> JobOut:
    """Cancel the job: chunks not yet started will not start; results written stay.

    A job already final (completed, failed, cancelled) is returned unchanged.
    """
    with engine.begin() as conn:
        cancel_job(conn, job.id)
        after = get_job(conn, job.id, owner_key_id=key_id)
    if after is None:  # deleted between the two reads
        raise job_not_found(job.id)
    return JobOut.from_job(after)
