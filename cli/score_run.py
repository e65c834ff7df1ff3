"""``bulkscore score``: a whole scoring job in this process, on the configured database."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from rich.table import Table
from sqlalchemy import Connection, Engine

from cli.console import EXIT_USAGE, err_console, fail, out_console, print_json
from cli.in_process import score_here
from core.config import Settings, get_settings
from core.db import get_engine, redact_url
from core.inputs.columns import DEFAULT_COLUMNS, ColumnChoiceError, InputColumns
from core.inputs.items import InputItem
from core.inputs.text_files import InputFileError, read_text_file
from core.jobs.column_pages import stream_column_pages
from core.jobs.export import export_lines, format_for_path
from core.jobs.inputs_hash import inputs_difference, inputs_hash, stored_inputs_hash
from core.jobs.lifecycle import Job, get_job
from core.jobs.parquet_export import ROW_GROUP_ROWS, parquet_pieces
from core.jobs.requeue import RequeueRefused
from core.jobs.requeue import retry_errors as retry_errors_of
from core.jobs.results import (
    cached_count,
    has_item_metadata,
    iter_results,
    label_counts,
)
from core.jobs.status import JobDriver, JobStatus
from core.migrate import upgrade
from core.models.catalog import load_registry
from core.models.registry import InputKind, ModelSpec, RegistryError, UnknownModelError
from engine.in_process import InProcessRun, create_embedded_job


def read_inputs(
    source: Path, kind: InputKind, max_chars: int, columns: InputColumns = DEFAULT_COLUMNS
) -> list[InputItem]:
    """The items of an input file (texts) or folder/glob (images)."""
    if kind == InputKind.IMAGE:
        # Deferred: Pillow and numpy are imported only for image models.
        from core.inputs.images import read_image_inputs

        return read_image_inputs(str(source))
    return read_text_file(source, max_chars, columns)


def write_export(conn: Connection, job: Job, out: Path, fmt: str, with_input: bool) -> None:
    """The job's results into ``out`` as CSV, JSON Lines or Parquet (row groups)."""
    job_id = job.id
    if fmt == "parquet":
        # The one connection for every page (nullcontext: not closed after each).
        pages = stream_column_pages(
            lambda: nullcontext(conn), job_id, job.total, ROW_GROUP_ROWS, with_input
        )
        with out.open("wb") as binary:
            for chunk in parquet_pieces(pages, with_input):
                binary.write(chunk)
        return
    rows = iter_results(conn, job_id, top_k_text=True, with_input=with_input)
    extra: tuple[str, ...] = ()
    if with_input or has_item_metadata(conn, job_id):
        extra = ("metadata", "input") if with_input else ("metadata",)
    with out.open("w", encoding="utf-8", newline="") as handle:
        for piece in export_lines(rows, fmt, extra):
            handle.write(piece)


def run_score(
    source: Path,
    model: str,
    out: Path | None,
    job_id: str | None,
    retry_errors: bool,
    device: str,
    as_json: bool = False,
    *,
    use_cache: bool = True,
    columns: tuple[str | None, str | None, str | None] = (None, None, None),
    include: list[str] | None = None,
) -> None:
    """The work of ``bulkscore score`` (its options: :mod:`cli.score_command`)."""
    settings = get_settings()
    try:
        chosen = InputColumns.parse(*columns)
    except ColumnChoiceError as exc:
        fail(str(exc), EXIT_USAGE)
    for extra in include or ():
        if extra != "input":
            fail(f"unknown --include {extra!r}; use input", EXIT_USAGE)
    try:
        spec = load_registry().get(model)
    except (UnknownModelError, RegistryError) as exc:
        fail(str(exc), EXIT_USAGE)
    fmt = None
    if out is not None:
        try:
            fmt = format_for_path(str(out))
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)

    engine = get_engine(settings.database_url)
    upgrade(settings.database_url)
    with engine.connect() as conn:
        existing = get_job(conn, job_id) if job_id else None
    if existing is not None and existing.driver != JobDriver.EMBEDDED:
        fail(
            f"job {job_id} belongs to the service (it was submitted to the API); "
            "choose another --job-id",
            EXIT_USAGE,
        )
    if existing is not None and existing.model != spec.name:
        fail(
            f"job {job_id} was scored with model {existing.model!r}, not {spec.name!r}", EXIT_USAGE
        )
    if existing is not None and existing.inputs_purged_at is not None:
        fail(
            f"job {job_id}'s inputs were purged at {existing.inputs_purged_at.isoformat()} "
            "(retention): it cannot be resumed or retried; choose another --job-id",
            EXIT_USAGE,
        )
    if retry_errors and existing is None:
        fail("--retry-errors needs the --job-id of an existing job", EXIT_USAGE)
    try:
        inputs = read_inputs(source, spec.input_kind, settings.max_text_chars, chosen)
    except InputFileError as exc:
        fail(str(exc), EXIT_USAGE)
    if existing is None:
        job = create_embedded_job(engine, spec, inputs, job_id, use_cache=use_cache)
    else:
        with engine.connect() as conn:
            same = stored_inputs_hash(conn, existing.id) == inputs_hash(inputs)
        if not same:
            fail(
                inputs_difference(existing.id, existing.total, len(inputs), str(source)), EXIT_USAGE
            )
        job = existing
        err_console.print(f"resuming job {job.id}: {job.done} of {job.total} already scored")

    run, elapsed = score_here(engine, settings, spec, job, device)
    if retry_errors:
        run, elapsed = _retry_here(engine, settings, spec, job.id, device, (run, elapsed))

    with engine.connect() as conn:
        final = get_job(conn, job.id)
        labels = label_counts(conn, job.id)
        from_cache = cached_count(conn, job.id)
        if out is not None and fmt is not None:
            assert final is not None
            write_export(conn, final, out, fmt, with_input=bool(include))
    assert final is not None
    scored_now = run.scored
    if as_json:
        print_json(
            {
                "job_id": final.id,
                "model": final.model,
                "model_revision": final.model_revision,
                "status": final.status.value,
                "items": final.total,
                "succeeded": final.succeeded,
                "failed": final.failed,
                "already_scored": run.already_scored,
                "from_cache": from_cache,
                "labels": labels,
                "items_per_s": scored_now / elapsed if elapsed > 0 else None,
                "database": redact_url(settings.database_url),
                "exported_to": str(out) if out is not None else None,
            }
        )
        return
    summary = Table(title=f"job {final.id}", show_header=False, title_justify="left")
    summary.add_row(
        "model", f"{final.model}" + (f" @ {final.model_revision}" if final.model_revision else "")
    )
    summary.add_row("status", final.status.value)
    summary.add_row("items", str(final.total))
    summary.add_row("succeeded", str(final.succeeded))
    summary.add_row("failed", str(final.failed))
    if run.already_scored:
        summary.add_row("already scored", str(run.already_scored))
    if from_cache:
        summary.add_row("from cache", str(from_cache))
    summary.add_row("labels", ", ".join(f"{k}: {v}" for k, v in labels.items()) or "-")
    summary.add_row("items/s", f"{scored_now / elapsed:.1f}" if elapsed > 0 else "-")
    summary.add_row("database", redact_url(settings.database_url))
    if out is not None:
        summary.add_row("exported to", str(out))
    out_console.print(summary)


def _retry_here(
    engine: Engine,
    settings: Settings,
    spec: ModelSpec,
    job_id: str,
    device: str,
    before: tuple[InProcessRun, float],
) -> tuple[InProcessRun, float]:
    """``--retry-errors``: mark the completed job's error rows and score them again here.

    A job with nothing to retry is reported and left as it is; a job that did not
    complete (its model failed to load, say) exits with status 2 and the reason.
    """
    try:
        with engine.begin() as conn:
            queued = retry_errors_of(conn, job_id, chunk_size=settings.chunk_size)
    except RequeueRefused as exc:
        with engine.connect() as conn:
            job = get_job(conn, job_id)
        if job is not None and job.status == JobStatus.COMPLETED:
            err_console.print(f"nothing to retry: {exc}", highlight=False, soft_wrap=True)
            return before
        fail(str(exc), EXIT_USAGE)
    err_console.print(f"job {job_id}: retrying {queued.items} error row(s)")
    return score_here(engine, settings, spec, queued.job, device)
