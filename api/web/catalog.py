"""The models a key may name, as rows for the models and submit pages."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from api.training_schemas import CatalogModelOut
from core.config import Settings
from core.models.registry import Registry, RegistryError
from core.models.trained import list_trained


def catalog_rows(conn: Connection, settings: Settings, key_id: int) -> list[dict[str, Any]]:
    """Every model ``key_id`` may name (as ``GET /v1/models`` lists them), by name.

    An unreadable models file shows only the trained models, rather than no page.
    """
    try:
        registry = Registry.load(settings.models)
        specs = registry.models
    except RegistryError:
        specs = {}
    listed = {
        name: {**CatalogModelOut.from_spec(spec).model_dump(), "precision": spec.precision}
        for name, spec in specs.items()
    }
    for model in list_trained(conn, visible_to=key_id):
        base = specs.get(model.base)
        row = CatalogModelOut.from_trained(model, base).model_dump()
        # A trained head runs on its base's features, at the base's precision.
        listed.setdefault(model.name, {**row, "precision": base.precision if base else ""})
    return [listed[name] for name in sorted(listed)]
