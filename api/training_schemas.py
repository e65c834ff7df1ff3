"""Bodies of the model endpoints that know trained models (``/v1/models``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from api.schemas import ModelOut
from core.models.registry import ModelSpec
from core.models.trained import TrainedModel


class CatalogModelOut(ModelOut):
    """A model jobs may name. The trained-model fields appear for trained models only."""

    version: str | None = Field(
        default=None, description="Trained models: the latest version, e.g. 'v2'."
    )
    base: str | None = Field(default=None, description="Trained models: the backbone model.")
    accuracy: float | None = Field(
        default=None, description="Trained models: accuracy on the held-out examples."
    )
    labels: list[str] | None = Field(default=None, description="Trained models: the labels.")

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> CatalogModelOut:
        return cls(
            name=spec.name,
            task=spec.task.value,
            backend=spec.backend.value,
            source=spec.source,
            revision=spec.revision,
            input_kind=spec.input_kind.value,
            description=spec.description,
        )

    @classmethod
    def from_trained(cls, model: TrainedModel, base: ModelSpec | None) -> CatalogModelOut:
        accuracy = model.accuracy
        return cls(
            name=model.name,
            task=model.task,
            backend=base.backend.value if base is not None else "",
            source=base.source if base is not None else "",
            revision=model.revision,
            input_kind=model.input_kind,
            description=f"trained on {model.base}"
            + ("" if base is not None else " (not in the models file any more)"),
            version=model.revision,
            base=model.base,
            accuracy=accuracy,
            labels=model.labels,
        )


class CatalogList(BaseModel):
    data: list[CatalogModelOut]


class VersionOut(BaseModel):
    """One version of a trained model."""

    version: str
    accuracy: float | None
    created_at: datetime
    job_id: str | None = Field(description="The training job that made it.")


class ModelDetail(CatalogModelOut):
    """A model and, for a trained model, its evaluation and versions."""

    created_at: datetime | None = None
    job_id: str | None = None
    evaluation: dict[str, Any] | None = Field(
        default=None,
        description=(
            "Trained models: accuracy, macro_f1, per_label {precision, recall, f1, support}, "
            "confusion_matrix (rows: true label, columns: predicted, in `labels` order), "
            "train_size, holdout_size, majority_baseline, C, cv_accuracy, skipped, ..."
        ),
    )
    versions: list[VersionOut] | None = Field(
        default=None, description="Trained models: every version, newest first."
    )
