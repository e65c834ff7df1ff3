"""``bulkscore jobs list`` and ``jobs delete``: the caller's jobs, through the API
(``GET /v1/jobs``, ``DELETE /v1/jobs/{id}``)."""

from __future__ import annotations

import typer
from rich.table import Table

from cli.client_commands import client_from_settings
from cli.console import JSON_HELP, out_console, print_json
from core.jobs.status import JobStatus

jobs_app = typer.Typer(
    help="Jobs of the API key (BULKSCORE_API_URL, BULKSCORE_API_KEY).", no_args_is_help=True
)


@jobs_app.command("list")
def list_jobs(
    job_status: JobStatus | None = typer.Option(
        None, "--status", "-s", help="Only jobs in this state."
    ),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=1000, help="Most jobs listed."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """The key's jobs, newest first: id, model, status, counts and creation time."""
    params: dict[str, str | int] = {"limit": limit}
    if job_status is not None:
        params["status"] = job_status.value
    listing = client_from_settings().json("GET", "/v1/jobs", params=params)
    found = listing["data"]
    if as_json:
        print_json(found)
        return
    table = Table("id", "model", "status", "total", "succeeded", "failed", "created")
    for job in found:
        counts = job["counts"]
        table.add_row(
            job["id"],
            job["model"],
            job["status"],
            str(counts["total"]),
            str(counts["succeeded"]),
            str(counts["failed"]),
            job["created_at"] or "-",
        )
    out_console.print(table)


@jobs_app.command("delete")
def delete_job(
    job_id: str = typer.Argument(..., help="The job to delete (final: cancel it first)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Delete a finished job with its inputs and results (an active job is refused)."""
    gone = client_from_settings().json("DELETE", f"/v1/jobs/{job_id}")
    if as_json:
        print_json(gone)
        return
    counts = gone["deleted"]
    out_console.print(
        f"deleted job {gone['id']}: {counts['items']} items, {counts['chunks']} chunks, "
        f"{counts['results']} results"
    )
