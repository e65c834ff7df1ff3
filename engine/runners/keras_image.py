"""Image classification with Keras (TensorFlow backend): ResNet50 and local Keras models.

``source`` in the models file is one of:

- ``keras:ResNet50/imagenet`` (also ``ResNet101``, ``ResNet152``): the Keras application
  with its ImageNet weights, downloaded by Keras once into its cache (fails offline: then
  use one of the two file forms below);
- a ``.keras`` file: a whole saved model, loaded with ``safe_mode`` (no Python lambdas);
- a ``.h5`` / ``.weights.h5`` file: ResNet50 ImageNet *weights* (e.g. Keras' own
  ``resnet50_weights_tf_dim_ordering_tf_kernels.h5``), put into the ResNet50 architecture.

Labels: ``<model>.labels.json`` next to the file, if present (a JSON list of names, or
``{"labels": [...], "preprocess": "caffe" | "tf" | "torch" | "none"}``); otherwise the
ImageNet names for a 1000-way output (the index ``decode_predictions`` uses, shipped in
``core/models/data``), otherwise the class numbers ``"0"``, ``"1"``, ... Inputs are preprocessed
as ResNet50 wants (``keras.applications.resnet50.preprocess_input``: RGB to BGR, ImageNet
mean subtracted, "caffe" mode) unless the labels file names another mode.

TensorFlow is imported in :meth:`KerasImageRunner.setup` only, never at import.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.config import Settings, get_settings
from core.inputs.image_decode import decode_image
from core.jobs.predictions import Prediction
from core.models.imagenet import imagenet_labels
from core.models.registry import ModelSpec
from engine.runners.activations import softmax
from engine.runners.base import ModelLoadError, Progress, Runner
from engine.runners.image_pipeline import DecodePool, predict_images
from engine.threads import configure_tensorflow_threads

log = logging.getLogger(__name__)
KERAS_PREFIX = "keras:"
APPLICATIONS = ("ResNet50", "ResNet101", "ResNet152")  # all share the resnet preprocessing
PREPROCESS_MODES = ("caffe", "tf", "torch", "none")
WEIGHTS_SUFFIXES = (".weights.h5", ".h5", ".hdf5")
DEVICE_PATTERN = re.compile(r"^(cpu|cuda|gpu)(?::(\d+))?$")


def offline_message(spec: ModelSpec, reason: object) -> str:
    app = spec.source[len(KERAS_PREFIX) :].partition("/")[0]
    return (
        f"model {spec.name!r}: Keras could not download the ImageNet weights for "
        f"{spec.source!r} (offline? {reason}). On a machine with network, save the model once "
        f"(python -c \"import keras; keras.applications.{app}(weights='imagenet')"
        f".save('{app.lower()}.keras')\"), copy the file here and set "
        f'`source = "/path/to/{app.lower()}.keras"` for [models.{spec.name}] in the models file '
        "(BULKSCORE_MODELS); for ResNet50 the weights file Keras downloads "
        "(resnet50_weights_tf_dim_ordering_tf_kernels.h5) works as the source too."
    )


def labels_path(model_path: Path) -> Path:
    """``<model>.labels.json`` next to a model file (``x.keras`` -> ``x.labels.json``)."""
    name = model_path.name
    for suffix in (".keras", *WEIGHTS_SUFFIXES):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return model_path.with_name(f"{name}.labels.json")


def keras_application(spec: ModelSpec, **options: Any) -> Any:
    """``keras:<Application>/imagenet``: the Keras application with ImageNet weights.

    Raises:
        ModelLoadError: an unknown application or weights name, or the weights could not
            be downloaded (the message says how to bring them in offline).
    """
    import keras

    app, _, weights = spec.source[len(KERAS_PREFIX) :].partition("/")
    if app not in APPLICATIONS or weights != "imagenet":
        raise ModelLoadError(
            f"model {spec.name!r}: unknown Keras source {spec.source!r}; use keras:<"
            f"{'|'.join(APPLICATIONS)}>/imagenet, a .keras file or a .h5 weights file"
        )
    try:
        return getattr(keras.applications, app)(weights="imagenet", **options)
    except Exception as exc:  # Keras raises a bare Exception on a failed download
        raise ModelLoadError(offline_message(spec, exc)) from exc


def keras_model_file(spec: ModelSpec) -> Path:
    """The existing local file a non-``keras:`` source names."""
    path = spec.local_path()
    if path is None:
        raise ModelLoadError(
            f"model {spec.name!r}: source {spec.source!r} is neither keras:<Application>/imagenet "
            "nor a file path (start it with /, ./ or ../)"
        )
    if not path.is_file():
        raise ModelLoadError(f"model {spec.name!r}: model file {path} does not exist")
    return path


def square_input_size(model: Any, spec: ModelSpec) -> int:
    """The side of the square RGB images ``model`` takes (the configured one if any size)."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ModelLoadError(f"model {spec.name!r}: expects {shape}, not (batch, H, W, 3) RGB")
    height, width = shape[1], shape[2]
    if height is None or width is None:
        return spec.image_size  # a model that takes any size: the configured one
    if height != width:
        raise ModelLoadError(f"model {spec.name!r}: non-square input {height}x{width}")
    return int(height)


class KerasImageRunner(Runner):
    """A runner for ``task = "image-classification"``, ``backend = "keras"`` models."""

    def __init__(self, spec: ModelSpec, settings: Settings | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.revision = spec.revision
        self.settings = settings or get_settings()
        self.max_batch_size = spec.batch_size(self.settings)
        self.image_size = spec.image_size
        self.labels: list[str] = []
        self.preprocess_mode = "caffe"
        self.outputs_probabilities = True
        self.model: Any = None
        self.pool: DecodePool | None = None
        self._forward: Callable[[np.ndarray], np.ndarray] | None = None
        self._tf_device = "/CPU:0"

    # -- setup -------------------------------------------------------------------------
    def setup(self, device: str = "cpu") -> None:
        """Load the model once, compile its forward pass and warm it up."""
        # TensorFlow's C++ start-up chatter (oneDNN, CPU features) would bury our own
        # progress bar and logs; warnings and errors still show. Must precede the import.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        # Before any op: TensorFlow fixes its thread pools when its runtime starts, and
        # its default (every core) oversubscribes a host shared by several workers.
        configure_tensorflow_threads(tf, self.settings)
        _enable_memory_growth(tf)
        self._tf_device = _tf_device(tf, device)
        on_cpu = self._tf_device.startswith("/CPU")
        self.max_batch_size = self.spec.batch_size(self.settings, "cpu" if on_cpu else "cuda")
        if self.spec.precision != "fp32":
            log.warning(
                "model %s: the Keras runner runs fp32, not %s", self.name, self.spec.precision
            )
        with tf.device(self._tf_device):
            self.model, file_path = self._load_model()
        self.image_size = square_input_size(self.model, self.spec)
        classes = int(self.model.output_shape[-1])
        self.labels = self._load_labels(file_path, classes)
        self.outputs_probabilities = _ends_in_softmax(self.model)
        self._forward = self._compile(tf)
        self.pool = DecodePool(self.settings.image_decode_threads)
        # Warm up: the first call of each graph traces it; do it now, not on a real batch.
        for rows in {1, self.max_batch_size}:
            self._forward(np.zeros((rows, self.image_size, self.image_size, 3), np.float32))

    def _load_model(self) -> tuple[Any, Path | None]:
        import keras

        if self.spec.source.startswith(KERAS_PREFIX):
            return keras_application(self.spec), None
        path = keras_model_file(self.spec)
        try:
            if path.name.endswith(".keras"):
                return keras.saving.load_model(path, compile=False, safe_mode=True), path
            if path.name.endswith(WEIGHTS_SUFFIXES):
                return keras.applications.ResNet50(weights=str(path)), path
        except Exception as exc:
            raise ModelLoadError(f"model {self.name!r}: cannot load {path}: {exc}") from exc
        raise ModelLoadError(
            f"model {self.name!r}: {path.name} is not a .keras model or a .h5 weights file"
        )

    def _load_labels(self, file_path: Path | None, classes: int) -> list[str]:
        sidecar = labels_path(file_path) if file_path is not None else None
        if sidecar is not None and sidecar.is_file():
            labels = self._read_labels_file(sidecar)
            if len(labels) != classes:
                raise ModelLoadError(
                    f"model {self.name!r}: {sidecar} has {len(labels)} labels for {classes} outputs"
                )
            return labels
        if classes == len(imagenet_labels()):
            return imagenet_labels()
        return [str(i) for i in range(classes)]

    def _read_labels_file(self, path: Path) -> list[str]:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"model {self.name!r}: cannot read labels {path}: {exc}") from exc
        if isinstance(raw, dict):
            mode = raw.get("preprocess", "caffe")
            if mode not in PREPROCESS_MODES:
                raise ModelLoadError(
                    f"model {self.name!r}: {path}: preprocess must be one of {PREPROCESS_MODES}"
                )
            self.preprocess_mode = mode
            raw = raw.get("labels")
        if not isinstance(raw, list) or not all(isinstance(label, str) for label in raw):
            raise ModelLoadError(f"model {self.name!r}: {path} must hold a list of label strings")
        return raw

    def _compile(self, tf: Any) -> Callable[[np.ndarray], np.ndarray]:
        """The forward pass as traced graphs: one for full batches, one for any other size.

        ``model.predict`` per batch builds a data pipeline and callbacks on every call, and an
        eager ``model(x)`` dispatches op by op (both about half the speed, measured on CPU).
        A graph traced for the exact batch shape is faster again than one traced for a
        ``None`` batch (28 vs 21 img/s, ResNet50 on 2 CPU cores): its shapes are static.
        Partial batches (the last one, the one-by-one retries) take the ``None`` graph
        instead of tracing a new graph per size.
        """
        model = self.model
        size = self.image_size

        def call(x: Any) -> Any:
            return model(x, training=False)

        def graph_for(batch: int | None) -> Any:
            spec = tf.TensorSpec((batch, size, size, 3), tf.float32)
            return tf.function(call, input_signature=[spec])

        full, any_size = graph_for(self.max_batch_size), graph_for(None)
        device = self._tf_device

        def forward(batch: np.ndarray) -> np.ndarray:
            graph = full if len(batch) == self.max_batch_size else any_size
            with tf.device(device):
                return np.asarray(graph(tf.convert_to_tensor(batch)))

        return forward

    # -- inference -----------------------------------------------------------------------
    def decode(self, data: bytes) -> np.ndarray:
        """One image's bytes as the uint8 ``size x size x 3`` RGB array the model takes."""
        return decode_image(
            data, self.image_size, fit="exact", max_pixels=self.settings.max_image_pixels
        )

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB images -> the model's float input (ResNet50: BGR, mean subtracted)."""
        return preprocess_images(images, self.preprocess_mode)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities for a uint8 ``N x size x size x 3`` batch."""
        if self._forward is None:
            raise RuntimeError(f"model {self.name!r}: call setup() before predict()")
        outputs = self._forward(self.preprocess(images))
        return outputs if self.outputs_probabilities else softmax(outputs)

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        """One prediction per image (bytes), in order; undecodable images are per-item errors."""
        if self.pool is None:
            raise RuntimeError(f"model {self.name!r}: call setup() before predict()")
        return predict_images(
            self.pool,
            batch,
            max_batch_size=self.max_batch_size,
            decode=self.decode,
            score=self.probabilities,
            labels=self.labels,
            top_k=self.spec.top_k,
            progress=progress,
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def preprocess_images(images: np.ndarray, mode: str) -> np.ndarray:
    """uint8 RGB images -> a Keras application's float input, with Keras' own functions.

    ``caffe`` is ResNet50's (BGR, ImageNet mean subtracted); ``tf`` and ``torch`` are the
    other Keras application modes; ``none`` passes the pixels through as floats.
    """
    batch = images.astype(np.float32)
    if mode == "none":
        return batch
    if mode == "caffe":
        from keras.applications.resnet50 import preprocess_input

        return np.asarray(preprocess_input(batch))
    from keras.applications.imagenet_utils import preprocess_input as generic

    return np.asarray(generic(batch, mode=mode))


def _ends_in_softmax(model: Any) -> bool:
    """Whether the model already outputs probabilities (its last layer is a softmax)."""
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    if getattr(activation, "__name__", "") == "softmax":
        return True
    return type(last).__name__ == "Softmax"


def _enable_memory_growth(tf: Any) -> None:
    """Let TensorFlow take GPU memory as it needs it, not all of it at start.

    Without this TF maps the whole card, so a torch runner or a second worker on the same GPU
    fails to allocate. It must run before the first GPU op, hence first thing in ``setup``.
    """
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the GPU was initialised already (another model in-process)
            log.debug("memory growth already fixed for %s", gpu.name)


def _tf_device(tf: Any, device: str) -> str:
    """A torch-style device (``cpu``, ``cuda``, ``cuda:1``) as a TensorFlow device name."""
    match = DEVICE_PATTERN.match(device.strip().lower())
    if match is None:
        raise ModelLoadError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    kind, index = match.group(1), int(match.group(2) or 0)
    if kind == "cpu":
        return "/CPU:0"
    gpus = tf.config.list_physical_devices("GPU")
    if index >= len(gpus):
        raise ModelLoadError(f"device {device!r} requested, but TensorFlow sees {len(gpus)} GPU(s)")
    return f"/GPU:{index}"
