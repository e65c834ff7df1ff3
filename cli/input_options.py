"""Options that `bulkscore score` (in-process) and `bulkscore submit` (the service) share:
which columns of an input file to read, and the result cache. One definition, one help."""

from __future__ import annotations

import typer

TEXT_COLUMN = typer.Option(
    None, "--text-column", help="The column of texts in a .csv/.jsonl/.parquet (text)."
)
ID_COLUMN = typer.Option(
    None, "--id-column", help="The column of ids (id; row numbers where absent)."
)
KEEP_COLUMNS = typer.Option(
    None,
    "--keep-columns",
    help="Input columns (a,b) carried, as text, into every export of the results.",
)
NO_CACHE = typer.Option(
    False,
    "--no-cache",
    help="Score every input afresh: neither read nor fill the result cache.",
)
