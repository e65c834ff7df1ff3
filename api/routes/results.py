"""``/v1/jobs/{id}/results``: a job's results, a page at a time or streamed as a file."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from fastapi import APIRouter, Query, status
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine

from api.deps import ConnDep, EngineDep, OwnedJob
from api.problems import ApiError
from api.schemas import ResultPage, ResultRow
from core.jobs.column_pages import stream_column_pages
from core.jobs.export import export_lines
from core.jobs.parquet_export import ROW_GROUP_ROWS, parquet_pieces
from core.jobs.results import has_item_metadata, read_page, stream_results
from core.tables import MAX_INTEGER

router = APIRouter(prefix="/v1/jobs", tags=["results"])

MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}


@router.get(
    "/{job_id}/results",
    response_model=ResultPage,
    # A row's metadata is left out when its input had none, and its input text unless
    # asked for (include=input): a page reads as it did before either existed.
    response_model_exclude_unset=True,
    operation_id="get_results",
    responses={
        200: {
            "description": "A page of results (JSON), or every result as CSV, JSON Lines or "
            "Parquet.",
            "content": {
                "text/csv": {},
                "application/x-ndjson": {},
                "application/vnd.apache.parquet": {},
            },
        },
        404: {"description": "No such job."},
        410: {"description": "The job's results were purged (retention): `results_purged`."},
    },
)
def results(
    job: OwnedJob,
    conn: ConnDep,
    engine: EngineDep,
    limit: int = Query(default=100, ge=1, le=5000, description="Rows per page."),
    after: int = Query(
        default=-1,
        ge=-1,
        le=MAX_INTEGER,
        description="Only rows with a larger index (`next_after` of a page).",
    ),
    fmt: Literal["json", "csv", "jsonl", "parquet"] = Query(
        default="json",
        alias="format",
        description="`json`: one page; `csv`, `jsonl` or `parquet`: stream every row "
        "(limit/after unused; Parquet in row groups of 10,000).",
    ),
    include: list[Literal["input"]] = Query(
        default=[],
        description="`input`: add each input's text (`input`) to every row, and to a CSV "
        "export the `metadata` column too.",
    ),
) -> ResultPage | StreamingResponse:
    """Results in index order, readable while the job runs.

    While the job runs, chunks finish in any order; a page then stops at the first index
    not yet written, so following ``next_after`` never skips a row that arrives later.
    ``next_after`` is null only when the job is final and every row has been returned.
    A job whose results the retention purge removed answers 410 `results_purged`.
    """
    if job.results_purged_at is not None:
        raise ApiError(
            status.HTTP_410_GONE,
            "results_purged",
            f"the results of job {job.id} were purged at {job.results_purged_at.isoformat()} "
            "(retention: BULKSCORE_RETAIN_RESULTS_DAYS); the job's status and counts remain",
        )
    with_input = "input" in include
    if fmt != "json":
        extra: tuple[str, ...] = ()
        if fmt == "csv":
            # CSV has fixed columns: metadata gets one when the job's inputs carry any.
            if with_input or has_item_metadata(conn, job.id):
                extra = ("metadata",)
            if with_input:
                extra = ("metadata", "input")
        return StreamingResponse(
            _export(engine, job.id, job.total, fmt, with_input, extra),
            media_type=MEDIA_TYPES[fmt],
            headers={"Content-Disposition": f'attachment; filename="{job.id}.{fmt}"'},
        )
    # One row more than asked tells whether another page exists, without a second query.
    rows = read_page(conn, job.id, after, limit + 1, with_input=with_input)
    if not job.status.is_final:
        rows = contiguous_from(rows, after)
        page = rows[:limit]
        # Still running: always a cursor to poll again with, even when nothing is new yet.
        next_after: int | None = page[-1]["index"] if page else after
    else:
        page = rows[:limit]
        next_after = page[-1]["index"] if len(rows) > limit else None
    return ResultPage(data=[_result_row(row) for row in page], next_after=next_after)


def _result_row(row: dict[str, Any]) -> ResultRow:
    if row.get("metadata") is None:
        row = {key: value for key, value in row.items() if key != "metadata"}
    return ResultRow.model_validate(row)


def contiguous_from(rows: list[dict[str, Any]], after: int) -> list[dict[str, Any]]:
    """The leading rows whose indexes follow ``after`` without a gap."""
    for position, row in enumerate(rows):
        if row["index"] != after + 1 + position:
            return rows[:position]
    return rows


def _export(
    engine: Engine, job_id: str, total: int, fmt: str, with_input: bool, extra: tuple[str, ...]
) -> Iterator[bytes]:
    # Not the request's connection (released once the handler returns, while this is still
    # streamed), and no transaction held across pages: a slow client must not keep one open.
    if fmt == "parquet":
        pages = stream_column_pages(engine.connect, job_id, total, ROW_GROUP_ROWS, with_input)
        yield from parquet_pieces(pages, with_input)
        return
    rows = stream_results(engine, job_id, top_k_text=True, with_input=with_input)
    for piece in export_lines(rows, fmt, extra):
        yield piece.encode("utf-8")
