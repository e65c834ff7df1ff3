"""Linear heads: ``softmax(features @ weight.T + bias)`` over a frozen backbone's features.

A head is a safetensors file (``weight`` [labels x dim], ``bias`` [labels], ``labels`` in its
metadata, no pickle): what ``bulkscore train`` stores in SQL, and the layout a ``head =
"file.safetensors"`` entry of the models file takes, so a trained head can also be shipped
as a file (as ``sentiment-mini``'s is). :func:`read_head` is the one reader of both.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from engine.runners.base import ModelLoadError


def head_bytes(
    weight: np.ndarray, bias: np.ndarray, labels: Sequence[str], metadata: dict[str, str]
) -> bytes:
    """A head as safetensors bytes (float32 tensors; labels and ``metadata`` as metadata)."""
    tensors = {
        "weight": np.ascontiguousarray(weight, dtype=np.float32),
        "bias": np.ascontiguousarray(bias, dtype=np.float32),
    }
    return save(tensors, metadata={**metadata, "labels": json.dumps(list(labels))})


def read_head(data: bytes) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(weight, bias, labels)`` of a head written by :func:`head_bytes`.

    Raises:
        ModelLoadError: The bytes are not such a head.
    """
    try:
        tensors = load(data)
        (header_size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + header_size])
        labels = json.loads(header.get("__metadata__", {}).get("labels", "[]"))
        weight, bias = tensors["weight"], tensors["bias"]
    except (SafetensorError, KeyError, ValueError, struct.error) as exc:
        raise ModelLoadError(f"not a head file: {exc}") from exc
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or len(labels) != weight.shape[0]:
        raise ModelLoadError(
            f"malformed head: weight {weight.shape}, bias {bias.shape}, {len(labels)} labels"
        )
    return weight.astype(np.float32), bias.astype(np.float32), [str(label) for label in labels]
