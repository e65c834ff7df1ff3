"""``bulkscore purge``: drop the inputs and results of jobs that finished long ago.

Without ``--older-than`` the retention settings apply (``BULKSCORE_RETAIN_INPUTS_DAYS``,
``BULKSCORE_RETAIN_RESULTS_DAYS``), as in the beat; the work is :mod:`core.jobs.purge`.
"""

from __future__ import annotations

import typer

from cli.console import EXIT_USAGE, JSON_HELP, err_console, fail, out_console, print_json


def purge(
    older_than: str | None = typer.Option(
        None,
        "--older-than",
        metavar="AGE",
        help="Purge jobs finished more than AGE ago (30d, 12h), instead of the retention settings.",
    ),
    inputs_only: bool = typer.Option(
        False, "--inputs-only", help="Only inputs: results stay exportable."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Count what would be purged; delete nothing."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Purge finished jobs' inputs and results past their retention (never active jobs).

    The job rows stay: their status says what is gone (`purged` in GET /v1/jobs/{id}).
    """
    # Deferred: SQL and the settings load when the command runs, not for `bulkscore --help`.
    from sqlalchemy.exc import SQLAlchemyError

    from core.config import get_settings
    from core.db import get_engine
    from core.jobs.purge import Cutoffs, parse_age
    from core.jobs.purge import purge as run_purge

    settings = get_settings()
    if older_than is not None:
        try:
            age = parse_age(older_than)
        except ValueError as exc:
            fail(f"--older-than: {exc}", EXIT_USAGE)
        cutoffs = Cutoffs.older_than(age, inputs_only=inputs_only)
    else:
        cutoffs = Cutoffs.from_settings(settings)
        if inputs_only:
            cutoffs = Cutoffs(inputs_before=cutoffs.inputs_before, results_before=None)
    if not cutoffs.on:
        fail(
            "nothing to purge by: retention is off (BULKSCORE_RETAIN_INPUTS_DAYS"
            + ("" if inputs_only else " and BULKSCORE_RETAIN_RESULTS_DAYS")
            + " 0); give --older-than AGE",
            EXIT_USAGE,
        )
    try:
        report = run_purge(
            get_engine(settings.database_url),
            cutoffs,
            dry_run=dry_run,
            cache_max_rows=settings.cache_max_rows,
            cache_max_age_s=settings.cache_max_age_s,
        )
    except SQLAlchemyError as exc:
        fail(f"cannot purge ({type(exc).__name__}); run `bulkscore db upgrade`")
    if as_json:
        print_json(
            {
                "dry_run": report.dry_run,
                "jobs": report.jobs,
                "input_rows": report.input_rows,
                "result_rows": report.result_rows,
                "cache_rows": report.cache_rows,
                "job_ids": report.job_ids,
            }
        )
        return
    verb = "would purge" if dry_run else "purged"
    out_console.print(
        f"{verb} {report.jobs} job(s): {report.input_rows} input rows, "
        f"{report.result_rows} result rows"
        + ("" if dry_run else f"; {report.cache_rows} cache rows evicted")
    )
    if dry_run:
        err_console.print("dry run: nothing was deleted")
