"""Torch image models on a device: the GPU layout and precision every torch image runner uses.

Shared by the transformers image runner and the EfficientNet-Lite runner, so a model gets
the same treatment whichever of them loads it:

- **channels-last on GPUs.** Convolutions on tensor cores want NHWC; NCHW makes cuDNN
  transpose every layer. The model's weights and each input batch are put in that layout.
  On CPU both stay NCHW (contiguous), as PyTorch's CPU kernels expect by default.
- **fp16 / bf16 on GPUs** when the models file asks for it (``precision``); on CPU those
  (and int8, which no image runner implements) fall back to fp32 with a warning.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

HALF_PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16}


def place_image_model(model: torch.nn.Module, device: str, precision: str, name: str) -> None:
    """Put ``model`` in eval mode on ``device``: channels-last and half precision on GPUs."""
    model.eval().to(device)
    on_gpu = device != "cpu"
    if on_gpu:
        # Module.to takes memory_format, which torch's typing overloads leave out.
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if on_gpu and precision in HALF_PRECISIONS:
        model.to(HALF_PRECISIONS[precision])
    elif precision != "fp32":
        log.warning("model %s: %s is not used by this runner on %s; fp32", name, precision, device)


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of ``model``'s weights (what its inputs must be cast to)."""
    return next(model.parameters()).dtype


def image_batch(pixels: torch.Tensor, device: str, dtype: torch.dtype) -> torch.Tensor:
    """An ``N x C x H x W`` float batch on ``device`` in ``dtype``, channels-last on GPUs."""
    tensor = pixels.to(device, dtype=dtype)
    if device != "cpu":
        return tensor.contiguous(memory_format=torch.channels_last)
    return tensor.contiguous()


def normalised_uint8_batch(
    images: np.ndarray, device: str, dtype: torch.dtype, mean: float, std: float
) -> torch.Tensor:
    """uint8 ``N x H x W x 3`` RGB images as the model's normalised NCHW input batch.

    The pixels cross to the device as uint8 (a quarter of float32's bytes) and are scaled
    there; ``(x - mean) / std`` per value, as the model was trained.
    """
    raw = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    # NHWC -> NCHW is only a new view: its strides already are channels-last.
    scaled = raw.permute(0, 3, 1, 2).to(torch.float32).sub_(mean).div_(std)
    return image_batch(scaled, device, dtype)
