"""Training a model and registering it: one code path for ``bulkscore train`` and the workers.

:func:`train_and_register` fits a head on a backbone's features, writes it to SQL as the next
version of its name and completes the training job (and finishes its chunk), in one
transaction. :func:`train_job` is one attempt at a training job whose chunk the caller has
claimed: both drivers reach it through :func:`engine.chunk_work.work_on_chunk` (a worker's
chunk task, and ``bulkscore train`` in-process), under the same lease, attempts and sweeps
as a scoring chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from core.config import Settings
from core.models.registry import ModelSpec, Registry
from core.models.trained import (
    TrainedModel,
    TrainedModelError,
    check_base,
    register_trained_model,
    trained_by_job,
)
from core.tables import jobs
from core.training.data import DataLimits, LabelledExamples, TrainingDataError, parse_upload
from core.training.jobs import TrainingRun, complete_training_job, get_training_run
from engine.runners.base import ModelLoadError, Progress
from engine.runners.heads import head_bytes
from engine.training import train

log = logging.getLogger(__name__)

REGISTER_ATTEMPTS = 3  # two trainings of one name may race for a version number
# A set-up feature extractor of a base, held for one training (the driver's).
BackboneFor = Callable[[ModelSpec], AbstractContextManager[Any]]
# The labelled examples of a training run.
ExamplesFor = Callable[[TrainingRun], LabelledExamples]


class _JobNotRunning(Exception):
    """The job was cancelled (or finished elsewhere) while it trained: register nothing."""


def train_and_register(
    engine: Engine,
    *,
    job_id: str,
    name: str,
    base: ModelSpec,
    examples: LabelledExamples,
    backbone: Any,
    holdout_fraction: float,
    seed: int,
    progress: Progress | None = None,
) -> TrainedModel | None:
    """Train ``name`` on ``base`` and register it as its next version; None if cancelled.

    The version belongs to the training job's owner (its API key; None: the operator), read
    in the registering transaction, where :func:`register_trained_model` refuses a name that
    belongs to another owner.

    Raises:
        TrainingDataError: Too few usable examples of a label, or a single label.
        NameTakenError: ``name`` belongs to another owner (possibly since training began).
    """
    outcome = train(
        backbone, examples, holdout_fraction=holdout_fraction, seed=seed, progress=progress
    )
    fitted = outcome.head
    metrics = {**fitted.metrics, "base": base.name}
    data = head_bytes(
        fitted.weight,
        fitted.bias,
        fitted.labels,
        {
            "name": name,
            "base": base.name,
            "heldout_accuracy": f"{metrics['accuracy']:.4f}",
            "built_by": "bulkscore train",
        },
    )
    for attempt in range(1, REGISTER_ATTEMPTS + 1):
        try:
            with engine.begin() as conn:
                model = register_trained_model(
                    conn,
                    name=name,
                    base=base,
                    labels=fitted.labels,
                    metrics=metrics,
                    head=data,
                    job_id=job_id,
                    owner_key_id=conn.scalar(
                        select(jobs.c.owner_key_id).where(jobs.c.id == job_id)
                    ),
                )
                if not complete_training_job(
                    conn, job_id, model.version, outcome.used, outcome.skipped
                ):
                    raise _JobNotRunning
            return model
        except _JobNotRunning:
            log.info("training job %s was cancelled; %s not registered", job_id, name)
            return None
        except IntegrityError:
            with engine.connect() as conn:
                earlier = trained_by_job(conn, job_id)
            if earlier is not None:  # another delivery of this job registered it first
                return earlier
            if attempt == REGISTER_ATTEMPTS:
                raise
            log.info("version of %s taken by a concurrent training; retrying", name)
    raise AssertionError("unreachable")


# Failures that another attempt would meet again: the job fails at once with the reason.
FINAL_ERRORS = (TrainingDataError, TrainedModelError, ModelLoadError)


def stored_examples(settings: Settings) -> ExamplesFor:
    """The examples of a run from its stored upload (what jobs of the service train on)."""

    def read(run: TrainingRun) -> LabelledExamples:
        if run.data is None:
            raise TrainingDataError("the job holds no data to train on")
        return parse_upload(run.data, run.data_format, DataLimits.from_settings(settings))

    return read


def train_job(
    engine: Engine,
    settings: Settings,
    job_id: str,
    backbone_for: BackboneFor,
    examples_for: ExamplesFor | None = None,
    progress: Progress | None = None,
) -> TrainedModel | None:
    """Train the model of claimed training job ``job_id`` and register it; None if cancelled.

    The caller holds the job's chunk (:func:`engine.chunk_work.work_on_chunk`): this is the
    work of one attempt. ``examples_for`` reads the run's examples (default: its stored
    upload; ``bulkscore train`` reads its local files).

    Raises:
        TrainingDataError, TrainedModelError, ModelLoadError: (:data:`FINAL_ERRORS`) the
            job cannot succeed: unusable data, a base that is no feature extractor, a name
            of another owner, a base that does not load.
        Exception: Anything else fails this attempt only.
    """
    with engine.connect() as conn:
        run = get_training_run(conn, job_id)
    if run is None:
        raise TrainingDataError(f"job {job_id} is no training job")
    base = check_base(Registry.load(settings.models), run.base)
    examples = (examples_for or stored_examples(settings))(run)
    with backbone_for(base) as backbone:
        return train_and_register(
            engine,
            job_id=job_id,
            name=run.name,
            base=base,
            examples=examples,
            backbone=backbone,
            holdout_fraction=run.holdout_fraction,
            seed=run.seed,
            progress=progress,
        )
