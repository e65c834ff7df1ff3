"""``bulkscore``: score files in-process, run the service, and talk to it."""

from __future__ import annotations

import typer

from cli.db_commands import db_app
from cli.score_command import score

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
app.add_typer(db_app, name="db")


if __name__ == "__main__":  # pragma: no cover
    app()
