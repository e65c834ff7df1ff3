"""Scores from logits: the softmax and sigmoid every runner and head uses."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise probabilities that sum to one (max-shifted, so large logits do not overflow)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return result


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Independent per-label probabilities (multi-label classifiers)."""
    result: np.ndarray = 1.0 / (1.0 + np.exp(-logits))
    return result
