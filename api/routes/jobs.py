"""``/v1/jobs``: submit, list, read, cancel, delete, retry and resume jobs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response, status
from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.deps import (
    ConnDep,
    CurrentKey,
    EngineDep,
    JobQueueDep,
    OwnedJob,
    SettingsDep,
    SubmittingKey,
    job_not_found,
)
from api.dispatch import JobQueue
from api.job_cursor import decode_cursor, encode_cursor
from api.openapi_doc import component_ref
from api.problems import ApiError
from api.schemas import (
    PRIORITY_DESCRIPTION,
    UNIQUE_IDS_DESCRIPTION,
    DeletedCounts,
    DeletedJobOut,
    JobList,
    JobOut,
    RequeuedJobOut,
    RetryRequest,
)
from api.submission import (
    Submission,
    check_idempotency_key,
    parse_columns_fields,
    parse_expires_after_s,
    parse_file_upload,
    parse_flag,
    parse_image_uploads,
    parse_json_body,
    parse_metadata_field,
    parse_priority,
    submit,
    unprocessable,
    with_cache_choice,
    with_options,
)
from api.waiting import job_view
from core.config import Settings
from core.jobs.deletion import JobActive, delete_job
from core.jobs.expiry import MAX_EXPIRES_AFTER_S, MIN_EXPIRES_AFTER_S
from core.jobs.lifecycle import Job, cancel_job, get_job, list_jobs
from core.jobs.priority import Priority
from core.jobs.requeue import InputsPurged, Requeued, RequeueRefused, resume_job, retry_errors
from core.jobs.status import JobStatus
from core.queues import BrokerUnavailable

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# The body is read by hand (JSON or multipart, one endpoint), so FastAPI cannot infer its
# schema; this documents both forms in /docs, as the named schemas JobRequest and JobUpload
# (api.app adds them to the document), so that generated clients use those names.
JOB_UPLOAD_SCHEMA: dict[str, Any] = {
    "title": "JobUpload",
    "description": "`POST /v1/jobs` as multipart/form-data: a file of texts, or image files.",
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": {"type": "string", "description": "A registered model name."},
        "expires_after_s": {
            "type": "number",
            "minimum": MIN_EXPIRES_AFTER_S,
            "maximum": MAX_EXPIRES_AFTER_S,
            "description": "A deadline in seconds (1 s to 30 days): not finished by then, the "
            "job ends `expired`.",
        },
        "priority": {
            "type": "string",
            "enum": [level.value for level in Priority],
            "default": Priority.NORMAL.value,
            "description": PRIORITY_DESCRIPTION,
        },
        "metadata": {
            "type": "string",
            "description": "The job's metadata as a JSON object of strings (the limits of "
            "`JobRequest.metadata`).",
        },
        "unique_ids": {"type": "boolean", "default": False, "description": UNIQUE_IDS_DESCRIPTION},
        "cache": {
            "type": "boolean",
            "default": True,
            "description": "false: score every input afresh, without the result cache.",
        },
        "file": {
            "type": "string",
            "format": "binary",
            "description": '.jsonl ({"id", "text"} per line), .csv (a text column, optional '
            "id) or .txt (a text per line).",
        },
        "images": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "Image files, for image models (one part each; the file name is "
            "the item's id).",
        },
    },
}
_SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": component_ref("JobRequest")},
            "multipart/form-data": {"schema": component_ref("JobUpload")},
        },
    }
}
# Multipart fields besides the files: model, expires_after_s, priority, metadata,
# unique_ids and cache, and room for two a client adds that we ignore.
FORM_FIELDS = 8
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such job."}}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    operation_id="create_job",
    openapi_extra=_SUBMIT_BODY,
    responses={
        200: {"model": JobOut, "description": "Idempotent replay: the job this key made."},
        409: {"description": "The Idempotency-Key was used with a different request."},
        413: {"description": "Body too large, or too many inputs."},
        415: {"description": "The body is neither JSON nor multipart/form-data."},
        422: {
            "description": "Unknown model, no inputs, repeated ids with `unique_ids`, bad "
            "metadata, or a malformed body."
        },
        429: {"description": "This key submits too fast; retry after `Retry-After` seconds."},
        503: {"description": "The broker is unreachable; no job was created."},
    },
)
async def create(
    request: Request,
    response: Response,
    key_id: SubmittingKey,
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
    submission = await _read_submission(request, settings, hashed=key is not None)
    job, created = await run_in_threadpool(submit, engine, queue, settings, key_id, submission, key)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.status_code = status.HTTP_200_OK
    return await run_in_threadpool(_view, engine, queue, job, settings)


def _view(engine: Engine, queue: JobQueue, job: Job, settings: Settings) -> JobOut:
    with engine.connect() as conn:
        return job_view(conn, queue, job, settings)


async def _read_submission(request: Request, settings: Settings, hashed: bool) -> Submission:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        # A bounded number of parts: the parser stops at once past these, so a form of
        # 10,000 fields costs nothing.
        async with request.form(
            max_files=settings.max_upload_files, max_fields=FORM_FIELDS
        ) as form:
            model = form.get("model")
            if not isinstance(model, str) or not model:
                raise unprocessable("the multipart form needs a 'model' field")
            expires = form.get("expires_after_s")
            expires_after_s = parse_expires_after_s(expires if isinstance(expires, str) else None)
            level = form.get("priority")
            priority = parse_priority(level if isinstance(level, str) else None)
            labels = form.get("metadata")
            metadata = parse_metadata_field(labels if isinstance(labels, str) else None)
            unique = form.get("unique_ids")
            unique_ids = parse_flag("unique_ids", unique if isinstance(unique, str) else None)
            cache = form.get("cache")
            use_cache = parse_flag("cache", cache if isinstance(cache, str) else None, True)
            images = [part for part in form.getlist("images") if isinstance(part, UploadFile)]
            upload = form.get("file")
            if images:
                uploads = [(part.filename or "", await part.read()) for part in images]
                parsed = await run_in_threadpool(
                    parse_image_uploads, model, uploads, settings.max_image_bytes
                )
                optioned = with_options(parsed, expires_after_s, priority, metadata, unique_ids)
                return with_cache_choice(optioned, use_cache)
            if not isinstance(upload, UploadFile):
                raise unprocessable(
                    "the multipart form needs a 'file' part (texts) or 'images' parts"
                )
            raw = await upload.read()
            filename = upload.filename or ""
            columns = parse_columns_fields(
                *(
                    value if isinstance(value := form.get(field), str) else None
                    for field in ("text_column", "id_column", "keep_columns")
                )
            )
        parsed = await run_in_threadpool(
            parse_file_upload, model, filename, raw, settings.max_text_chars, columns
        )
        optioned = with_options(parsed, expires_after_s, priority, metadata, unique_ids)
        return with_cache_choice(optioned, use_cache)
    if content_type in ("application/json", ""):
        body = await request.body()
        return await run_in_threadpool(
            parse_json_body,
            body,
            settings.max_text_chars,
            settings.max_image_bytes,
            hashed=hashed,
        )
    raise ApiError(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send application/json or multipart/form-data",
    )


@router.get("", response_model=JobList, operation_id="list_jobs")
def list_(
    key_id: CurrentKey,
    conn: ConnDep,
    job_status: JobStatus | None = Query(
        default=None, alias="status", description="Only jobs in this state."
    ),
    limit: int = Query(default=50, ge=1, le=1000, description="Jobs per page."),
    after: str | None = Query(
        default=None,
        max_length=200,
        description="`next_after` of the previous page: the jobs older than its last one.",
    ),
) -> JobList:
    """The caller's jobs, newest first, a page at a time (follow `next_after`).

    The cursor is a position in (creation time, id), not an offset: jobs submitted while
    paging appear on no later page, and none is skipped or repeated.
    """
    before = decode_cursor(after) if after is not None else None
    # One job more than asked tells whether another page exists, without a second query.
    found = list_jobs(conn, key_id, job_status, limit + 1, before=before)
    page = found[:limit]
    next_after = encode_cursor(page[-1]) if len(found) > limit else None
    return JobList(data=[JobOut.from_job(job) for job in page], next_after=next_after)


@router.get("/{job_id}", response_model=JobOut, operation_id="get_job", responses=NOT_FOUND)
def read(job: OwnedJob, conn: ConnDep, queue: JobQueueDep, settings: SettingsDep) -> JobOut:
    """A job's status and counts; while it is active, its place in its model's queue and
    whether a worker serves that model (a warning when none does)."""
    return job_view(conn, queue, job, settings)


@router.post(
    "/{job_id}/cancel", response_model=JobOut, operation_id="cancel_job", responses=NOT_FOUND
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


@router.delete(
    "/{job_id}",
    response_model=DeletedJobOut,
    operation_id="delete_job",
    responses={
        404: {"description": "No such job."},
        409: {"description": "The job is queued or running: cancel it first."},
    },
)
def delete(job: OwnedJob, engine: EngineDep) -> DeletedJobOut:
    """Delete a final job (completed, failed, cancelled, expired) with its inputs, chunks
    and results; answers what was removed. An active job is refused (409 `job_active`):
    cancel it first. The rows go in small batches, so scoring elsewhere is not held up.
    """
    try:
        gone = delete_job(engine, job.id)
    except LookupError as exc:  # deleted since the ownership check
        raise job_not_found(job.id) from exc
    except JobActive as exc:
        raise ApiError(status.HTTP_409_CONFLICT, "job_active", str(exc)) from exc
    return DeletedJobOut(
        id=gone.job_id,
        deleted=DeletedCounts(items=gone.items, chunks=gone.chunks, results=gone.results),
    )


_REQUEUE_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such job."},
    409: {
        "description": "The job is not in a state this applies to, has nothing to do, or "
        "its inputs were purged (`inputs_purged`)."
    },
}


@router.post(
    "/{job_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="retry_job",
    response_model=RequeuedJobOut,
    responses=_REQUEUE_RESPONSES,
)
def retry(
    job: OwnedJob,
    engine: EngineDep,
    queue: JobQueueDep,
    settings: SettingsDep,
    body: Annotated[RetryRequest | None, Body()] = None,
) -> RequeuedJobOut:
    """Score a completed job's error rows again, in the same job (all of them, or those
    whose error contains `errors_matching`).

    Each error row is replaced by exactly one new row (a label, or a new error) in one
    transaction; the job is `running` until the last one is replaced. Inputs refused at
    intake (empty text, not an image) are not retried. The job's deadline is cleared.
    """
    matching = body.errors_matching if body is not None else None
    return _requeue(
        engine,
        queue,
        job,
        lambda conn: retry_errors(
            conn, job.id, chunk_size=settings.chunk_size, errors_matching=matching
        ),
    )


@router.post(
    "/{job_id}/resume",
    status_code=status.HTTP_202_ACCEPTED,
    operation_id="resume_job",
    response_model=RequeuedJobOut,
    responses=_REQUEUE_RESPONSES,
)
def resume(
    job: OwnedJob, engine: EngineDep, queue: JobQueueDep, settings: SettingsDep
) -> RequeuedJobOut:
    """Score the rest of a cancelled or expired job: its items with no result yet are
    queued again, with fresh attempts, and the job goes on to completion. Results already
    written stay. The job's deadline is cleared (not armed again).
    """
    return _requeue(
        engine, queue, job, lambda conn: resume_job(conn, job.id, chunk_size=settings.chunk_size)
    )


def _requeue(
    engine: Engine, queue: JobQueue, job: Job, change: Callable[[Connection], Requeued]
) -> RequeuedJobOut:
    try:
        with engine.begin() as conn:
            done = change(conn)
    except LookupError as exc:  # deleted since the ownership check
        raise job_not_found(job.id) from exc
    except InputsPurged as exc:
        raise ApiError(status.HTTP_409_CONFLICT, "inputs_purged", str(exc)) from exc
    except RequeueRefused as exc:
        raise ApiError(status.HTTP_409_CONFLICT, "nothing_to_requeue", str(exc)) from exc
    warnings = []
    try:
        queue.enqueue_chunks(done.job.id, done.job.runs_on, done.chunk_indexes)
    except BrokerUnavailable:
        # Committed: the chunks are queued in SQL, and the workers' lost-message sweep sends
        # them once the broker answers again. Nothing is lost; it only starts later.
        warnings.append(
            "the job queue (broker) is unreachable: the work is recorded and starts once "
            "the broker is back"
        )
    view = JobOut.from_job(done.job, warnings=warnings)
    return RequeuedJobOut(**view.model_dump(), requeued=done.items)
