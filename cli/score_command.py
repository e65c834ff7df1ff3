"""``bulkscore score``: its options; the work is in :mod:`cli.score_run`."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.console import JSON_HELP
from cli.input_options import ID_COLUMN, KEEP_COLUMNS, NO_CACHE, TEXT_COLUMN


def score(
    source: Path = typer.Argument(
        ...,
        help='Input: .txt (a text per line), .jsonl ({"id", "text"}), .csv (id, text) or '
        ".parquet (id, text columns).",
    ),
    model: str = typer.Option("sentiment", "--model", "-m", help="A model name from the registry."),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Also export the results to this .csv, .jsonl or .parquet file.",
    ),
    text_column: str | None = TEXT_COLUMN,
    id_column: str | None = ID_COLUMN,
    keep_columns: str | None = KEEP_COLUMNS,
    include: list[str] = typer.Option(
        [], "--include", help="input: --out also gets each input's text (input column)."
    ),
    job_id: str | None = typer.Option(
        None,
        "--job-id",
        help="Job id to use; re-running an existing id with the same inputs scores only what "
        "is missing (other inputs are refused).",
    ),
    retry_errors: bool = typer.Option(
        False,
        "--retry-errors",
        help="With the --job-id of an existing job: score its error rows again, each "
        "replaced by one new row (inputs refused at intake are not retried).",
    ),
    device: str = typer.Option("cpu", help="torch device: cpu, cuda, cuda:1, ..."),
    no_cache: bool = NO_CACHE,
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Score every input of SOURCE with MODEL in this process and store the results.

    Results go to the results table of BULKSCORE_DATABASE_URL (default sqlite:///bulkscore.db,
    migrated automatically) and, with --out, to a CSV or JSONL file.
    """
    # Deferred: SQL, the engine and the settings load when the command runs, not for
    # `bulkscore --help`.
    from cli.score_run import run_score

    run_score(
        source,
        model,
        out,
        job_id,
        retry_errors,
        device,
        as_json,
        use_cache=not no_cache,
        columns=(text_column, id_column, keep_columns),
        include=include,
    )
