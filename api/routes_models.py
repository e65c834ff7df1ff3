"""``/v1/models``: the models jobs may name."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from api.deps import CurrentKey, SettingsDep
from api.schemas import ModelList, ModelOut
from core.registry import Registry, RegistryError

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
def models(_key_id: CurrentKey, settings: SettingsDep) -> ModelList:
    """Every registered model, by name."""
    try:
        registry = Registry.load(settings.models)
    except RegistryError as exc:
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="the server's models file cannot be read; ask its operator",
        ) from exc
    return ModelList(
        data=[
            ModelOut(
                name=spec.name,
                task=spec.task.value,
                backend=spec.backend.value,
                source=spec.source,
                revision=spec.revision,
                input_kind=spec.input_kind.value,
                description=spec.description,
            )
            for spec in (registry.models[name] for name in registry.names)
        ]
    )
