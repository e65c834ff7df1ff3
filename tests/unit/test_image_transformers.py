"""The transformers image runner with a tiny random ResNet classifier built here."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from image_support import build_tiny_hf_classifier, catalogue, encode, photo
from PIL import Image

from core.config import Settings
from core.models.registry import ModelSpec
from engine.runners import ModelLoadError, build_runner
from engine.runners.transformers_image import TransformersImageRunner, decode_edge


def spec_for(source: str) -> ModelSpec:
    return ModelSpec(
        name="tiny-vision",
        task="image-classification",  # type: ignore[arg-type]
        backend="transformers",  # type: ignore[arg-type]
        source=source,
        max_batch_size=4,
        top_k=2,
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_hf_classifier(tmp_path_factory.mktemp("tiny-resnet"))


@pytest.fixture(scope="module")
def runner(model_dir: Path) -> Iterator[TransformersImageRunner]:
    built = build_runner(spec_for(str(model_dir)), Settings(image_decode_threads=2))
    assert isinstance(built, TransformersImageRunner)
    built.setup("cpu")
    yield built
    built.close()


def test_the_catalogue_through_the_runner(runner: TransformersImageRunner) -> None:
    cases = catalogue()
    predictions = runner.predict([case.data for case in cases])
    assert len(predictions) == len(cases)
    for case, prediction in zip(cases, predictions, strict=True):
        if case.error is not None:
            assert not prediction.ok and case.error in (prediction.error or ""), case.name
        else:
            assert prediction.ok, (case.name, prediction.error)
            assert prediction.label in ("cat", "dog", "fish") and len(prediction.top_k) == 2


def test_scores_equal_the_transformers_pipeline(
    runner: TransformersImageRunner, model_dir: Path
) -> None:
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(model_dir), device="cpu")
    # Shorter side under the decode edge (256): the processor sees the very same pixels.
    images = [encode(photo(300, 200, seed=i), "PNG") for i in range(3)]
    ours = runner.predict(images)
    for data, prediction in zip(images, ours, strict=True):
        expected = classify(Image.open(io.BytesIO(data)), top_k=2)
        assert [p["label"] for p in expected] == [label for label, _ in prediction.top_k]
        assert [p["score"] for p in expected] == pytest.approx(
            [score for _, score in prediction.top_k], abs=1e-5
        )


def test_large_photos_are_shrunk_to_what_the_processor_starts_from(
    runner: TransformersImageRunner,
) -> None:
    assert runner.edge == 256  # shortest_edge 224 / crop_pct 0.875
    pixels = runner.decode(encode(photo(1600, 1200), "JPEG"))
    assert pixels.shape == (3, 224, 224)


def test_decode_edge_reads_the_common_processor_shapes() -> None:
    class Square:
        size: ClassVar[dict[str, int]] = {"height": 384, "width": 384}

    class Shortest:
        size: ClassVar[dict[str, int]] = {"shortest_edge": 224}
        crop_pct = 0.875

    class Nothing:
        size = None

    assert decode_edge(Square(), 224) == 384
    assert decode_edge(Shortest(), 224) == 256
    assert decode_edge(Nothing(), 224) == 224


def test_a_missing_folder_is_a_load_error(tmp_path: Path) -> None:
    runner = TransformersImageRunner(spec_for(str(tmp_path / "nope")), Settings())
    with pytest.raises(ModelLoadError, match="does not exist"):
        runner.setup("cpu")
