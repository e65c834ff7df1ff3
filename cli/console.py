"""Shared terminal output: messages on stderr, a clean exit with a clear error."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

err_console = Console(stderr=True)
out_console = Console()

EXIT_USAGE = 2  # the command or its input is wrong: fix and re-run
EXIT_FAILURE = 1  # the work could not be done (model did not load, server refused, ...)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    # The message is plain text: "[models.x]" in it must not be read as console markup.
    err_console.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    raise typer.Exit(code)
