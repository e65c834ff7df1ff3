"""``bulkscore train``: its options; the work is in :mod:`cli.train_run`."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.console import JSON_HELP
from core.training.defaults import DEFAULT_HOLDOUT_FRACTION, DEFAULT_SEED


def train(
    name: str = typer.Argument(
        ..., help="The new model's name; training an existing trained name adds a version."
    ),
    base: str = typer.Option(
        "minilm", "--base", "-b", help="The backbone, a model of the models file."
    ),
    data: Path = typer.Option(
        ...,
        "--data",
        "-d",
        help="Text bases: a .csv with text,label columns. Image bases: a folder with one "
        "sub-folder of images per label (or a .zip of such folders).",
    ),
    holdout: float = typer.Option(
        DEFAULT_HOLDOUT_FRACTION,
        "--holdout",
        min=0.05,
        max=0.5,
        help="Share of each label held out to evaluate the head (the head stored is then "
        "refitted on every example).",
    ),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Seed of the hold-out split."),
    device: str = typer.Option("cpu", help="Device of the backbone: cpu, cuda, cuda:1, ..."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Train NAME: a logistic-regression head on BASE's frozen features.

    The head is evaluated on a stratified hold-out, refitted on every example, and
    registered in the database as NAME's next version (v1, v2, ...).

    Exit status 2 for unusable data (one label, fewer than 5 examples of a label, a
    malformed file), an unknown base or a name of the models file.
    """
    # Deferred: SQL, the engine and the settings load when the command runs, not for
    # `bulkscore --help`.
    from cli.train_run import run_train

    run_train(name, base, data, holdout, seed, device, as_json)
