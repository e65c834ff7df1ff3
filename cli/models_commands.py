"""``bulkscore models``: list the API's models; ``models show NAME``: one model, from SQL.

``bulkscore models`` is a client command (the API's ``GET /v1/models``, trained models with
their version and held-out accuracy); ``bulkscore models show`` reads the configured
database directly, like ``bulkscore score`` and ``bulkscore train``.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli import client_commands
from cli.console import EXIT_USAGE, err_console, fail, out_console
from cli.evaluation_view import print_evaluation
from core.config import get_settings
from core.db import get_engine, redact_url
from core.models.registry import Registry, RegistryError
from core.models.trained import get_trained, list_versions, trained_table_exists

models_app = typer.Typer(
    help="The models jobs may name. Without a command: list them (from the API).",
    no_args_is_help=False,
)


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context) -> None:
    """List the models the API can score with; trained ones with version and accuracy.

    `bulkscore models show NAME` prints one model's evaluation from the local database.
    """
    if ctx.invoked_subcommand is None:
        client_commands.models()


@models_app.command("show")
def show(
    name: str = typer.Argument(..., help="A model name."),
    version: int | None = typer.Option(
        None,
        "--version",
        "-v",
        min=1,
        max=2**31 - 1,
        help="A version of a trained model (default: latest).",
    ),
    confusion_png: Path | None = typer.Option(
        None, "--confusion-png", help="Also write the held-out confusion matrix to this PNG."
    ),
) -> None:
    """Print a model: for a trained model its held-out evaluation and versions.

    Reads BULKSCORE_DATABASE_URL and BULKSCORE_MODELS directly (no API needed).
    """
    settings = get_settings()
    try:
        registry = Registry.load(settings.models)
    except RegistryError as exc:
        fail(str(exc), EXIT_USAGE)
    spec = registry.models.get(name)
    if spec is not None:
        table = Table(show_header=False, title=name, title_justify="left")
        for field in ("task", "backend", "source", "revision", "head", "description"):
            table.add_row(field, str(getattr(spec, field) or "-"))
        out_console.print(table)
        err_console.print("a model of the models file: no evaluation is stored for it")
        if confusion_png is not None:
            fail(f"{name!r} is not a trained model; it has no confusion matrix", EXIT_USAGE)
        return
    model = None
    if trained_table_exists(settings.database_url):
        with get_engine(settings.database_url).connect() as conn:
            model = get_trained(conn, name, version, with_head=False)
            versions = list_versions(conn, name)
    if model is None:
        where = f" version {version}" if version is not None else ""
        fail(
            f"no model {name!r}{where} in the models file or among the trained models of "
            f"{redact_url(settings.database_url)}",
            EXIT_USAGE,
        )
    print_evaluation(model, versions)
    if confusion_png is not None:
        # Deferred: Pillow is imported only when a picture is asked for.
        from cli.confusion_png import write_confusion_png

        labels = list(model.metrics.get("labels") or model.labels)
        write_confusion_png(
            confusion_png,
            labels,
            model.metrics.get("confusion_matrix") or [],
            f"{model.name} {model.revision}: held-out accuracy {(model.accuracy or 0.0):.3f}",
        )
        err_console.print(f"wrote {confusion_png}", highlight=False, soft_wrap=True)
