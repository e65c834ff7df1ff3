"""``bulkscore compare``: its options; the work is in :mod:`cli.compare_run`."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.console import JSON_HELP


def compare(
    job_id: str = typer.Argument(..., help="A finished job (its items are scored again)."),
    model: str = typer.Option(..., "--model", "-m", help="The model to compare with."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write every differing item to this CSV file."
    ),
    show: int = typer.Option(20, "--show", min=0, help="Differing items printed."),
    device: str = typer.Option("cpu", help="torch device: cpu, cuda, cuda:1, ..."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Score JOB's items with MODEL and report agreement and the items whose labels differ.

    Reads BULKSCORE_DATABASE_URL (where JOB is) and scores in this process.
    """
    # Deferred: SQL, the engine and the settings load when the command runs, not for
    # `bulkscore --help`.
    from cli.compare_run import run_compare

    run_compare(job_id, model, out, show, device, as_json)
