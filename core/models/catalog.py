"""The models a job may name: the models file's, plus those trained into the database."""

from __future__ import annotations

from core.config import Settings, get_settings
from core.models.registry import Registry
from core.models.trained import SqlTrainedModels


def load_registry(settings: Settings | None = None, *, visible_to: int | None = None) -> Registry:
    """The configured models file's models, plus the models trained into the database.

    Trained models (``bulkscore train``) are read from ``settings.database_url`` only when a
    name is not in the models file, so resolving a file's model never touches SQL. With
    ``visible_to`` (an API key's id) only that key's trained models and the operator's
    resolve; another key's name is as unknown as one never trained.
    """
    settings = settings or get_settings()
    trained = SqlTrainedModels(settings.database_url, visible_to)
    return Registry.load(settings.models).with_trained(trained)
