"""Training a model and registering it: one code path for ``bulkscore train`` and the workers.

:func:`train_and_register` fits a head on a backbone's features, writes it to SQL as the next
version of its name and completes the training job, in one transaction. ``bulkscore train``
calls it in-process; the Celery task (``worker.training_task``) calls it through
:func:`run_training_job`, which claims the job and reads its stored upload first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from core.config import Settings
from core.jobs.lifecycle import mark_failed
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
from core.training.jobs import claim_training_job, complete_training_job, get_training_run
from engine.runners.base import ModelLoadError, Progress
from engine.runners.heads import head_bytes
from engine.training import train

log = logging.getLogger(__name__)

REGISTER_ATTEMPTS = 3  # two trainings of one name may race for a version number
BackboneFor = Callable[[ModelSpec], AbstractContextManager[Any]]


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


@dataclass(frozen=True, slots=True)
class TrainingReport:
    """What one delivery of a training task did."""

    outcome: str  # completed, failed, cancelled, skipped
    detail: str = ""
    model: TrainedModel | None = None


def run_training_job(
    engine: Engine,
    settings: Settings,
    registry: Registry,
    job_id: str,
    backbone_for: BackboneFor,
    progress: Progress | None = None,
) -> TrainingReport:
    """Claim training job ``job_id``, train it from its stored upload, register the model.

    Errors before the claim (the database unreachable) propagate, for the task to retry.
    After it, every error fails the job with its message: training the same data again
    would fail the same way.
    """
    with engine.begin() as conn:
        run = get_training_run(conn, job_id)
        if run is None:
            return TrainingReport("skipped", "no such training job")
        if not claim_training_job(conn, job_id):
            return TrainingReport("skipped", "the job is already final")
    try:
        base = check_base(registry, run.base)
        if run.data is None:
            raise TrainingDataError("the job holds no data to train on")
        examples = parse_upload(run.data, run.data_format, DataLimits.from_settings(settings))
        with backbone_for(base) as backbone:
            model = train_and_register(
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
    except (TrainingDataError, TrainedModelError, ModelLoadError) as exc:
        return _fail(engine, job_id, str(exc))
    except Exception as exc:
        log.exception("training job %s failed", job_id)
        return _fail(engine, job_id, f"{type(exc).__name__}: {exc}")
    if model is None:
        return TrainingReport("cancelled", "the job was cancelled while it trained")
    accuracy = model.accuracy or 0.0
    return TrainingReport(
        "completed", f"{model.name} {model.revision}, held-out accuracy {accuracy:.3f}", model
    )


def _fail(engine: Engine, job_id: str, reason: str) -> TrainingReport:
    with engine.begin() as conn:
        mark_failed(conn, job_id, reason)
    return TrainingReport("failed", reason)
