"""``bulkscore``: score files in-process, run the service, and talk to it."""

from __future__ import annotations

import typer

from cli.api_command import api
from cli.cache_commands import cache_app
from cli.client_commands import cancel, results, resume, retry, status, submit
from cli.compare_command import compare
from cli.db_commands import db_app
from cli.keys_commands import keys_app
from cli.models_commands import models_app
from cli.schedules_commands import beat, schedules_app
from cli.score_command import score
from cli.train_command import train
from cli.worker_command import worker

app = typer.Typer(
    name="bulkscore",
    help=(
        "Score large batches of texts and images with pretrained models.\n\n"
        "Embedded (no servers): `bulkscore score FILE --model NAME --out results.csv`.\n"
        "Configuration comes from BULKSCORE_* environment variables "
        "(BULKSCORE_DATABASE_URL, BULKSCORE_MODELS, ...)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("score")(score)
app.command("train")(train)
app.command("compare")(compare)
app.command("worker")(worker)
app.add_typer(db_app, name="db")
app.add_typer(cache_app, name="cache")
app.command("api")(api)
app.add_typer(keys_app, name="keys")
app.add_typer(schedules_app, name="schedules")
app.command("beat")(beat)
# Client commands: talk to a running API at BULKSCORE_API_URL with BULKSCORE_API_KEY.
for _client_command in (submit, status, results, cancel, retry, resume):
    app.command()(_client_command)
# `bulkscore models` lists (a client command); `bulkscore models show NAME` reads SQL.
app.add_typer(models_app, name="models")


if __name__ == "__main__":  # pragma: no cover
    app()
