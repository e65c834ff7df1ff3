"""The training task: ``bulkscore.train_model(job_id)``, sent to the base model's queue.

So a worker that serves ``minilm`` trains the heads over ``minilm``: it uses its own warm
runner when the base is a feature extractor (``task = "feature-extraction"``), or otherwise
builds the base's feature extractor once (e.g. ResNet50 without its top, for heads over the
``resnet50`` classifier) and keeps it for later trainings. Only the job id travels through
Redis; the data and the result live in SQL (:mod:`engine.trainer`).

A training task runs in the worker's pool like a chunk: with ``--concurrency 1`` the worker
scores no chunk while it trains.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Task

from core.config import Settings, get_settings
from core.db import get_engine
from core.models.catalog import load_registry
from core.models.registry import ModelSpec
from core.models.registry import Task as ModelTask
from core.queues import TRAIN_MODEL_TASK
from engine.runners.head_runner import build_backbone
from engine.trainer import run_training_job
from worker import warm
from worker.celery_app import app
from worker.health import HEARTBEAT

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
    """Train the model of training job ``job_id`` and register its new version."""
    settings = get_settings()
    engine = get_engine(settings.database_url)
    try:
        registry = load_registry(settings)
        report = run_training_job(
            engine,
            settings,
            registry,
            job_id,
            lambda base: training_backbone(base, settings),
            progress=lambda _count: HEARTBEAT.touch(),
        )
    except Exception as exc:
        # Before the job was claimed (database or models file unreachable): retry, bounded.
        countdown = int(min(2**self.request.retries, MAX_BACKOFF_S))
        log.warning("training job %s: %s; retrying in %ds", job_id, exc, countdown)
        raise self.retry(exc=exc, countdown=countdown, max_retries=INFRA_RETRIES) from exc
    detail = f": {report.detail}" if report.detail else ""
    log.info("training job %s %s by %s%s", job_id, report.outcome, self.request.hostname, detail)
