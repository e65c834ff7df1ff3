"""Turning a ``POST /v1/jobs`` body into a stored, queued job.

Plain functions over bytes, an engine and a job queue (no FastAPI request), so they run in
a worker thread: parsing and bulk-inserting ten thousand items must not block the event
loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import PurePath

from fastapi import status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import Connection, Engine

from api.dispatch import JobQueue
from api.problems import ApiError
from api.schemas import METADATA_ADAPTER, InputRecord, JobRequest
from core.config import Settings
from core.inputs.columns import DEFAULT_COLUMNS, ColumnChoiceError, InputColumns
from core.inputs.items import InputItem, checked_id, checked_text_item
from core.inputs.text_files import TEXT_SUFFIXES, InputFileError, parse_text_bytes
from core.jobs.expiry import MAX_EXPIRES_AFTER_S, MIN_EXPIRES_AFTER_S
from core.jobs.lifecycle import Job, create_job
from core.jobs.priority import Priority
from core.jobs.submit import (
    CreateJob,
    Idempotency,
    IdempotencyConflict,
    SendJob,
    Submitted,
    submit_job,
)
from core.models.catalog import load_registry
from core.models.registry import InputKind, ModelSpec, RegistryError, UnknownModelError
from core.queues import BrokerUnavailable

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY_MAX = 200  # jobs.idempotency_key is String(200)


@dataclass(frozen=True, slots=True)
class Submission:
    """A parsed job request: the model, the checked inputs, and the request's hash."""

    model: str
    inputs: list[InputItem]
    # What an Idempotency-Key replay is compared by; None where it was not computed: a JSON
    # request without a key (nothing compares it), whose canonical JSON of a 20,000-text
    # body took 35-60 ms of every submission's 0.2 s of parsing on the 2-core VM (issue 16).
    request_hash: str | None
    # What each input was sent as ("text", "image", or "" for neither): an input refused at
    # intake has no text or data left to tell.
    kinds: list[str] | None = None
    # Seconds until the job expires (``expires_after_s``); None: no deadline.
    expires_after_s: float | None = None
    priority: Priority = Priority.NORMAL
    # The caller's metadata object, stored on the job; None: none was sent.
    metadata: dict[str, str] | None = None
    # Refuse the job if two inputs share an id.
    unique_ids: bool = False
    # False: fresh scores asked for (``cache: false``); the result cache is not used.
    use_cache: bool = True


# How many duplicate ids a unique_ids refusal names.
DUPLICATES_NAMED = 5

BOTH_KINDS = 'send either "text" or "image_base64" in one input, not both'
NEITHER_KIND = 'each input needs a "text" (text models) or an "image_base64" (image models)'


def parse_json_body(
    body: bytes, max_chars: int, max_image_bytes: int, *, hashed: bool = True
) -> Submission:
    """A JSON ``JobRequest`` body as a :class:`Submission` (422 if it is malformed), with
    its request hash if ``hashed`` (the request carries an Idempotency-Key)."""
    try:
        # pydantic-core parses and validates in one pass, several times faster than
        # json.loads followed by validation.
        request = JobRequest.model_validate_json(body)
    except ValidationError as exc:
        request = _parse_leniently(body, exc)
    digest = _json_request_hash(request) if hashed else None
    inputs = [
        _record_item(position, record, max_chars, max_image_bytes)
        for position, record in enumerate(request.inputs, start=1)
    ]
    kinds = [_kind(record) for record in request.inputs]
    submission = Submission(request.model, inputs, digest, kinds)
    optioned = with_options(
        submission, request.expires_after_s, request.priority, request.metadata, request.unique_ids
    )
    return with_cache_choice(optioned, request.cache)


def parse_expires_after_s(value: str | None) -> float | None:
    """A multipart ``expires_after_s`` field: seconds within bounds, or a 422."""
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not MIN_EXPIRES_AFTER_S <= seconds <= MAX_EXPIRES_AFTER_S:  # also refuses nan
        raise unprocessable(
            f"expires_after_s must be a number of seconds from {MIN_EXPIRES_AFTER_S:g} to "
            f"{MAX_EXPIRES_AFTER_S:g} (30 days)"
        )
    return seconds


def parse_priority(value: str | None) -> Priority:
    """A multipart ``priority`` field: high, normal (default) or low, or a 422."""
    if value is None or value == "":
        return Priority.NORMAL
    try:
        return Priority(value)
    except ValueError:
        choices = ", ".join(level.value for level in Priority)
        raise unprocessable(f"priority must be one of {choices}, not {value[:40]!r}") from None


def parse_metadata_field(value: str | None) -> dict[str, str] | None:
    """A multipart ``metadata`` field: a JSON object within the limits, or a 422."""
    if value is None or value == "":
        return None
    try:
        return METADATA_ADAPTER.validate_json(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'metadata'}: {error['msg']}"
            for error in exc.errors(include_url=False)[:3]
        )
        raise unprocessable(
            f"the metadata field must be a JSON object of strings: {problems}"
        ) from None


def parse_flag(name: str, value: str | None, default: bool = False) -> bool:
    """A multipart boolean field: true/false (also 1/0, yes/no), absent is ``default``."""
    if value is None or value.strip() == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise unprocessable(f"{name} must be true or false, not {value[:40]!r}")


def with_options(
    submission: Submission,
    expires_after_s: float | None,
    priority: Priority,
    metadata: dict[str, str] | None = None,
    unique_ids: bool = False,
) -> Submission:
    """``submission`` with its deadline, priority, metadata and uniqueness demand, which
    are part of what its request hash stands for (a retry with the same Idempotency-Key
    and another deadline, priority or metadata is another request). Defaults leave the
    hash as it was."""
    digest = submission.request_hash
    if digest is not None:  # None: not hashed, nothing will compare it
        if expires_after_s is not None:
            digest = _sha256(digest.encode(), b"\0expires\0", repr(expires_after_s).encode())
        if priority != Priority.NORMAL:
            digest = _sha256(digest.encode(), b"\0priority\0", priority.value.encode())
        if metadata is not None:
            canonical = json.dumps(metadata, sort_keys=True, separators=(",", ":"))
            digest = _sha256(digest.encode(), b"\0metadata\0", canonical.encode())
        if unique_ids:
            digest = _sha256(digest.encode(), b"\0unique_ids")
    return replace(
        submission,
        request_hash=digest,
        expires_after_s=expires_after_s,
        priority=priority,
        metadata=metadata,
        unique_ids=unique_ids,
    )


def check_unique_ids(submission: Submission) -> None:
    """With ``unique_ids``, a 422 naming the first ids that two or more inputs share."""
    if not submission.unique_ids:
        return
    seen: dict[str, int] = {}
    duplicates: dict[str, list[int]] = {}
    for position, item in enumerate(submission.inputs, start=1):
        first = seen.setdefault(item.item_id, position)
        if first != position:
            duplicates.setdefault(item.item_id, [first]).append(position)
    if duplicates:
        named = [
            f"{item_id[:80]!r} (inputs {', '.join(str(p) for p in positions[:5])})"
            for item_id, positions in list(duplicates.items())[:DUPLICATES_NAMED]
        ]
        more = len(duplicates) - len(named)
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "duplicate_ids",
            f"unique_ids is set but {len(duplicates)} ids repeat: {', '.join(named)}"
            + (f" and {more} more" if more > 0 else ""),
        )


def with_cache_choice(submission: Submission, use_cache: bool) -> Submission:
    """``submission`` with its cache choice, which (like the deadline) is part of what its
    request hash stands for: the same inputs with ``cache: false`` are another request."""
    if use_cache:
        return submission
    digest = submission.request_hash
    if digest is not None:
        digest = _sha256(digest.encode(), b"\0cache\0false")
    return replace(submission, request_hash=digest, use_cache=False)


def _json_request_hash(request: JobRequest) -> str:
    canonical = json.dumps(
        [
            request.model,
            [
                # Metadata only when given, so a request without any hashes as before.
                [item.id, item.text, item.image_base64]
                + ([item.metadata] if item.metadata is not None else [])
                for item in request.inputs
            ],
        ],
        separators=(",", ":"),
        sort_keys=True,
    )
    return _sha256(b"json\0", canonical.encode())


def _kind(record: InputRecord) -> str:
    has_text, has_image = record.text is not None, record.image_base64 is not None
    if has_text == has_image:
        return ""  # both or neither: already that item's error
    return "image" if has_image else "text"


def _record_item(
    position: int, record: InputRecord, max_chars: int, max_image_bytes: int
) -> InputItem:
    ident = position if record.id is None else record.id
    if (record.text is None) == (record.image_base64 is None):
        stored_id, problem = checked_id(ident)
        return InputItem(
            item_id=stored_id,
            error=problem or (NEITHER_KIND if record.text is None else BOTH_KINDS),
        )
    if record.image_base64 is not None:
        # Deferred: Pillow stays out of the API's start-up until an image arrives.
        from core.inputs.images import checked_base64_image_item

        item = checked_base64_image_item(ident, record.image_base64, max_image_bytes)
    else:
        item = checked_text_item(ident, record.text, max_chars)
    item.metadata = record.metadata
    return item


def _parse_leniently(body: bytes, error: ValidationError) -> JobRequest:
    # pydantic-core refuses lone surrogate escapes ("\ud800") as invalid JSON, which would
    # refuse the whole job for one bad text; the standard library accepts them, and the
    # text check then turns that one text into a per-item error.
    if any(detail["type"] == "json_invalid" for detail in error.errors()):
        try:
            return JobRequest.model_validate(json.loads(body))
        except (ValueError, RecursionError, ValidationError):
            pass
    # Inputs are not echoed back: the body may be megabytes.
    raise RequestValidationError(error.errors(include_url=False, include_input=False))


def parse_columns_fields(
    text_column: str | None, id_column: str | None, keep_columns: str | None
) -> InputColumns:
    """The multipart ``text_column``/``id_column``/``keep_columns`` fields, or a 422."""
    try:
        return InputColumns.parse(text_column, id_column, keep_columns)
    except ColumnChoiceError as exc:
        raise unprocessable(str(exc)) from exc


def parse_file_upload(
    model: str,
    filename: str,
    raw: bytes,
    max_chars: int,
    columns: InputColumns = DEFAULT_COLUMNS,
) -> Submission:
    """An uploaded ``.jsonl``/``.csv``/``.txt``/``.parquet`` file as a :class:`Submission`
    (422 if bad); ``columns`` names its text, id and kept columns."""
    suffix = PurePath(filename).suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise unprocessable(
            f"the uploaded file {filename!r} must end in one of {', '.join(TEXT_SUFFIXES)}"
        )
    try:
        inputs = parse_text_bytes(
            raw, suffix, max_chars, name=PurePath(filename).name, columns=columns
        )
    except InputFileError as exc:
        raise unprocessable(str(exc)) from exc
    digest = _sha256(b"file\0", model.encode(), b"\0", suffix.encode(), b"\0", raw)
    if columns != DEFAULT_COLUMNS:
        # The same bytes read with other columns are another request.
        chosen = json.dumps([columns.text, columns.id, list(columns.keep)])
        digest = _sha256(digest.encode(), b"\0columns\0", chosen.encode())
    return Submission(model, inputs, digest)


def parse_image_uploads(
    model: str, uploads: list[tuple[str, bytes]], max_image_bytes: int
) -> Submission:
    """Uploaded image files (multipart ``images``) as a :class:`Submission`.

    Each file's id is its file name; its content is checked by signature, not by name.
    """
    # Deferred: Pillow and numpy, for image inputs only.
    from core.inputs.images import checked_image_item

    inputs = [
        checked_image_item(PurePath(name).name or str(position), raw, max_image_bytes)
        for position, (name, raw) in enumerate(uploads, start=1)
    ]
    digest = hashlib.sha256(b"images\0" + model.encode())
    for name, raw in uploads:
        digest.update(b"\0" + name.encode("utf-8", "replace") + b"\0")
        digest.update(hashlib.sha256(raw).digest())
    return Submission(model, inputs, digest.hexdigest(), ["image"] * len(inputs))


def _sha256(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def unprocessable(detail: str, code: str = "invalid_request") -> ApiError:
    return ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, code, detail)


def check_idempotency_key(key: str | None) -> str | None:
    """The header's value, or None when absent; 422 if it is unusable."""
    if key is None:
        return None
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX or not key.isprintable():
        raise unprocessable(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable characters"
        )
    return key


def resolve_model(name: str, settings: Settings, key_id: int) -> ModelSpec:
    """The registered model the job names (422 for an unknown or unsuitable one, and for
    another key's trained model: the caller's key sees its own and the operator's)."""
    try:
        # Read per request (a small TOML file): a model added to the file is usable
        # without restarting the API. Trained models (SQL) are looked up only for names
        # the file does not have.
        spec = load_registry(settings, visible_to=key_id).get(name)
    except UnknownModelError as exc:
        raise unprocessable(str(exc), "unknown_model") from exc
    except RegistryError as exc:
        log.error("cannot read the models file: %s", exc)
        raise models_file_unreadable() from exc
    return spec


def match_input_kind(submission: Submission, spec: ModelSpec) -> Submission:
    """Inputs of the wrong kind for the model (a text for an image model, or the reverse)
    become per-item errors; a job with no input of the model's kind at all is a 422.
    """
    wants_images = spec.input_kind == InputKind.IMAGE
    wrong = (
        f"model {spec.name!r} scores images; send image_base64 (or multipart images)"
        if wants_images
        else f"model {spec.name!r} scores texts; send text"
    )
    kinds = submission.kinds or ["text"] * len(submission.inputs)
    mismatched = 0
    inputs = []
    for item, kind in zip(submission.inputs, kinds, strict=True):
        if kind and (kind == "image") != wants_images:
            mismatched += 1
            item = InputItem(item_id=item.item_id, error=wrong)
        inputs.append(item)
    if inputs and mismatched == len(inputs):
        raise unprocessable(wrong, "wrong_input_kind")
    return replace(submission, inputs=inputs, kinds=kinds)


def check_size(submission: Submission, settings: Settings) -> None:
    count = len(submission.inputs)
    if count == 0:
        raise unprocessable("the job has no inputs; send at least one", "no_inputs")
    if count > settings.max_items_per_job:
        raise ApiError(
            status.HTTP_413_CONTENT_TOO_LARGE,
            "too_many_inputs",
            f"the job has {count} inputs; the limit is {settings.max_items_per_job} per job",
        )


def submit(
    engine: Engine,
    queue: JobQueue,
    settings: Settings,
    key_id: int,
    submission: Submission,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    """Store and queue the job, or find the one this idempotency key already made.

    Returns:
        The job, and whether it was created now (False: an idempotent replay).

    Raises:
        ApiError: 422 (model, inputs, repeated ids with ``unique_ids``), 413 (too many
            inputs), 409 (the idempotency key was used with another request), 503 (the
            broker is unreachable; no job is left behind).
    """
    spec = resolve_model(submission.model, settings, key_id)
    check_size(submission, settings)
    check_unique_ids(submission)
    submission = match_input_kind(submission, spec)
    idempotency = None
    if idempotency_key is not None:
        if submission.request_hash is None:
            raise ValueError("a request with an Idempotency-Key is parsed with its hash")
        idempotency = Idempotency(key_id, idempotency_key, submission.request_hash)

    def create(conn: Connection) -> Job:
        return create_job(
            conn,
            spec,
            submission.inputs,
            chunk_size=settings.chunk_size,
            owner_key_id=key_id,
            # Stored only where a replay will be compared with it.
            request_hash=idempotency.request_hash if idempotency is not None else None,
            expires_after_s=submission.expires_after_s,
            priority=submission.priority,
            metadata=submission.metadata,
            use_cache=submission.use_cache,
        )

    def send(job: Job, chunk_indexes: Sequence[int]) -> None:
        queue.enqueue_chunks(job.id, job.runs_on, chunk_indexes)

    submitted = submit_or_answer(engine, create, send, idempotency)
    return submitted.job, submitted.created


def submit_or_answer(
    engine: Engine, create: CreateJob, send: SendJob, idempotency: Idempotency | None = None
) -> Submitted:
    """:func:`core.jobs.submit.submit_job`, its failures as HTTP answers (409, 503)."""
    try:
        return submit_job(engine, create, send, idempotency=idempotency)
    except IdempotencyConflict as exc:
        raise ApiError(status.HTTP_409_CONFLICT, "idempotency_conflict", str(exc)) from exc
    except BrokerUnavailable as exc:
        raise ApiError(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "broker_unavailable",
            "the job queue (broker) is unreachable, so the job was not created; try again later",
            headers={"Retry-After": "5"},
        ) from exc


def models_file_unreadable() -> ApiError:
    return ApiError(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "models_file_unreadable",
        "the server's models file cannot be read; ask its operator",
    )
