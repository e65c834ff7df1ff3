"""Defaults of a training run, apart so that the CLI's options show them cheaply."""

from __future__ import annotations

DEFAULT_HOLDOUT_FRACTION = 0.2  # share of each label held out to evaluate the head
DEFAULT_SEED = 0  # seed of the hold-out split
