"""The client commands: ``submit``, ``status``, ``results``, ``cancel``, ``retry``, ``resume``,
``models``.

They talk to a running ``bulkscore api`` at BULKSCORE_API_URL with BULKSCORE_API_KEY.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.console import (
    EXIT_FAILURE,
    EXIT_USAGE,
    JSON_HELP,
    err_console,
    fail,
    out_console,
    print_json,
)
from cli.input_options import ID_COLUMN, KEEP_COLUMNS, NO_CACHE, TEXT_COLUMN
from core.inputs.text_files import TEXT_SUFFIXES, InputFileError
from core.jobs.export import EXPORT_FORMATS, format_for_path
from core.jobs.priority import Priority
from core.jobs.status import JobStatus

if TYPE_CHECKING:
    from cli.client import ApiClient

POLL_INTERVAL_S = 1.0


def client_from_settings() -> ApiClient:
    """The configured API's client (see :mod:`cli.client`)."""
    # Deferred: httpx and the settings cost more to import than `bulkscore --help` may take.
    from cli.client import client_from_settings as configured

    return configured()


def submit(
    source: Path = typer.Argument(
        ...,
        help="A .jsonl, .csv, .parquet or .txt file of texts; or, for image models, a folder "
        "of images, a glob ('photos/*.jpg') or one image file.",
    ),
    model: str = typer.Option(..., "--model", "-m", help="A model name (see `bulkscore models`)."),
    wait: bool = typer.Option(False, "--wait", help="Show progress until the job ends."),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", help="Resubmitting with the same key returns the same job."
    ),
    interval: float = typer.Option(POLL_INTERVAL_S, min=0.1, help="Seconds between polls."),
    expires_after: float | None = typer.Option(
        None,
        "--expires-after",
        help="Seconds (1 to 30 days): not finished by then, the job ends expired.",
    ),
    priority: Priority = typer.Option(
        Priority.NORMAL,
        "--priority",
        help="high, normal or low: workers take higher levels first, and share a level "
        "across keys by the worker time each has had, then across a key's jobs.",
    ),
    no_cache: bool = NO_CACHE,
    text_column: str | None = TEXT_COLUMN,
    id_column: str | None = ID_COLUMN,
    keep_columns: str | None = KEEP_COLUMNS,
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Upload SOURCE as a job for MODEL and print the job id.

    With --wait, follow the job to its end; the exit status is then 0 only if it completed.
    """
    client = client_from_settings()
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    form = {"model": model}
    if expires_after is not None:
        form["expires_after_s"] = repr(expires_after)
    if priority != Priority.NORMAL:
        form["priority"] = priority.value
    if no_cache:
        form["cache"] = "false"
    for field, value in (
        ("text_column", text_column),
        ("id_column", id_column),
        ("keep_columns", keep_columns),
    ):
        if value:
            form[field] = value
    if source.suffix.lower() in TEXT_SUFFIXES:
        if not source.is_file():
            fail(f"{source}: no such file", EXIT_USAGE)
        with source.open("rb") as handle:
            response = client.request(
                "POST",
                "/v1/jobs",
                data=form,
                files={"file": (source.name, handle, "application/octet-stream")},
                headers=headers,
            )
    else:
        # Every file goes up as it is: the server checks each by content, so a file that is
        # not an image becomes that item's error instead of silently vanishing here.
        # Deferred: the image readers import numpy and Pillow, which text jobs do not need.
        from core.inputs.images import list_image_files

        try:
            found = list_image_files(str(source))
        except InputFileError as exc:
            fail(str(exc), EXIT_USAGE)
        parts = [
            ("images", (ident, path.read_bytes(), "application/octet-stream"))
            for ident, path in found
        ]
        response = client.request("POST", "/v1/jobs", data=form, files=parts, headers=headers)
    job = response.json()
    again = " (already submitted with this idempotency key)" if response.status_code == 200 else ""
    err_console.print(
        f"job {job['id']}: {job['counts']['total']} inputs for model {job['model']}, "
        f"{job['status']}{again}",
        highlight=False,
        soft_wrap=True,
    )
    _print_warnings(job)
    if not as_json:
        typer.echo(job["id"])
    if wait:
        job = _follow(client, job["id"], interval)
    if as_json:
        print_json(job)
    if wait:
        _finish(job, print_table=not as_json)


def status(
    job_id: str = typer.Argument(..., help="The job id."),
    watch: bool = typer.Option(
        False, "--watch", "-w", help="Show a progress bar until the job ends."
    ),
    interval: float = typer.Option(POLL_INTERVAL_S, min=0.1, help="Seconds between polls."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Show a job's status and counts.

    With --watch, follow the job to its end; the exit status is then 0 only if it completed.
    """
    client = client_from_settings()
    job = _follow(client, job_id, interval) if watch else client.json("GET", f"/v1/jobs/{job_id}")
    if as_json:
        print_json(job)
    if watch:
        _finish(job, print_table=not as_json)
    elif not as_json:
        _print_job(job)


def results(
    job_id: str = typer.Argument(..., help="The job id."),
    fmt: str | None = typer.Option(
        None, "--format", "-f", help="csv, jsonl or parquet (default: from --out, else csv)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write to this file, not stdout."),
    include: list[str] = typer.Option(
        [], "--include", help="input: add each input's text (and its metadata to a CSV)."
    ),
) -> None:
    """Download every result of a job as CSV, JSON Lines or Parquet."""
    if fmt is None:
        try:
            fmt = format_for_path(str(out)) if out is not None else "csv"
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
    if fmt not in EXPORT_FORMATS:
        fail(f"unknown format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}", EXIT_USAGE)
    for extra in include:
        if extra != "input":
            fail(f"unknown --include {extra!r}; use input", EXIT_USAGE)
    params: dict[str, Any] = {"format": fmt}
    if include:
        params["include"] = "input"
    client = client_from_settings()
    job = client.json("GET", f"/v1/jobs/{job_id}")
    if not JobStatus(job["status"]).is_final:
        done = job["counts"]["succeeded"] + job["counts"]["failed"]
        err_console.print(
            f"note: job {job_id} is {job['status']}: {done} of {job['counts']['total']} "
            "results so far",
            highlight=False,
            soft_wrap=True,
        )
    path = f"/v1/jobs/{job_id}/results"
    if out is None:
        with client.stream("GET", path, params=params) as response:
            for piece in response.iter_bytes():
                sys.stdout.buffer.write(piece)
        sys.stdout.buffer.flush()
        return
    # Written beside the target and renamed at the end: an interrupted download never
    # leaves a truncated file under the requested name.
    partial = out.with_name(out.name + ".part")
    try:
        with (
            client.stream("GET", path, params=params) as response,
            partial.open("wb") as handle,
        ):
            for piece in response.iter_bytes():
                handle.write(piece)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    err_console.print(f"wrote {out}", highlight=False, soft_wrap=True)


def cancel(
    job_id: str = typer.Argument(..., help="The job id."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Cancel a job: work not yet started is dropped; results already written stay."""
    job = client_from_settings().json("POST", f"/v1/jobs/{job_id}/cancel")
    if as_json:
        print_json(job)
    elif job["status"] == JobStatus.CANCELLED:
        typer.echo(f"job {job_id}: cancelled")
    else:
        typer.echo(f"job {job_id} was already {job['status']}; nothing to cancel")


def retry(
    job_id: str = typer.Argument(..., help="The job id (a completed job)."),
    errors_matching: str | None = typer.Option(
        None,
        "--errors-matching",
        help="Only error rows whose error contains this text (case-sensitive).",
    ),
    wait: bool = typer.Option(False, "--wait", help="Show progress until the job ends."),
    interval: float = typer.Option(POLL_INTERVAL_S, min=0.1, help="Seconds between polls."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Score a completed job's error rows again, in the same job.

    Each error row is replaced by one new row. Inputs refused at intake (empty text, not
    an image) are not retried. With --wait, the exit status is 0 only if the job completed.
    """
    client = client_from_settings()
    body = {"errors_matching": errors_matching} if errors_matching is not None else None
    job = client.json("POST", f"/v1/jobs/{job_id}/retry", json=body)
    what = f"{job['requeued']} error row(s) queued for retry"
    _requeued(client, job, what, wait=wait, interval=interval, as_json=as_json)


def resume(
    job_id: str = typer.Argument(..., help="The job id (a cancelled or expired job)."),
    wait: bool = typer.Option(False, "--wait", help="Show progress until the job ends."),
    interval: float = typer.Option(POLL_INTERVAL_S, min=0.1, help="Seconds between polls."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Score the rest of a cancelled or expired job; results already written stay.

    The job's deadline is cleared. With --wait, the exit status is 0 only if it completed.
    """
    client = client_from_settings()
    job = client.json("POST", f"/v1/jobs/{job_id}/resume")
    what = f"{job['requeued']} unscored item(s) queued again"
    _requeued(client, job, what, wait=wait, interval=interval, as_json=as_json)


def _requeued(
    client: ApiClient,
    job: dict[str, Any],
    what: str,
    *,
    wait: bool,
    interval: float,
    as_json: bool,
) -> None:
    """What retry and resume print once the API queued the work: the job, then with
    --wait its progress to the end (the exit status says whether it completed)."""
    _print_warnings(job)
    err_console.print(f"job {job['id']}: {what}")
    if wait:
        job = _follow(client, job["id"], interval)
    if as_json:
        print_json(job)
    if wait:
        _finish(job, print_table=not as_json)


def models(as_json: bool = False) -> None:
    """List the models the API can score with (trained ones with version and accuracy)."""
    listing = client_from_settings().json("GET", "/v1/models")
    if as_json:
        print_json(listing["data"])
        return
    # Trained models (bulkscore train, POST /v1/models) carry a version and an accuracy;
    # their column appears only when there are some.
    trained = any(model.get("version") for model in listing["data"])
    table = Table("name", "task", "backend", "source")
    if trained:
        # The extra column makes the table wide: keep the short columns whole on a narrow
        # terminal and let the (long) source wrap instead.
        for column in table.columns[:3]:
            column.no_wrap = True
        table.columns[3].overflow = "fold"
        table.add_column("trained", no_wrap=True)
    for model in listing["data"]:
        row = [model["name"], model["task"], model["backend"], model["source"]]
        if trained:
            accuracy = model.get("accuracy")
            row[3] = model.get("base") or model["source"]
            row.append(
                f"{model['version']} ({accuracy:.3f})"
                if model.get("version") and isinstance(accuracy, int | float)
                else model.get("version") or ""
            )
        table.add_row(*row)
    out_console.print(table)


def _print_warnings(job: dict[str, Any], shown: set[str] | None = None) -> None:
    """The job's warnings (no live worker serves its model), each once, on stderr."""
    for warning in job.get("warnings") or []:
        if shown is None or warning not in shown:
            err_console.print(
                f"warning: {warning}", highlight=False, soft_wrap=True, style="yellow"
            )
            if shown is not None:
                shown.add(warning)


def _state(job: dict[str, Any]) -> str:
    """The status, with what a queued job waits for rather than a bare "queued"."""
    queue = job.get("queue")
    if job["status"] != JobStatus.QUEUED or not queue:
        return str(job["status"])
    if queue.get("worker_live") is False:
        return f"queued: no live worker for {queue['runs_on']}"
    return f"queued: {queue['chunks_ahead']} chunks ahead"


def _follow(client: ApiClient, job_id: str, interval: float) -> dict[str, Any]:
    """Poll the job with a progress bar until it is final; return its last state."""
    job = client.json("GET", f"/v1/jobs/{job_id}")
    shown: set[str] = set()
    with Progress(
        TextColumn("[bold]{task.fields[state]}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]}"),
        TimeElapsedColumn(),
        console=err_console,
    ) as bar:
        task = bar.add_task("job", total=job["counts"]["total"], state="", failed="")
        while True:
            counts = job["counts"]
            _print_warnings(job, shown)
            bar.update(
                task,
                completed=counts["succeeded"] + counts["failed"],
                state=_state(job),
                failed=f"{counts['failed']} failed" if counts["failed"] else "",
            )
            if JobStatus(job["status"]).is_final:
                return job
            time.sleep(interval)
            job = client.json("GET", f"/v1/jobs/{job_id}")


def _finish(job: dict[str, Any], print_table: bool = True) -> None:
    if print_table:
        _print_job(job)
    if job["status"] != JobStatus.COMPLETED:
        raise typer.Exit(EXIT_FAILURE)


def _print_job(job: dict[str, Any]) -> None:
    table = Table(show_header=False, title=f"job {job['id']}", title_justify="left")
    table.add_row("model", job["model"])
    table.add_row("status", job["status"])
    for name in ("total", "succeeded", "failed"):
        table.add_row(name, str(job["counts"][name]))
    for name in ("created_at", "started_at", "finished_at"):
        table.add_row(name.removesuffix("_at"), job[name] or "-")
    if job.get("error"):
        table.add_row("error", job["error"])
    out_console.print(table)
