"""Image training: a tiny Keras backbone's features, stripes versus dots (built here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from image_support import build_tiny_keras_model, catalogue
from training_support import build_tiny_keras_backbone, stripes_and_dots

from core.clock import utcnow
from core.config import Settings
from core.inputs.items import InputItem
from core.models.registry import InputKind, ModelSpec, Registry, Task
from core.models.trained import TrainedModel, spec_for
from core.training.data import LabelledExamples
from engine.runners import build_runner
from engine.runners.head_runner import HeadRunner
from engine.runners.heads import head_bytes
from engine.runners.keras_features import KerasFeatureRunner
from engine.training import train

SETTINGS = Settings(image_decode_threads=2)


def backbone_spec(path: Path, task: str = "feature-extraction") -> ModelSpec:
    return ModelSpec(
        name="tiny-backbone", task=task, backend="keras", source=str(path), max_batch_size=16
    )  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KerasFeatureRunner]:
    path = build_tiny_keras_backbone(tmp_path_factory.mktemp("backbone") / "tiny.keras")
    runner = build_runner(backbone_spec(path), SETTINGS)
    assert isinstance(runner, KerasFeatureRunner)
    runner.setup("cpu")
    yield runner
    runner.close()


def as_examples(images: list[tuple[str, str, bytes]]) -> LabelledExamples:
    examples = LabelledExamples()
    for label, name, data in images:
        examples.add(InputItem(item_id=name, data=data), label)
    return examples


def test_a_keras_feature_extraction_model_takes_images() -> None:
    spec = backbone_spec(Path("/nowhere.keras"))
    assert spec.task == Task.FEATURE_EXTRACTION and spec.input_kind == InputKind.IMAGE


def test_stripes_and_dots_are_told_apart_on_unseen_images(
    backbone: KerasFeatureRunner,
) -> None:
    outcome = train(
        backbone, as_examples(stripes_and_dots(32, seed=1)), holdout_fraction=0.25, seed=0
    )
    metrics = outcome.head.metrics
    assert outcome.head.labels == ["dots", "stripes"]
    assert metrics["feature_dim"] == backbone.dim == 64
    assert metrics["holdout_size"] == 16 and metrics["accuracy"] >= 0.9

    registry = Registry({"tiny-backbone": backbone.spec})
    model = TrainedModel(
        id=1,
        name="patterns",
        version=3,
        base="tiny-backbone",
        task="image-classification",
        input_kind="image",
        labels=outcome.head.labels,
        metrics=metrics,
        head_sha256="",
        job_id=None,
        created_at=utcnow(),
        head=head_bytes(outcome.head.weight, outcome.head.bias, outcome.head.labels, {}),
    )
    spec = spec_for(model, registry)
    assert spec.input_kind == InputKind.IMAGE and spec.revision == "v3"
    runner = HeadRunner(spec, SETTINGS, backbone=backbone)
    runner.load_head()
    fresh = stripes_and_dots(20, seed=99)  # never seen in training
    corrupt = next(case for case in catalogue() if case.name == "truncated.jpg")
    predictions = runner.predict([data for _, _, data in fresh] + [corrupt.data])
    accuracy = np.mean(
        [p.label == label for p, (label, _, _) in zip(predictions[:-1], fresh, strict=True)]
    )
    print(f"\nstripes vs dots: hold-out {metrics['accuracy']:.3f}, unseen images {accuracy:.3f}")
    assert accuracy >= 0.9
    assert predictions[-1].label is None and "truncated" in (predictions[-1].error or "")


def test_an_image_classifier_is_cut_below_its_top(tmp_path: Path) -> None:
    classifier = build_tiny_keras_model(tmp_path / "classifier.keras", classes=1000)
    runner = KerasFeatureRunner(backbone_spec(classifier, "image-classification"), SETTINGS)
    runner.setup("cpu")
    try:
        # The tiny classifier pools 16 channels before its 1000-way dense layer.
        assert runner.dim == 16
        vectors, errors = runner.features([data for _, _, data in stripes_and_dots(2)])
        assert vectors.shape == (4, 16) and errors == [None] * 4
        with pytest.raises(ValueError, match="feature extractor with no labels"):
            runner.predict([b""])
    finally:
        runner.close()
