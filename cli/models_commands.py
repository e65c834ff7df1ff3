"""``bulkscore models``: list the API's models; ``models show NAME``: one model.

``bulkscore models`` is a client command (the API's ``GET /v1/models``, trained models with
their version and held-out accuracy). ``bulkscore models show`` asks the API too when
BULKSCORE_API_KEY is set (``GET /v1/models/NAME``: the service's models, which the local
database may not hold); without a key it reads the configured database directly, like
``bulkscore score`` and ``bulkscore train``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cli import client_commands
from cli.console import EXIT_USAGE, JSON_HELP, err_console, fail, out_console, print_json

# The fields of a models-file entry shown by `models show`.
SPEC_FIELDS = ("task", "backend", "source", "revision", "head", "description")

models_app = typer.Typer(
    help="The models jobs may name. Without a command: list them (from the API).",
    no_args_is_help=False,
)


@models_app.callback(invoke_without_command=True)
def models(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List the models the API can score with; trained ones with version and accuracy.

    `bulkscore models show NAME` prints one model (and a trained model's evaluation).
    """
    if ctx.invoked_subcommand is None:
        client_commands.models(as_json)


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
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Print a model: for a trained model its held-out evaluation and versions.

    With BULKSCORE_API_KEY set, asks the API at BULKSCORE_API_URL; otherwise reads
    BULKSCORE_DATABASE_URL and BULKSCORE_MODELS directly (no API needed).
    """
    # Deferred: the settings (pydantic) and SQL are not needed by `bulkscore --help`.
    from core.config import get_settings

    settings = get_settings()
    if settings.api_key:
        _show_from_api(name, version, confusion_png, as_json)
        return
    # Deferred: as above; these read the local models file and database.
    from cli.evaluation_view import print_evaluation, trained_json
    from core.db import get_engine, redact_url
    from core.models.registry import Registry, RegistryError
    from core.models.trained import get_trained, list_versions, trained_table_exists

    try:
        registry = Registry.load(settings.models)
    except RegistryError as exc:
        fail(str(exc), EXIT_USAGE)
    spec = registry.models.get(name)
    if spec is not None:
        if as_json:
            print_json({"name": name} | {field: getattr(spec, field) for field in SPEC_FIELDS})
        else:
            _print_fields(name, {field: getattr(spec, field) for field in SPEC_FIELDS})
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
    if as_json:
        print_json(trained_json(model, versions))
    else:
        print_evaluation(model, versions)
    if confusion_png is not None:
        _write_png(
            confusion_png,
            list(model.metrics.get("labels") or model.labels),
            model.metrics.get("confusion_matrix") or [],
            f"{model.name} {model.revision}: held-out accuracy {(model.accuracy or 0.0):.3f}",
        )


def _show_from_api(
    name: str, version: int | None, confusion_png: Path | None, as_json: bool
) -> None:
    """``models show`` through the API (``GET /v1/models/NAME``)."""
    params = {"version": version} if version is not None else {}
    detail = client_commands.client_from_settings().json("GET", f"/v1/models/{name}", params=params)
    if as_json:
        print_json(detail)
    else:
        _print_fields(
            name,
            {
                key: value
                for key, value in detail.items()
                if key not in ("name", "evaluation", "versions")
            },
        )
        versions = detail.get("versions") or []
        if versions:
            table = Table(
                "version", "accuracy", "created", "job", title="versions", title_justify="left"
            )
            for entry in versions:
                accuracy = entry.get("accuracy")
                table.add_row(
                    str(entry.get("version")),
                    f"{accuracy:.3f}" if isinstance(accuracy, int | float) else "-",
                    str(entry.get("created_at") or "-"),
                    str(entry.get("job_id") or "-"),
                )
            out_console.print(table)
    evaluation = detail.get("evaluation")
    if confusion_png is not None:
        if not evaluation:
            fail(f"{name!r} is not a trained model; it has no confusion matrix", EXIT_USAGE)
        accuracy = evaluation.get("accuracy") or 0.0
        _write_png(
            confusion_png,
            list(evaluation.get("labels") or detail.get("labels") or []),
            evaluation.get("confusion_matrix") or [],
            f"{name} {detail.get('version', '')}: held-out accuracy {accuracy:.3f}",
        )


def _print_fields(title: str, fields: dict[str, Any]) -> None:
    table = Table(show_header=False, title=title, title_justify="left")
    for field, value in fields.items():
        table.add_row(field, str(value if value not in (None, "") else "-"))
    out_console.print(table)


def _write_png(path: Path, labels: list[str], matrix: list[list[int]], title: str) -> None:
    # Deferred: Pillow is imported only when a picture is asked for.
    from cli.confusion_png import write_confusion_png

    write_confusion_png(path, labels, matrix, title)
    err_console.print(f"wrote {path}", highlight=False, soft_wrap=True)
