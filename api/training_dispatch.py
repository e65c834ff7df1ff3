"""Sending training tasks (``bulkscore.train_model``) to the base model's queue.

Like chunk tasks, by name only (the API never imports the worker), with the producer's
fail-fast settings of :mod:`api.dispatch`; the Celery app of the API's chunk queue is
shared when there is one.
"""

from __future__ import annotations

from typing import Any, Protocol

from celery import Celery

from api.dispatch import PUBLISH_RETRY_POLICY, BrokerUnavailable, CeleryJobQueue, producer_settings
from core.config import Settings
from core.queues import TRAIN_MODEL_TASK, model_queue


class TrainingQueue(Protocol):
    """What the API needs to start a training (a fake replaces it in unit tests)."""

    def enqueue_training(self, job_id: str, base: str) -> None:
        """Send the training task; raise :class:`BrokerUnavailable` if that fails."""

    def close(self) -> None:
        """Release what this queue opened."""


class CeleryTrainingQueue:
    """Publishes ``bulkscore.train_model`` to ``bulkscore.model.<base>``."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self._settings = settings
        self._app = app
        self._owns_app = app is None

    @property
    def app(self) -> Celery:
        if self._app is None:  # built on first use: most API processes never train
            self._app = Celery("bulkscore-api-training", set_as_current=False)
            self._app.conf.update(producer_settings(self._settings))
        return self._app

    def enqueue_training(self, job_id: str, base: str) -> None:
        try:
            self.app.send_task(
                TRAIN_MODEL_TASK,
                args=[job_id],
                queue=model_queue(base),
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
            )
        except Exception as exc:  # kombu and redis-py raise their own errors
            raise BrokerUnavailable(str(exc)) from exc

    def close(self) -> None:
        if self._owns_app and self._app is not None:
            self._app.close()


def training_queue_for(job_queue: Any, settings: Settings) -> TrainingQueue:
    """The training queue that goes with the API's chunk queue.

    A queue that can send training tasks itself (a test's fake) is used as it is; the
    Celery chunk queue lends its producer app.
    """
    if callable(getattr(job_queue, "enqueue_training", None)):
        return job_queue  # type: ignore[no-any-return]
    app = job_queue.app if isinstance(job_queue, CeleryJobQueue) else None
    return CeleryTrainingQueue(settings, app)
