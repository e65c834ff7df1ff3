"""The worker's training backbone, and the old training task name kept as an alias.

A training job is one chunk sent to its base model's queue (``jobs.runs_on``), so a worker
that serves ``minilm`` trains the heads over ``minilm`` through the chunk task
(:mod:`worker.tasks`, :func:`engine.chunk_work.work_on_chunk`). Its backbone is
:func:`training_backbone`: the worker's own warm runner when the base is a feature extractor
(``task = "feature-extraction"``), or otherwise the base's feature extractor built once (e.g.
ResNet50 without its top, for heads over the ``resnet50`` classifier) and kept for later
trainings. A training runs in the worker's pool like a chunk: with ``--concurrency 1`` the
worker scores no chunk while it trains.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Task

from core.chunks.claim import delivery_state
from core.config import Settings, get_settings
from core.db import get_engine
from core.models.registry import ModelSpec
from core.models.registry import Task as ModelTask
from core.queues import TRAIN_MODEL_TASK, send_chunks
from core.training.jobs import TRAINING_CHUNK
from engine.runners.head_runner import build_backbone
from worker import warm
from worker.celery_app import app

log = logging.getLogger(__name__)

INFRA_RETRIES = 10
MAX_BACKOFF_S = 60

_BACKBONES: dict[str, Any] = {}
_BACKBONE_LOCK = threading.Lock()


@contextmanager
def training_backbone(base: ModelSpec, settings: Settings) -> Iterator[Any]:
    """A set-up feature extractor for ``base``, held for one training.

    The warm runner itself when it is one (never two forward passes at once: it is held
    like a chunk holds it); otherwise one built on first use, on the worker's device.
    """
    loaded = warm.get_runner(base.name)
    if base.task == ModelTask.FEATURE_EXTRACTION and isinstance(loaded, warm.SerializedRunner):
        with loaded.exclusive() as runner:
            yield runner
        return
    with _BACKBONE_LOCK:
        backbone = _BACKBONES.get(base.name)
        if backbone is None:
            log.info("loading %s as a feature extractor for training", base.name)
            backbone = build_backbone(base, settings)
            backbone.setup(warm.device())
            _BACKBONES[base.name] = backbone
        yield backbone


@app.task(name=TRAIN_MODEL_TASK, bind=True, max_retries=None, ignore_result=True)
def train_model(self: Task, job_id: str) -> None:
    """The old training message (before training jobs had a chunk): hand the job's chunk to
    the chunk task, the one path every training now takes.

    A queue deployed before the change may still hold such messages. The chunk message goes
    to the queue the job runs on; the SQL claim makes it harmless if the sweep sends one too.
    """
    settings = get_settings()
    try:
        with get_engine(settings.database_url).connect() as conn:
            state = delivery_state(conn, job_id, TRAINING_CHUNK)
        if state is None or not state.training:
            log.info("old training message for %s: no such training job; dropped", job_id)
            return
        send_chunks(app, job_id, state.runs_on, [TRAINING_CHUNK])
    except Exception as exc:
        countdown = int(min(2**self.request.retries, MAX_BACKOFF_S))
        log.warning("old training message for %s: %s; retrying in %ds", job_id, exc, countdown)
        raise self.retry(exc=exc, countdown=countdown, max_retries=INFRA_RETRIES) from exc
    log.info("old training message for %s handed to chunk %d", job_id, TRAINING_CHUNK)
