"""The Keras image runner with tiny ResNet50-contract models built here (never downloaded)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from image_support import build_tiny_keras_model, catalogue, encode, photo

from core.config import Settings
from core.models.registry import ModelSpec
from engine.runners import ModelLoadError, build_runner
from engine.runners.keras_image import KerasImageRunner, imagenet_labels, labels_path

SHIPPED_INDEX = (
    Path(__file__).resolve().parents[2] / "core" / "models" / "data" / "imagenet_class_index.json"
)
# The md5 Keras' decode_predictions checks its downloaded imagenet_class_index.json against.
KERAS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"


def spec_for(source: str, **extra: object) -> ModelSpec:
    fields: dict[str, object] = {
        "name": "tiny-keras",
        "task": "image-classification",
        "backend": "keras",
        "source": source,
        "max_batch_size": 4,
    }
    fields.update(extra)
    return ModelSpec(**fields)  # type: ignore[arg-type]


def settings(**overrides: object) -> Settings:
    return Settings(image_decode_threads=2, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def imagenet_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_keras_model(tmp_path_factory.mktemp("keras") / "tiny.keras")


@pytest.fixture(scope="module")
def runner(imagenet_model: Path) -> Iterator[KerasImageRunner]:
    built = build_runner(spec_for(str(imagenet_model)), settings())
    assert isinstance(built, KerasImageRunner)
    built.setup("cpu")
    yield built
    built.close()


def test_the_shipped_class_index_is_the_file_keras_downloads() -> None:
    raw = SHIPPED_INDEX.read_bytes()
    assert hashlib.md5(raw).hexdigest() == KERAS_INDEX_MD5
    index = json.loads(raw)
    assert len(index) == 1000
    assert index["0"] == ["n01440764", "tench"] and index["1"][1] == "goldfish"
    assert index["3"][1] == "tiger_shark" and index["292"][1] == "tiger"
    labels = imagenet_labels()
    assert len(labels) == 1000 and labels[292] == "tiger"


def test_every_image_gets_a_prediction_in_order_and_bad_ones_an_error(
    runner: KerasImageRunner,
) -> None:
    cases = catalogue()
    progress: list[int] = []
    predictions = runner.predict([case.data for case in cases], progress=progress.append)
    assert len(predictions) == len(cases)
    assert sum(progress) == len(cases)
    for case, prediction in zip(cases, predictions, strict=True):
        if case.error is not None:
            assert not prediction.ok and case.error in (prediction.error or ""), case.name
        else:
            assert prediction.ok, (case.name, prediction.error)
            assert prediction.label in imagenet_labels()
            assert len(prediction.top_k) == 5
            assert prediction.top_k[0] == (prediction.label, prediction.score)
            scores = [score for _, score in prediction.top_k]
            assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


def test_results_do_not_depend_on_batch_composition(runner: KerasImageRunner) -> None:
    images = [encode(photo(120, 90, seed=i), "PNG") for i in range(6)]
    together = runner.predict(images)
    alone = [runner.predict([image])[0] for image in images]
    for a, b in zip(together, alone, strict=True):
        assert a.label == b.label and a.score == pytest.approx(b.score, rel=1e-4)


def test_preprocessing_matches_keras_resnet50(runner: KerasImageRunner) -> None:
    from keras.applications.resnet50 import preprocess_input

    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    ours = runner.preprocess(images)
    np.testing.assert_allclose(ours, preprocess_input(images.astype(np.float32)), atol=1e-5)
    # Caffe style, written out: RGB -> BGR, then the ImageNet BGR means subtracted.
    expected = images[..., ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68])
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_labels_match_keras_decode_predictions_offline(
    runner: KerasImageRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keras.applications.resnet50 import decode_predictions
    from keras.src.applications import imagenet_utils
    from keras.src.backend import config as keras_config

    # Keras' cache in a temp dir holding our copy of the index: decode_predictions checks
    # it against its md5 and would download (and fail, offline) on any difference.
    (tmp_path / "models").mkdir()
    shutil.copy(SHIPPED_INDEX, tmp_path / "models" / "imagenet_class_index.json")
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    monkeypatch.setattr(imagenet_utils, "CLASS_INDEX", None)

    images = [encode(photo(100, 80, seed=i), "PNG") for i in range(3)]
    arrays = np.stack([runner.decode(image) for image in images])
    keras_top5 = decode_predictions(runner.probabilities(arrays), top=5)
    for prediction, expected in zip(runner.predict(images), keras_top5, strict=True):
        assert [label for label, _ in prediction.top_k] == [name for _, name, _ in expected]
        assert [s for _, s in prediction.top_k] == pytest.approx([s for *_, s in expected])


def test_a_labels_file_and_logits(tmp_path: Path) -> None:
    model = build_tiny_keras_model(tmp_path / "pets.keras", classes=3, softmax=False)
    sidecar = {"labels": ["cat", "dog", "fish"], "preprocess": "tf"}
    labels_path(model).write_text(json.dumps(sidecar))
    runner = KerasImageRunner(spec_for(str(model), top_k=2), settings())
    runner.setup("cpu")
    assert runner.labels == ["cat", "dog", "fish"] and runner.preprocess_mode == "tf"
    assert not runner.outputs_probabilities
    [prediction] = runner.predict([encode(photo(), "JPEG")])
    assert prediction.label in ("cat", "dog", "fish") and len(prediction.top_k) == 2
    # Softmax applied to the logits: three probabilities summing to 1.
    probabilities = runner.probabilities(np.stack([runner.decode(encode(photo(), "PNG"))]))
    assert probabilities.sum() == pytest.approx(1.0, rel=1e-5)
    runner.close()


def test_without_a_labels_file_a_small_model_gets_class_numbers(tmp_path: Path) -> None:
    model = build_tiny_keras_model(tmp_path / "plain.keras", classes=4)
    runner = KerasImageRunner(spec_for(str(model)), settings())
    runner.setup("cpu")
    assert runner.labels == ["0", "1", "2", "3"]
    runner.close()


def test_a_wrong_labels_file_is_a_load_error(tmp_path: Path) -> None:
    model = build_tiny_keras_model(tmp_path / "pets.keras", classes=3)
    labels_path(model).write_text(json.dumps(["cat", "dog"]))
    with pytest.raises(ModelLoadError, match="2 labels for 3 outputs"):
        KerasImageRunner(spec_for(str(model)), settings()).setup("cpu")


def test_the_pixel_limit_setting_reaches_the_runner(imagenet_model: Path) -> None:
    runner = KerasImageRunner(spec_for(str(imagenet_model)), settings(max_image_pixels=100))
    runner.setup("cpu")
    small, large = encode(photo(10, 10), "PNG"), encode(photo(20, 10), "PNG")
    ok, refused = runner.predict([small, large])
    assert ok.ok and not refused.ok and "limit is 100" in (refused.error or "")
    runner.close()


def test_offline_imagenet_download_gives_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    def offline(**_: object) -> None:
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: no network")

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    runner = KerasImageRunner(spec_for("keras:ResNet50/imagenet"), settings())
    with pytest.raises(ModelLoadError) as caught:
        runner.setup("cpu")
    message = str(caught.value)
    assert "offline" in message and ".keras" in message and "source" in message


@pytest.mark.parametrize(
    "source, message",
    [
        ("keras:VGG16/imagenet", "unknown Keras source"),
        ("keras:ResNet50/cifar", "unknown Keras source"),
        ("/nowhere/model.keras", "does not exist"),
        ("some/hub-id", "neither keras"),
    ],
)
def test_bad_sources_are_load_errors(source: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        KerasImageRunner(spec_for(source), settings()).setup("cpu")


def test_a_missing_gpu_is_a_load_error(imagenet_model: Path) -> None:
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError, match="GPU"):
        KerasImageRunner(spec_for(str(imagenet_model)), settings()).setup("cuda:0")


def test_labels_path_next_to_the_model() -> None:
    assert labels_path(Path("/m/pets.keras")) == Path("/m/pets.labels.json")
    assert labels_path(Path("/m/r50.weights.h5")) == Path("/m/r50.labels.json")
    assert labels_path(Path("/m/r50.h5")) == Path("/m/r50.labels.json")
