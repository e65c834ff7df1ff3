"""The Celery app of the workers, built from the settings both sides share.

JSON only and no result backend: see ``core.queues.celery_settings``. Importing this module
imports no ML framework, so the worker can pin its GPU after importing it.
"""

from __future__ import annotations

from celery import Celery

from core.config import Settings, get_settings
from core.queues import celery_settings


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured from ``settings`` (the process settings by default)."""
    app = Celery("bulkscore", set_as_current=False)
    app.conf.update(celery_settings(settings or get_settings()))
    return app


app = create_app()
