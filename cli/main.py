"""``bulkscore``: score files in-process, run the service, and talk to it.

Importing this module (and so ``bulkscore --help``) loads no ML framework, no Celery, no
web framework and no settings: each command imports what it needs when it runs.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from cli.api_command import api
from cli.cache_commands import cache_app
from cli.client_commands import cancel, results, resume, retry, status, submit
from cli.compare_command import compare
from cli.console import EXIT_USAGE, fail
from cli.db_commands import db_app
from cli.help_format import hide_flag_types
from cli.jobs_commands import jobs_app
from cli.keys_commands import keys_app
from cli.models_commands import models_app
from cli.purge_command import purge
from cli.schedules_commands import beat, schedules_app
from cli.score_command import score
from cli.train_command import train
from cli.worker_command import worker
from core.gc_tuning import tune_gc
from core.settings_errors import SettingsError

hide_flag_types()


class SettingsCheckedGroup(TyperGroup):
    """Unusable settings end any command with one line and status 2, not a traceback."""

    def invoke(self, ctx: Any) -> Any:  # Any: the context class of Typer's vendored click
        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            fail(str(exc), EXIT_USAGE)


def _print_version(value: bool) -> None:
    if not value:
        return
    # Only for --version: importlib.metadata takes longer to import than the rest of --help.
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        typer.echo(f"bulkscore {package_version('bulkscore')}")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        typer.echo("bulkscore (not installed)")
    raise typer.Exit()


app = typer.Typer(
    name="bulkscore",
    cls=SettingsCheckedGroup,
    help=(
        "Score large batches of texts and images with pretrained models.\n\n"
        "Embedded (no servers): `bulkscore score FILE --model NAME --out results.csv`.\n"
        "Configuration comes from BULKSCORE_* environment variables "
        "(BULKSCORE_DATABASE_URL, BULKSCORE_MODELS, ...) and a .env file."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the installed version and exit.",
    ),
) -> None:
    """Score large batches of texts and images with pretrained models."""
    # Every command's process, the worker's and the API's included (core.gc_tuning).
    tune_gc()


app.command("score")(score)
app.command("train")(train)
app.command("compare")(compare)
app.command("worker")(worker)
app.add_typer(db_app, name="db")
app.add_typer(cache_app, name="cache")
app.command("purge")(purge)
app.command("api")(api)
app.add_typer(keys_app, name="keys")
app.add_typer(schedules_app, name="schedules")
app.command("beat")(beat)
# Client commands: talk to a running API at BULKSCORE_API_URL with BULKSCORE_API_KEY.
for _client_command in (submit, status, results, cancel, retry, resume):
    app.command()(_client_command)
app.add_typer(jobs_app, name="jobs")
# `bulkscore models` lists; `bulkscore models show NAME` (API when a key is set, else SQL).
app.add_typer(models_app, name="models")


if __name__ == "__main__":  # pragma: no cover
    app()
