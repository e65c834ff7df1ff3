"""``/v1/models``: the models jobs may name."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ConnDep, CurrentKey, SettingsDep
from api.submission import models_file_unreadable
from api.training_schemas import CatalogList, CatalogModelOut
from core.models.registry import Registry, RegistryError
from core.models.trained import list_trained

router = APIRouter(prefix="/v1/models", tags=["models"])


# exclude_unset: the trained-model fields (version, base, accuracy, labels) appear on
# trained models only, so a models-file model reads as it always did.
@router.get(
    "",
    response_model=CatalogList,
    response_model_exclude_unset=True,
    operation_id="list_models",
    responses={503: {"description": "The server's models file cannot be read."}},
)
def models(key_id: CurrentKey, settings: SettingsDep, conn: ConnDep) -> CatalogList:
    """Every model the caller may name, by name: the models file's and the trained ones
    (latest version, with its held-out accuracy) of the caller's key and the operator."""
    try:
        registry = Registry.load(settings.models)
    except RegistryError as exc:
        raise models_file_unreadable() from exc
    listed = {name: CatalogModelOut.from_spec(spec) for name, spec in registry.models.items()}
    for model in list_trained(conn, visible_to=key_id):
        # A models-file entry of the same name wins, as it does when a job names it.
        listed.setdefault(
            model.name, CatalogModelOut.from_trained(model, registry.models.get(model.base))
        )
    return CatalogList(data=[listed[name] for name in sorted(listed)])
