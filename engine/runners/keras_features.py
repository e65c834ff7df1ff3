"""Image features from a Keras backbone: the pooled layer under the classifier, batched.

The frozen feature extractor for heads trained on image models (``bulkscore train --base
resnet50``). ``source`` takes the forms the Keras image runner takes:

- ``keras:ResNet50/imagenet`` (also 101, 152): ``ResNet50(include_top=False,
  pooling="avg")`` with ImageNet weights (2048-d);
- a ``.keras`` file: with ``task = "feature-extraction"`` its output *is* the features; an
  image classifier is cut below its top, at its last global pooling (or flatten) layer;
- a ``.h5`` ResNet50 weights file: ResNet50 with those weights, cut at ``avg_pool``.

A spatial output (``N x H x W x C``) is average-pooled. Images are decoded with
:func:`core.inputs.image_decode.decode_image` and preprocessed exactly as the Keras image runner
does, in the decode pool of :mod:`engine.runners.image_pipeline`, so a photo gives the same
pixels whether it is classified, trained on or scored by a trained head.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.config import Settings, get_settings
from core.inputs.image_decode import decode_image
from core.jobs.predictions import Prediction
from core.models.registry import ModelSpec, Task
from engine.runners.base import ModelLoadError, Progress, Runner
from engine.runners.image_pipeline import DecodePool, image_features
from engine.runners.keras_image import (
    KERAS_PREFIX,
    PREPROCESS_MODES,
    WEIGHTS_SUFFIXES,
    keras_application,
    keras_model_file,
    labels_path,
    preprocess_images,
    square_input_size,
)
from engine.threads import configure_tensorflow_threads

log = logging.getLogger(__name__)
DEVICE_PATTERN = re.compile(r"^(cpu|cuda|gpu)(?::(\d+))?$")
POOLING_LAYERS = ("GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten")

Features = tuple[np.ndarray, list[str | None]]


class KerasFeatureRunner(Runner):
    """A frozen Keras image backbone: ``features(images)`` -> one vector per image."""

    def __init__(self, spec: ModelSpec, settings: Settings | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.revision = spec.revision
        self.settings = settings or get_settings()
        self.max_batch_size = spec.batch_size(self.settings)
        self.image_size = spec.image_size
        self.preprocess_mode = "caffe"
        self.dim = 0
        self.model: Any = None
        self.pool: DecodePool | None = None
        self._forward: Callable[[np.ndarray], np.ndarray] | None = None

    # -- setup -------------------------------------------------------------------------
    def setup(self, device: str = "cpu") -> None:
        """Load the backbone once, trace its forward pass and warm it up."""
        import tensorflow as tf

        configure_tensorflow_threads(tf, self.settings)  # before any op (see keras_image)
        tf_device = _tf_device(tf, device)
        on_cpu = tf_device.startswith("/CPU")
        self.max_batch_size = self.spec.batch_size(self.settings, "cpu" if on_cpu else "cuda")
        with tf.device(tf_device):
            self.model = self._load_model()
        self.image_size = square_input_size(self.model, self.spec)
        self.dim = int(self.model.output_shape[-1])
        model = self.model
        size = self.image_size

        # One graph for any batch size: training and scoring both see ragged last batches.
        @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])
        def graph(x: Any) -> Any:
            return model(x, training=False)

        def forward(batch: np.ndarray) -> np.ndarray:
            with tf.device(tf_device):
                return np.asarray(graph(tf.convert_to_tensor(batch)), dtype=np.float32)

        self._forward = forward
        self.pool = DecodePool(self.settings.image_decode_threads)
        forward(np.zeros((1, size, size, 3), np.float32))  # trace now, not on a real batch

    def _load_model(self) -> Any:
        import keras

        if self.spec.source.startswith(KERAS_PREFIX):
            return keras_application(self.spec, include_top=False, pooling="avg")
        path = keras_model_file(self.spec)
        try:
            if path.name.endswith(".keras"):
                self._read_preprocess_mode(path)
                loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
                cut = self.spec.task != Task.FEATURE_EXTRACTION
                return _pooled(keras, loaded, cut_top=cut)
            if path.name.endswith(WEIGHTS_SUFFIXES):
                full = keras.applications.ResNet50(weights=str(path))
                return _pooled(keras, full, cut_top=True)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"model {self.name!r}: cannot load {path}: {exc}") from exc
        raise ModelLoadError(
            f"model {self.name!r}: {path.name} is not a .keras model or a .h5 weights file"
        )

    def _read_preprocess_mode(self, path: Path) -> None:
        # The image runner's sidecar (<model>.labels.json) may name the preprocessing.
        sidecar = labels_path(path)
        if not sidecar.is_file():
            return
        try:
            raw = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"model {self.name!r}: cannot read {sidecar}: {exc}") from exc
        mode = raw.get("preprocess", "caffe") if isinstance(raw, dict) else "caffe"
        if mode not in PREPROCESS_MODES:
            raise ModelLoadError(f"model {self.name!r}: {sidecar}: unknown preprocess {mode!r}")
        self.preprocess_mode = mode

    # -- inference -----------------------------------------------------------------------
    def decode(self, data: bytes) -> np.ndarray:
        """One image's bytes as the uint8 ``size x size x 3`` RGB array the backbone takes."""
        return decode_image(
            data, self.image_size, fit="exact", max_pixels=self.settings.max_image_pixels
        )

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB images -> the backbone's float input (ResNet50: BGR, mean subtracted)."""
        return preprocess_images(images, self.preprocess_mode)

    def features(self, batch: Sequence[Any], progress: Progress | None = None) -> Features:
        """``(vectors, errors)``: a row per image, and per image None or why it failed.

        The row of an image that cannot be decoded is zeros; its error says why.
        """
        if self.pool is None or self._forward is None:
            raise RuntimeError(f"model {self.name!r}: call setup() before features()")
        forward = self._forward
        return image_features(
            self.pool,
            batch,
            max_batch_size=self.max_batch_size,
            decode=self.decode,
            forward=lambda images: forward(self.preprocess(images)),
            dim=self.dim,
            progress=progress,
        )

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        raise ValueError(
            f"model {self.name!r} is a feature extractor with no labels; train a head on it "
            "(bulkscore train NAME --base ...) and score with that"
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def _pooled(keras: Any, model: Any, cut_top: bool) -> Any:
    """``model`` as a ``(N, features)`` extractor: below its classifier, globally pooled."""
    output = model.output
    if cut_top:
        pooling = [layer for layer in model.layers if type(layer).__name__ in POOLING_LAYERS]
        # The last pooling layer feeds the classifier (ResNet50's avg_pool); without one,
        # the layer under the top one.
        output = pooling[-1].output if pooling else model.layers[-2].output
    if len(output.shape) == 4:
        output = keras.layers.GlobalAveragePooling2D()(output)
    if len(output.shape) != 2:
        raise ModelLoadError(f"a {tuple(output.shape)} output cannot be used as features")
    return keras.Model(model.inputs, output)


def _tf_device(tf: Any, device: str) -> str:
    """A torch-style device (``cpu``, ``cuda``, ``cuda:1``) as a TensorFlow device name."""
    match = DEVICE_PATTERN.match(device.strip().lower())
    if match is None:
        raise ModelLoadError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if match.group(1) == "cpu":
        return "/CPU:0"
    index = int(match.group(2) or 0)
    gpus = tf.config.list_physical_devices("GPU")
    if index >= len(gpus):
        raise ModelLoadError(f"device {device!r} requested, but TensorFlow sees {len(gpus)} GPU(s)")
    for gpu in gpus:  # share the card with torch runners instead of mapping all of it
        # RuntimeError: the GPU was initialised already (another model in this process).
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    return f"/GPU:{index}"
