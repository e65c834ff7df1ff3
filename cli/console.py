"""Shared terminal output: messages on stderr, a clean exit with a clear error, JSON out."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

# Piped or redirected, rich would cut tables at 80 columns: give it room for the widest
# row instead (a table takes its natural width; it does not stretch). COLUMNS still wins.
PIPED_WIDTH = 4096


def _width(stream: Any) -> int | None:
    if os.environ.get("COLUMNS") or stream.isatty():
        return None
    return PIPED_WIDTH


err_console = Console(stderr=True, width=_width(sys.stderr))
out_console = Console(width=_width(sys.stdout))

EXIT_USAGE = 2  # the command or its input is wrong: fix and re-run
EXIT_FAILURE = 1  # the work could not be done (model did not load, server refused, ...)

JSON_HELP = "Print the result as JSON on stdout (messages stay on stderr)."


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    # The message is plain text: "[models.x]" in it must not be read as console markup.
    err_console.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    raise typer.Exit(code)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (dates and paths as strings)."""
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))
