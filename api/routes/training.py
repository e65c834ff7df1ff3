"""``POST /v1/models`` trains a model on the workers; ``GET /v1/models/{name}`` shows one.

Training answers 202 with a training job, polled at ``/v1/jobs/{id}`` like any other: the
data is checked here (so a single label or too few examples is a 422 at once), stored with
the job, and trained by a worker that serves the base model.

A trained name belongs to the key that trained its first version (or the operator): another
key's POST of that name is a 409 and never a new version, and its GET is a 404, exactly as
for a name that does not exist (``core.models.trained``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status
from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.deps import ConnDep, CurrentKey, EngineDep, JobQueueDep, SettingsDep
from api.dispatch import JobQueue
from api.problems import ApiError
from api.schemas import JobOut
from api.submission import models_file_unreadable, submit_or_answer, unprocessable
from api.training_schemas import CatalogModelOut, ModelDetail, VersionOut
from core.config import Settings
from core.jobs.lifecycle import Job
from core.models.catalog import load_registry
from core.models.registry import NAME_PATTERN, Registry, RegistryError
from core.models.trained import (
    NameTakenError,
    TrainedModelError,
    check_base,
    check_new_name,
    get_trained,
    may_train,
)
from core.models.trained import list_versions as trained_versions
from core.training.data import (
    DataLimits,
    TrainingDataError,
    check_examples,
    parse_upload,
    upload_format,
)
from core.training.jobs import create_training_job

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/models", tags=["models"])
MAX_VERSION = 2**31 - 1  # trained_models.version is a 32-bit INTEGER


_TRAIN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name", "base", "data"],
                    "properties": {
                        "name": {
                            "type": "string",
                            "description": "The new model's name; an existing trained "
                            "name gets its next version.",
                        },
                        "base": {
                            "type": "string",
                            "description": "The backbone: a models-file model (minilm, "
                            "resnet50, ...).",
                        },
                        "data": {
                            "type": "string",
                            "format": "binary",
                            "description": "A .csv with text,label columns (text bases), or "
                            "a .zip of one folder per label holding its images (image bases).",
                        },
                    },
                }
            }
        },
    }
}


def _registry(settings: Settings) -> Registry:
    try:
        return load_registry(settings)
    except RegistryError as exc:
        log.error("cannot read the models file: %s", exc)
        raise models_file_unreadable() from exc


def submit_training(
    engine: Engine,
    queue: JobQueue,
    settings: Settings,
    key_id: int,
    name: str,
    base: str,
    filename: str,
    raw: bytes,
) -> Job:
    """Check the request and its data, store the training job and send its task.

    Raises:
        ApiError: 422 (name, base or data unusable), 409 (the name belongs to another
            key; the registration refuses it as well, should the check here race),
            503 (models file unreadable, or the broker unreachable: then no job is left
            behind).
    """
    registry = _registry(settings)
    try:
        check_new_name(registry, name)
    except TrainedModelError as exc:
        raise unprocessable(str(exc)) from exc
    with engine.connect() as conn:
        if not may_train(conn, name, key_id):
            raise ApiError(status.HTTP_409_CONFLICT, "name_taken", str(NameTakenError(name)))
    try:
        base_spec = check_base(registry, base)
        data_format = upload_format(filename, base_spec.input_kind)
        examples = parse_upload(raw, data_format, DataLimits.from_settings(settings), filename)
        check_examples(examples)
    except (TrainedModelError, TrainingDataError) as exc:
        raise unprocessable(str(exc)) from exc

    def create(conn: Connection) -> Job:
        return create_training_job(
            conn,
            name=name,
            base=base_spec,
            total=len(examples.items),
            data_format=data_format,
            data=raw,
            owner_key_id=key_id,
        )

    def send(job: Job, chunk_indexes: Sequence[int]) -> None:
        # Its one chunk, to the base's queue (job.runs_on), like any job's chunks.
        queue.enqueue_chunks(job.id, job.runs_on, chunk_indexes)

    return submit_or_answer(engine, create, send).job


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    operation_id="train_model",
    openapi_extra=_TRAIN_BODY,
    responses={
        413: {"description": "Body too large."},
        415: {"description": "Not a multipart form."},
        409: {"description": "The name belongs to another key's trained model."},
        422: {"description": "Bad name or base; malformed data, one label or too few examples."},
        503: {"description": "The broker is unreachable; no job was created."},
    },
)
async def train(
    request: Request,
    response: Response,
    key_id: CurrentKey,
    settings: SettingsDep,
    engine: EngineDep,
    queue: JobQueueDep,
) -> JobOut:
    """Train a classifier on a base model's frozen features; answers 202 with the job.

    Poll the job at `/v1/jobs/{id}`; once completed, `GET /v1/models/{name}` shows the new
    version's evaluation and jobs may name the model.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise ApiError(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send multipart/form-data with name, base and a data file",
        )
    async with request.form(max_files=1, max_fields=5) as form:
        name, base, upload = form.get("name"), form.get("base"), form.get("data")
        if not isinstance(name, str) or not name or not isinstance(base, str) or not base:
            raise unprocessable("the multipart form needs 'name' and 'base' fields")
        if not isinstance(upload, UploadFile):
            raise unprocessable("the multipart form needs a 'data' file part")
        raw = await upload.read()
        filename = upload.filename or ""
    job = await run_in_threadpool(
        submit_training, engine, queue, settings, key_id, name, base, filename, raw
    )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.from_job(job)


@router.get(
    "/{name}",
    response_model=ModelDetail,
    response_model_exclude_unset=True,
    operation_id="get_model",
    responses={404: {"description": "No such model (or version)."}},
)
def read(
    name: Annotated[str, Path(pattern=NAME_PATTERN.pattern, description="A model's name.")],
    key_id: CurrentKey,
    settings: SettingsDep,
    conn: ConnDep,
    version: int | None = Query(
        default=None, ge=1, le=MAX_VERSION, description="A version; default the latest."
    ),
) -> ModelDetail:
    """A model; for a trained model, its evaluation on the held-out examples and versions."""
    registry = _registry(settings)
    spec = registry.models.get(name)
    if spec is not None:
        return ModelDetail(**CatalogModelOut.from_spec(spec).model_dump(exclude_unset=True))
    model = get_trained(conn, name, version, with_head=False, visible_to=key_id)
    if model is None:
        what = f"model {name!r}" + (f" version {version}" if version is not None else "")
        raise ApiError(status.HTTP_404_NOT_FOUND, "model_not_found", f"{what} not found")
    listed = CatalogModelOut.from_trained(model, registry.models.get(model.base))
    return ModelDetail(
        **listed.model_dump(exclude_unset=True),
        created_at=model.created_at,
        job_id=model.job_id,
        evaluation=model.metrics,
        versions=[
            VersionOut(
                version=v.revision, accuracy=v.accuracy, created_at=v.created_at, job_id=v.job_id
            )
            for v in trained_versions(conn, name, visible_to=key_id)
        ],
    )
