"""The pages: sign in and out, jobs, a job (results, images, actions), submit, models, workers.

Every page reads through the same core functions as the JSON API, with the signed-in key as
the owner: another key's job answers 404 here exactly as it does there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Query, Request, status
from fastapi import Path as FastApiPath
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.deps import ConnDep, EngineDep, JobQueueDep, SettingsDep, take_submission_token
from api.job_cursor import decode_cursor, encode_cursor
from api.problems import ApiError
from api.routes.jobs import FORM_FIELDS
from api.routes.results import MEDIA_TYPES
from api.submission import (
    Submission,
    parse_file_upload,
    parse_image_uploads,
    parse_priority,
    submit,
    with_options,
)
from api.waiting import job_view
from api.web.actions import NOTICES, run_action
from api.web.catalog import catalog_rows
from api.web.schedules import owned_schedules
from api.web.session import (
    COOKIE,
    CsrfRefused,
    OptionalUser,
    SignedIn,
    check_csrf,
    set_session_cookie,
)
from core.chunks.fair import queue_stats
from core.jobs.export import export_lines
from core.jobs.lifecycle import JOB_ID_PATTERN, Job, get_job, list_jobs
from core.jobs.priority import Priority
from core.jobs.result_view import ResultFilter, filtered_page, item_image
from core.jobs.results import label_counts, stream_results
from core.jobs.status import JobStatus
from core.keys import authenticate, key_hash_of
from core.models.trained import list_versions
from core.queues import BrokerUnavailable
from core.rate_limit import RateLimiter
from core.tables import MAX_INTEGER
from core.web_sessions import close_session, open_session

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

JOBS_PER_PAGE = 25
RESULTS_PER_PAGE = 50
CHART_LABELS = 20  # bars in the label chart; the rest are summed as "other labels"
LABEL_CHOICES = 200  # labels offered by the results filter, most frequent first


# Pages load only this site's files; no other site may frame them (clickjacking) or receive
# their URLs (which hold job ids) as a referrer. Inline style attributes draw the progress
# bars; there is no inline script.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _page(request: Request, name: str, context: dict[str, Any], code: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(
        request, name, context, status_code=code, headers=PAGE_HEADERS
    )


def _not_found(request: Request, user: SignedIn, what: str) -> HTMLResponse:
    return _page(request, "not_found.html", {"user": user, "what": what}, status.HTTP_404_NOT_FOUND)


def _safe_next(target: str | None) -> str:
    # Only a path of this site: "//host" or "https://host" would send the user elsewhere.
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return "/jobs"


def _same_site(request: Request) -> bool:
    """Whether the request's ``Origin`` (sent by browsers with every POST) is this host."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser's cross-site form post (browsers send Origin with those)
    return urlsplit(origin).netloc == request.headers.get("host", "")


@router.get("/", response_class=HTMLResponse)
def home(user: OptionalUser) -> Response:
    return RedirectResponse("/jobs" if user else "/signin", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/signin", response_class=HTMLResponse)
def sign_in_form(
    request: Request, next_path: Annotated[str | None, Query(alias="next")] = None
) -> HTMLResponse:
    return _page(request, "signin.html", {"user": None, "next": _safe_next(next_path)})


@router.post("/signin")
def sign_in(
    request: Request,
    engine: EngineDep,
    api_key: Annotated[str, Form(max_length=400)] = "",
    next_path: Annotated[str, Form(alias="next", max_length=2000)] = "/jobs",
) -> Response:
    # The sign-in form carries no CSRF token (there is no session yet). Another site's page
    # posting its own key here would sign the visitor in as that key (login CSRF), and what
    # they then submit would land in that key's jobs: a browser names the posting page's
    # origin, which must be this site.
    if not _same_site(request):
        raise CsrfRefused()
    with engine.begin() as conn:
        key_id = authenticate(conn, api_key.strip())
        token = open_session(conn, key_id) if key_id is not None else None
    if token is None:
        context = {"user": None, "next": _safe_next(next_path), "error": "Unknown or revoked key."}
        return _page(request, "signin.html", context, status.HTTP_401_UNAUTHORIZED)
    response = RedirectResponse(_safe_next(next_path), status_code=status.HTTP_303_SEE_OTHER)
    set_session_cookie(response, token, secure=request.url.scheme == "https")
    return response


@router.post("/signout")
def sign_out(
    user: SignedIn, engine: EngineDep, csrf: Annotated[str | None, Form()] = None
) -> Response:
    check_csrf(user, csrf)
    with engine.begin() as conn:
        close_session(conn, user.token)
    response = RedirectResponse("/signin", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    user: SignedIn,
    conn: ConnDep,
    job_status: Annotated[str | None, Query(alias="status", max_length=20)] = None,
    model: Annotated[str | None, Query(max_length=64)] = None,
    after: Annotated[str | None, Query(max_length=200)] = None,
) -> HTMLResponse:
    wanted = next((s for s in JobStatus if s.value == job_status), None)
    model = model or None
    try:
        before = decode_cursor(after) if after else None
    except ApiError:
        before = None  # a cursor edited by hand: start from the newest
    found = list_jobs(conn, user.key_id, wanted, JOBS_PER_PAGE + 1, before=before, model=model)
    page = found[:JOBS_PER_PAGE]
    next_after = encode_cursor(page[-1]) if len(found) > JOBS_PER_PAGE else None
    context = {
        "user": user,
        "jobs": page,
        "statuses": [s.value for s in JobStatus],
        "status": wanted.value if wanted else "",
        "model": model or "",
        "next_after": next_after,
    }
    return _page(request, "jobs.html", context)


def _owned(conn: Any, job_id: str, user: SignedIn) -> Job | None:
    """The signed-in key's job ``job_id``; None for another key's, a missing one, or text
    that cannot be an id (a NUL or a lone surrogate must not reach SQL)."""
    if re.fullmatch(JOB_ID_PATTERN, job_id) is None:
        return None
    return get_job(conn, job_id, owner_key_id=user.key_id)


def _score_below(raw: str | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request,
    job_id: str,
    user: SignedIn,
    conn: ConnDep,
    queue: JobQueueDep,
    settings: SettingsDep,
    label: Annotated[str | None, Query(max_length=256)] = None,
    errors: Annotated[str | None, Query(max_length=5)] = None,
    score_below: Annotated[str | None, Query(max_length=30)] = None,
    after: Annotated[int, Query(ge=-1, le=MAX_INTEGER)] = -1,
    notice: Annotated[str | None, Query(max_length=20)] = None,
) -> HTMLResponse:
    job = _owned(conn, job_id, user)
    if job is None:
        return _not_found(request, user, f"job {job_id}")
    view = job_view(conn, queue, job, settings)
    result_filter = ResultFilter(label or None, errors == "1", _score_below(score_below))
    rows = filtered_page(conn, job.id, result_filter, after, RESULTS_PER_PAGE + 1)
    page = rows[:RESULTS_PER_PAGE]
    counts = label_counts(conn, job.id)
    chart = list(counts.items())[:CHART_LABELS]
    other = sum(counts.values()) - sum(count for _, count in chart)
    if other:
        chart.append(("other labels", other))
    context = {
        "user": user,
        "job": job,
        "view": view,
        "rows": page,
        "next_after": page[-1]["index"] if len(rows) > RESULTS_PER_PAGE else None,
        "after": after,
        "filter": result_filter,
        "score_below": score_below or "",
        "chart": chart,
        "chart_max": max((count for _, count in chart), default=1),
        "labels": list(counts)[:LABEL_CHOICES],
        "is_image": job.input_kind == "image",
        "notice": NOTICES.get(notice or ""),
    }
    return _page(request, "job.html", context)


@router.get("/jobs/{job_id}/progress")
def job_progress(job_id: str, user: SignedIn, conn: ConnDep) -> JSONResponse:
    """The job's counts for the page's polling script (no-store: always fresh)."""
    job = _owned(conn, job_id, user)
    if job is None:
        return JSONResponse({"detail": "not found"}, status_code=status.HTTP_404_NOT_FOUND)
    done = job.succeeded + job.failed
    return JSONResponse(
        {
            "status": job.status.value,
            "final": job.status.is_final,
            "succeeded": job.succeeded,
            "failed": job.failed,
            "total": job.total,
            "percent": round(100 * done / job.total, 1) if job.total else 100.0,
        },
        headers={"Cache-Control": "no-store"},
    )


@router.get("/jobs/{job_id}/thumbs/{index}.jpg")
def thumbnail(
    job_id: str,
    index: Annotated[int, FastApiPath(ge=0, le=MAX_INTEGER)],
    user: SignedIn,
    conn: ConnDep,
    settings: SettingsDep,
) -> Response:
    # Deferred: Pillow loads with the first thumbnail asked for, so building the app imports
    # no image library (tests/unit/test_api_imports.py).
    from core.inputs.thumbnails import thumbnail_jpeg

    job = _owned(conn, job_id, user)
    data = item_image(conn, job.id, index) if job is not None else None
    small = thumbnail_jpeg(data, max_pixels=settings.max_image_pixels) if data else None
    if small is None:
        return Response(status_code=status.HTTP_404_NOT_FOUND)
    # A stored input never changes: the browser may keep its thumbnail (private: per user).
    return Response(
        small, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"}
    )


@router.get("/jobs/{job_id}/download.{fmt}")
def download(job_id: str, fmt: str, user: SignedIn, conn: ConnDep, engine: EngineDep) -> Response:
    job = _owned(conn, job_id, user)
    if job is None or fmt not in MEDIA_TYPES:
        return Response(status_code=status.HTTP_404_NOT_FOUND)

    def pieces() -> Any:
        for piece in export_lines(stream_results(engine, job.id, top_k_text=True), fmt):
            yield piece.encode("utf-8")

    return StreamingResponse(
        pieces(),
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{job.id}.{fmt}"'},
    )


@router.post("/jobs/{job_id}/{action}")
def job_action(
    request: Request,
    job_id: str,
    action: str,
    user: SignedIn,
    engine: EngineDep,
    queue: JobQueueDep,
    settings: SettingsDep,
    csrf: Annotated[str | None, Form()] = None,
) -> Response:
    check_csrf(user, csrf)
    with engine.connect() as conn:
        job = _owned(conn, job_id, user)
    if job is None or action not in ("cancel", "retry", "resume"):
        return _not_found(request, user, f"job {job_id}")
    notice = run_action(engine, queue, settings, job, action)
    return RedirectResponse(
        f"/jobs/{job.id}?notice={notice}", status_code=status.HTTP_303_SEE_OTHER
    )


@router.get("/submit", response_class=HTMLResponse)
def submit_form(
    request: Request, user: SignedIn, conn: ConnDep, settings: SettingsDep
) -> HTMLResponse:
    return _submit_page(request, user, conn, settings)


def _submit_page(
    request: Request,
    user: SignedIn,
    conn: Any,
    settings: Any,
    error: str | None = None,
    error_code: int = 422,
) -> HTMLResponse:
    context = {
        "user": user,
        "models": [row["name"] for row in catalog_rows(conn, settings, user.key_id)],
        "priorities": [level.value for level in Priority],
        "error": error,
    }
    code = error_code if error else status.HTTP_200_OK
    return _page(request, "submit.html", context, code)


async def _read_form(request: Request, user: SignedIn, settings: Any) -> Submission:
    async with request.form(max_files=settings.max_upload_files, max_fields=FORM_FIELDS) as form:
        sent = form.get("csrf")
        check_csrf(user, sent if isinstance(sent, str) else None)
        model = form.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(422, "unprocessable", "choose a model")
        level = form.get("priority")
        priority = parse_priority(level if isinstance(level, str) else None)
        upload = form.get("file")
        images = [
            part
            for part in form.getlist("images")
            if isinstance(part, UploadFile) and part.filename
        ]
        pasted = form.get("texts")
        if images:
            uploads = [(part.filename or "", await part.read()) for part in images]
            parsed = await run_in_threadpool(
                parse_image_uploads, model, uploads, settings.max_image_bytes
            )
        elif isinstance(upload, UploadFile) and upload.filename:
            raw = await upload.read()
            parsed = await run_in_threadpool(
                parse_file_upload, model, upload.filename, raw, settings.max_text_chars
            )
        elif isinstance(pasted, str) and pasted.strip():
            # Pasted texts are a .txt file: one text per line.
            raw = pasted.replace("\r\n", "\n").encode("utf-8")
            parsed = await run_in_threadpool(
                parse_file_upload, model, "pasted.txt", raw, settings.max_text_chars
            )
        else:
            raise ApiError(422, "unprocessable", "upload a file, choose images, or paste texts")
    return with_options(parsed, None, priority, None, False)


def _take_submission_token(request: Request, engine: Engine, user: SignedIn) -> None:
    """The key's submission rate limit, shared with its API calls (one bucket per key)."""
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is None:
        return
    with engine.connect() as conn:
        digest = key_hash_of(conn, user.key_id) or f"key-id:{user.key_id}"
    take_submission_token(limiter, digest)


@router.post("/submit")
async def submit_job_form(
    request: Request,
    user: SignedIn,
    engine: EngineDep,
    queue: JobQueueDep,
    settings: SettingsDep,
) -> Response:
    try:
        submission = await _read_form(request, user, settings)
        await run_in_threadpool(_take_submission_token, request, engine, user)
        job, _ = await run_in_threadpool(
            submit, engine, queue, settings, user.key_id, submission, None
        )
    except ApiError as exc:
        with engine.connect() as conn:
            page = _submit_page(request, user, conn, settings, exc.detail, exc.status_code)
        # The refusal's own headers too: a 429 says when to retry (Retry-After).
        page.headers.update(exc.headers or {})
        return page
    return RedirectResponse(f"/jobs/{job.id}", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/models", response_class=HTMLResponse)
def models_page(
    request: Request, user: SignedIn, conn: ConnDep, settings: SettingsDep, queue: JobQueueDep
) -> HTMLResponse:
    try:
        live = dict(queue.workers())
    except BrokerUnavailable:
        live = None
    context = {"user": user, "models": catalog_rows(conn, settings, user.key_id), "live": live}
    return _page(request, "models.html", context)


@router.get("/models/{name}", response_class=HTMLResponse)
def model_page(
    request: Request,
    name: str,
    user: SignedIn,
    conn: ConnDep,
    settings: SettingsDep,
    version: Annotated[int | None, Query(ge=1, le=MAX_INTEGER)] = None,
) -> HTMLResponse:
    """A model the key may name; a trained one with its evaluation and versions."""
    row = next((m for m in catalog_rows(conn, settings, user.key_id) if m["name"] == name), None)
    if row is None:
        return _not_found(request, user, f"model {name}")
    versions = list_versions(conn, name, visible_to=user.key_id) if row.get("version") else []
    shown = next((v for v in versions if version in (None, v.version)), None)
    matrix = shown.metrics.get("confusion_matrix") if shown else None
    # The darkest cell of the confusion matrix picture is its largest count.
    peak = max((value for line in matrix or [] for value in line), default=1) or 1
    context = {"user": user, "model": row, "versions": versions, "shown": shown, "peak": peak}
    return _page(request, "model.html", context)


@router.get("/schedules", response_class=HTMLResponse)
def schedules_page(
    request: Request, user: SignedIn, conn: ConnDep, settings: SettingsDep
) -> HTMLResponse:
    rows, error = owned_schedules(conn, settings, user.key_id)
    context = {"user": user, "rows": rows, "error": error, "zone": settings.schedule_timezone}
    return _page(request, "schedules.html", context)


@router.get("/workers", response_class=HTMLResponse)
def workers_page(
    request: Request, user: SignedIn, conn: ConnDep, queue: JobQueueDep
) -> HTMLResponse:
    try:
        live: dict[str, int] | None = dict(queue.workers())
    except BrokerUnavailable:
        live = None
    stats = queue_stats(conn)
    context = {"user": user, "live": live, "stats": stats}
    return _page(request, "workers.html", context)
