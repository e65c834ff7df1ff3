"""``bulkscore cache ...``: what the result cache holds, and clearing it (core.cache)."""

from __future__ import annotations

import typer

from cli.console import JSON_HELP, err_console, fail, out_console, print_json

cache_app = typer.Typer(help="The result cache (see the README).", no_args_is_help=True)


@cache_app.command("stats")
def stats(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Rows in the result cache of BULKSCORE_DATABASE_URL, per model and revision."""
    # Deferred: SQL and the settings load when the command runs, not for `bulkscore --help`.
    from rich.table import Table
    from sqlalchemy.exc import SQLAlchemyError

    from core.cache.upkeep import cache_stats
    from core.config import get_settings
    from core.db import get_engine, redact_url

    settings = get_settings()
    try:
        found = cache_stats(get_engine(settings.database_url))
    except SQLAlchemyError as exc:
        fail(f"cannot read the result cache ({type(exc).__name__}); run `bulkscore db upgrade`")
    if as_json:
        print_json(
            {
                "rows": found.rows,
                "models": [
                    {
                        "model": model.model,
                        "revision": model.revision,
                        "rows": model.rows,
                        "oldest": model.oldest.isoformat() if model.oldest else None,
                        "newest": model.newest.isoformat() if model.newest else None,
                    }
                    for model in found.models
                ],
                "max_rows": settings.cache_max_rows,
                "max_age_s": settings.cache_max_age_s,
            }
        )
        return
    table = Table(title=f"result cache: {found.rows} rows", title_justify="left")
    for column in ("model", "revision", "rows", "oldest", "newest"):
        table.add_column(column)
    for model in found.models:
        table.add_row(
            model.model,
            model.revision or "-",
            str(model.rows),
            f"{model.oldest:%Y-%m-%d %H:%M}" if model.oldest else "-",
            f"{model.newest:%Y-%m-%d %H:%M}" if model.newest else "-",
        )
    out_console.print(table)
    limits = (
        f"limits: {settings.cache_max_rows or 'no'} rows, "
        f"{settings.cache_max_age_s or 'no'} s (BULKSCORE_CACHE_MAX_ROWS, "
        f"BULKSCORE_CACHE_MAX_AGE_S); database {redact_url(settings.database_url)}"
    )
    err_console.print(limits, highlight=False, soft_wrap=True)


@cache_app.command("clear")
def clear(
    model: str | None = typer.Option(None, "--model", "-m", help="Only this model's rows."),
) -> None:
    """Delete the cached results (of one model with --model); later jobs score afresh."""
    # Deferred: SQL and the settings load when the command runs, not for `bulkscore --help`.
    from sqlalchemy.exc import SQLAlchemyError

    from core.cache.upkeep import clear_cache
    from core.config import get_settings
    from core.db import get_engine

    settings = get_settings()
    try:
        deleted = clear_cache(get_engine(settings.database_url), model)
    except SQLAlchemyError as exc:
        fail(f"cannot clear the result cache ({type(exc).__name__}); run `bulkscore db upgrade`")
    which = f" of model {model}" if model else ""
    typer.echo(f"deleted {deleted} cached results{which}")
