"""The GPU stand-in: every CPU stage of the text runner, and a forward pass that only sleeps.

A planning tool, never a model (``backend = "standin"`` in a models file). On a CPU machine
a real model's forward pass takes most of a worker's time, so the CPU-side work around it
(reading, tokenising, padding, top-k, rows, writes) cannot be measured or overlapped. The
stand-in keeps all of that real: it *is* :class:`TransformersTextRunner` (same tokenizer,
truncation, token-budget batches sorted by length, numpy padding, activation and top-k),
with the forward pass replaced by a sleep of ``real tokens / standin_tokens_per_s`` seconds.
``time.sleep`` releases the GIL, as a GPU kernel leaves the CPU free, and it runs on a
thread of its own (the stand-in's "device"), so that, as with queued CUDA kernels, the
runner pads the next batch while the device works on this one. The device keeps its own
timeline, as a CUDA stream does: a batch queued while the one before runs starts when that
one ends, so the device's rate is ``standin_tokens_per_s`` whenever work waits for it.

Scores are fixed and deterministic: logits derived from a hash of each text's token ids
(positions counted over real tokens, so padding and batch company do not change them), so
the same text always gets the same label and score, under the config's ``id2label``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from core.config import Settings
from core.models.registry import ModelSpec
from engine.runners.hub import load_pretrained
from engine.runners.transformers_text import TransformersTextRunner, Waiter

# The token hash: odd multipliers (Knuth's multiplicative hash) and a prime modulus. Sums
# stay inside int64 up to 8,192 positions; past that numpy wraps around, which is still
# deterministic, and the modulus of a wrapped (negative) sum is still in [0, modulus).
TOKEN_MULTIPLIER = 40_503
ROW_MODULUS = 1_000_003
LABEL_MULTIPLIER = 2_654_435_761
LOGIT_BUCKETS = 10_007
LOGIT_RANGE = 8.0  # logits spread over [-4, 4): softmax scores from ~0.0003 to ~0.9997


class StandinTextRunner(TransformersTextRunner):
    """A text classifier whose forward pass sleeps for its tokens and returns fixed scores."""

    def __init__(self, spec: ModelSpec, settings: Settings | None = None) -> None:
        super().__init__(spec, settings)
        self.tokens_per_s = spec.standin_tokens_per_s
        self.config: Any = None
        # Replaceable, so that tests see the simulated time without waiting for it.
        self.sleep: Callable[[float], None] = time.sleep
        self.clock: Callable[[], float] = time.monotonic
        self.device_queue: ThreadPoolExecutor | None = None
        # The device's timeline (_forward): when each queued batch was queued, in order, and
        # when the device is free of the batches before.
        self.queued_at: deque[float] = deque()
        self.device_free_at = 0.0

    def setup(self, device: str = "cpu") -> None:
        # Deferred: transformers, as the text runner imports it (tokenizer and config only:
        # no weights are read, so the folder needs none).
        from transformers import AutoConfig, AutoTokenizer

        self.device = device
        # A GPU's batches (``gpu_max_batch_*``, or the model's own), whatever device the
        # process runs on: the stand-in plans for a GPU. With the CPU's 1k-token budget a
        # 4,000-text run made 238 batches of ~17 texts, each a device hand-off of its own.
        self.max_batch_size = self.spec.batch_size(self.settings, "cuda")
        self.max_batch_tokens = self.spec.batch_tokens(self.settings, "cuda")
        self.tokenizer = load_pretrained(self.spec, AutoTokenizer.from_pretrained)
        self.config = load_pretrained(self.spec, AutoConfig.from_pretrained)
        self._classify_with(self.config)
        self.max_length = self._max_length()
        self._choose_encoder()

    def _model_config(self) -> Any:
        return self.config

    def _tensors(self, encoded: Any, keys: Sequence[str], batch: Sequence[int]) -> dict[str, Any]:
        # The same padded int64 arrays the real runner hands to torch, kept as numpy.
        return dict(self._padded(encoded, keys, batch))

    def _start_forward(self, features: dict[str, Any], embeddings: bool) -> Waiter:
        """Queue the batch on the stand-in's device, one thread that runs batches in order
        as a GPU's stream does, and return at once, as a queued CUDA kernel returns."""
        if self.device_queue is None:
            self.device_queue = ThreadPoolExecutor(1, thread_name_prefix="standin-device")
        self.queued_at.append(self.clock())
        return self.device_queue.submit(self._forward, features, embeddings).result

    def close(self) -> None:
        super().close()
        if self.device_queue is not None:
            self.device_queue.shutdown(wait=True)
            self.device_queue = None

    def _forward(self, features: dict[str, Any], embeddings: bool) -> np.ndarray:
        queued = self.queued_at.popleft() if self.queued_at else self.clock()
        ids = features["input_ids"]
        mask = features.get("attention_mask")
        if mask is None:
            mask = (ids != (self.tokenizer.pad_token_id or 0)).astype(np.int64)
        tokens = int(mask.sum())
        logits = standin_logits(ids, mask, len(self.labels))
        if self.tokens_per_s > 0:
            # The device's own timeline, as a GPU stream's: a batch starts when it was queued
            # or when the batch before it ends, whichever is later, and takes its tokens'
            # time. The sleep waits for that end, so this thread waking late (it waits for the
            # GIL after each sleep) is made up on the next queued batch instead of adding up,
            # and the scores cost the device no time: with a sleep per batch, the device ran
            # 1.60-1.63 s for 1.55 s of tokens per 20,000 texts (bench/README.md, issue 16).
            start = max(queued, self.device_free_at)
            self.device_free_at = start + tokens / self.tokens_per_s
            self.sleep(max(0.0, self.device_free_at - self.clock()))
        return logits


def standin_logits(ids: np.ndarray, mask: np.ndarray, labels: int) -> np.ndarray:
    """Fixed logits, one row per sequence: a hash of its real token ids and their positions.

    Positions are counted over real tokens only (a running sum of the mask), so left or
    right padding to any batch length gives the same row.
    """
    positions = np.cumsum(mask, axis=1) * mask
    weighted = (ids % (1 << 20)) * (positions * TOKEN_MULTIPLIER + 1) * mask
    row_hash = weighted.sum(axis=1) % ROW_MODULUS
    label_keys = 2 * np.arange(labels, dtype=np.int64) + 1
    buckets = (row_hash[:, None] * label_keys[None, :] * LABEL_MULTIPLIER) % LOGIT_BUCKETS
    logits: np.ndarray = (buckets / LOGIT_BUCKETS * LOGIT_RANGE - LOGIT_RANGE / 2).astype(
        np.float32
    )
    return logits
