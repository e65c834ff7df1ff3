"""The one function that turns a job's items into rows of the results table.

``bulkscore score`` (in-process) and the Celery chunk task both call :func:`score_items`;
only the driver differs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from core.items import InputItem
from core.predictions import Prediction
from core.results import ScoredItem, WriteOutcome, scored_indexes, write_results
from worker.runners.base import Progress, Runner

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ScoreTotals:
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0  # already had a result row (a re-run): counted, not written again

    def add(self, outcome: WriteOutcome, attempted: int) -> None:
        self.succeeded += outcome.succeeded
        self.failed += outcome.failed
        self.skipped += attempted - outcome.written


def runner_input(item: InputItem) -> object:
    """What the runner gets for an item: its text, or its raw bytes for images."""
    return item.text if item.text is not None else item.data


def predict_isolating_failures(
    runner: Runner, inputs: Sequence[object], progress: Progress | None = None
) -> list[Prediction]:
    """``runner.predict``, but an exception costs only the inputs that cause it.

    On a failing batch, each input is retried alone, so one bad input becomes one per-item
    error and the rest of the batch is still scored.
    """
    try:
        predictions = runner.predict(inputs, progress=progress)
        if len(predictions) != len(inputs):
            raise RuntimeError(
                f"runner returned {len(predictions)} results for {len(inputs)} inputs"
            )
        return predictions
    except Exception:
        log.exception("batch of %d failed in %s; retrying one by one", len(inputs), runner.name)
    predictions = []
    for value in inputs:
        try:
            predictions.extend(runner.predict([value]))
        except Exception as exc:  # a per-item error, recorded with its reason
            predictions.append(Prediction.failure(f"{type(exc).__name__}: {exc}"[:2000]))
        if progress is not None:
            progress(1)
    return predictions


def score_items(
    engine: Engine,
    job_id: str,
    runner: Runner,
    indexed_items: Sequence[tuple[int, InputItem]],
    *,
    write_batch_size: int = 512,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ScoreTotals:
    """Score ``indexed_items`` of job ``job_id`` and write their results, batch by batch.

    Items that already have a result row are skipped (a re-run writes nothing twice; the
    unique key makes that hold even when two runs race). Items refused at intake become
    per-item error rows without reaching the model.
    """
    totals = ScoreTotals()
    if indexed_items:
        first, last = indexed_items[0][0], indexed_items[-1][0]
        with engine.connect() as conn:
            done = scored_indexes(conn, job_id, first, last + 1)
        if done:
            totals.skipped += sum(1 for index, _ in indexed_items if index in done)
            if progress is not None:
                progress(totals.skipped)
            indexed_items = [pair for pair in indexed_items if pair[0] not in done]
    for start in range(0, len(indexed_items), write_batch_size):
        if should_stop is not None and should_stop():
            break
        window = indexed_items[start : start + write_batch_size]
        usable = [(index, item) for index, item in window if item.error is None]
        predictions = predict_isolating_failures(
            runner, [runner_input(item) for _, item in usable], progress
        )
        by_index = {index: pred for (index, _), pred in zip(usable, predictions, strict=True)}
        scored = []
        for index, item in window:
            prediction = by_index.get(index) or Prediction.failure(item.error or "not scored")
            scored.append(ScoredItem(index=index, item_id=item.item_id, prediction=prediction))
        refused = len(window) - len(usable)
        if progress is not None and refused:
            progress(refused)
        with engine.begin() as conn:
            outcome = write_results(conn, job_id, runner.name, runner.revision, scored)
        totals.add(outcome, len(scored))
    return totals
