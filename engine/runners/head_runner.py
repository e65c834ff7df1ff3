"""A trained model as a runner: a frozen backbone's features through a stored linear head.

``build_runner`` gives a :class:`HeadRunner` for a :class:`core.models.trained.TrainedSpec`.
It wraps the backbone's own batched runner (the text runner's mean-pooled embeddings, or
for images :class:`engine.runners.keras_features.KerasFeatureRunner` or
:class:`engine.runners.efficientnet_lite.EfficientNetLiteRunner`), built from the base's
spec, and applies the head read from the spec's bytes: ``softmax(features @ W.T + b)``. The
head never touches disk, so every worker loads a version straight from SQL.

The head's format and its one reader are :mod:`engine.runners.heads`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from core.config import Settings, get_settings
from core.jobs.predictions import Prediction
from core.models.registry import Backend, ModelSpec, Task
from core.models.trained import TrainedSpec
from engine.runners.activations import softmax
from engine.runners.base import ModelLoadError, Progress, Runner, top_k_pairs
from engine.runners.heads import read_head

log = logging.getLogger(__name__)


def feature_spec(base: ModelSpec) -> ModelSpec:
    """``base`` as a frozen feature extractor (its classifier top, or head, left out)."""
    return base.model_copy(update={"task": Task.FEATURE_EXTRACTION, "head": None})


def build_backbone(base: ModelSpec, settings: Settings | None = None) -> Runner:
    """An un-set-up feature runner for ``base`` (text embeddings or pooled image features)."""
    spec = feature_spec(base)
    if base.backend == Backend.KERAS:
        # Deferred: TensorFlow, for Keras bases only.
        from engine.runners.keras_features import KerasFeatureRunner

        return KerasFeatureRunner(spec, settings)
    if base.backend == Backend.EFFICIENTNET_LITE:
        # Deferred: torch and ONNX Runtime, for imagenet-lite bases only.
        from engine.runners.efficientnet_lite import EfficientNetLiteRunner

        return EfficientNetLiteRunner(spec, settings)
    if base.backend == Backend.TRANSFORMERS and base.task != Task.IMAGE_CLASSIFICATION:
        # Deferred: transformers, for text bases only.
        from engine.runners.transformers_text import TransformersTextRunner

        return TransformersTextRunner(spec, settings)
    raise ModelLoadError(
        f"model {base.name!r} ({base.backend.value}, {base.task.value}) cannot be a backbone"
    )


def extract_features(
    backbone: Any, inputs: Sequence[Any], progress: Progress | None = None
) -> tuple[np.ndarray, list[str | None]]:
    """``(vectors, errors)`` of ``inputs`` from a backbone runner, one row per input.

    Image backbones report per-input errors (an undecodable file); text inputs were checked
    at intake, so the text runner's ``embed`` has none.
    """
    if not inputs:
        return np.zeros((0, 0), dtype=np.float32), []
    features = getattr(backbone, "features", None)
    if callable(features):
        return cast(tuple[np.ndarray, list[str | None]], features(inputs, progress))
    vectors = backbone.embed([str(value) for value in inputs], progress)
    return np.asarray(vectors, dtype=np.float32), [None] * len(inputs)


class HeadRunner(Runner):
    """The runner of a trained model: ``backbone`` features, then the stored head."""

    def __init__(
        self, spec: TrainedSpec, settings: Settings | None = None, backbone: Runner | None = None
    ) -> None:
        self.spec = spec
        self.name = spec.name
        # What results.model_revision records: the version that scored them ("v2").
        self.revision = spec.revision
        self.settings = settings or get_settings()
        self.backbone = backbone or build_backbone(spec.base_spec, self.settings)
        self.labels = list(spec.labels)
        self.weight = np.zeros((0, 0), dtype=np.float32)
        self.bias = np.zeros(0, dtype=np.float32)

    @property
    def cache_revision(self) -> str:
        """The version and a digest of the head: a retrained model (a new version), or a
        name deleted and trained again from version 1, never meets another head's cache."""
        digest = hashlib.sha256(self.spec.head_bytes).hexdigest()[:16]
        return f"{self.revision}+head.{digest}"

    def setup(self, device: str = "cpu") -> None:
        """Read the head (cheap, checked first) and load the backbone once."""
        self.load_head()
        self.backbone.setup(device)
        self.max_batch_size = self.backbone.max_batch_size
        log.info(
            "trained model %s %s: base %s, %d labels, %d-d features",
            self.name,
            self.revision,
            self.spec.base_spec.name,
            len(self.labels),
            self.weight.shape[1],
        )

    def load_head(self) -> None:
        """Read the head from the spec's bytes (``setup`` does; a backbone set up elsewhere
        only needs this)."""
        weight, bias, labels = read_head(self.spec.head_bytes)
        if labels != self.labels:
            raise ModelLoadError(
                f"model {self.name!r} {self.revision}: the head's labels {labels} differ from "
                f"the registered {self.labels}"
            )
        self.weight, self.bias = weight, bias

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """Label probabilities for feature rows."""
        return softmax(vectors @ self.weight.T + self.bias)

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        """One prediction per input, in order; an input the backbone cannot read, an error."""
        if not batch:
            return []
        vectors, errors = extract_features(self.backbone, batch, progress)
        if vectors.shape[1] != self.weight.shape[1]:
            raise ModelLoadError(
                f"model {self.name!r}: the backbone gives {vectors.shape[1]}-d features, the "
                f"head expects {self.weight.shape[1]} (was the base model changed?)"
            )
        probabilities = self.probabilities(vectors)
        k = min(self.spec.top_k, len(self.labels))
        predictions = []
        for row, error in zip(probabilities, errors, strict=True):
            if error is not None:
                predictions.append(Prediction.failure(error))
                continue
            best = top_k_pairs(self.labels, row.tolist(), k)
            predictions.append(Prediction(label=best[0][0], score=best[0][1], top_k=best))
        return predictions

    def close(self) -> None:
        self.backbone.close()
