"""Shared by the image runners: a decode pool one batch ahead of the model, and top-k.

Image scoring is decode-bound unless decoding overlaps with the forward pass: while the
model works on batch N, the pool decodes batch N+1 (and N+2). Pillow and numpy release the
GIL in their decoders and resizers, and TensorFlow and torch release it in their kernels,
so the threads really run side by side.

Decoding errors stay per item: a batch carries an array or an error message per input.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.inputs.image_decode import ImageDecodeError
from core.jobs.predictions import Prediction

Decoded = tuple[Any, str | None]  # (the decoded value, or None; the error, or None)
BATCHES_AHEAD = 2  # enough to hide one slow (e.g. large PNG) batch; bounds the memory held


def available_cores() -> int:
    """The cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(slots=True)
class DecodedBatch:
    """One batch: ``values[i]`` is the decoded input ``i`` or None with ``errors[i]`` set."""

    values: list[Any]
    errors: list[str | None]

    @property
    def ok_positions(self) -> list[int]:
        return [i for i, error in enumerate(self.errors) if error is None]

    def __len__(self) -> int:
        return len(self.values)


class DecodePool:
    """A thread pool that decodes image batches ahead of their use."""

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads or available_cores()
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="bulkscore-decode")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def batches(
        self,
        inputs: Sequence[object],
        batch_size: int,
        decode: Callable[[bytes], Any],
    ) -> Iterator[DecodedBatch]:
        """Yield ``inputs`` decoded by ``decode``, ``batch_size`` at a time, in order.

        Batches after the one being yielded are already decoding in the pool, so the caller's
        work on a batch (the forward pass) overlaps with decoding the next ones.
        """
        starts = range(0, len(inputs), batch_size)
        pending: deque[list[Future[Decoded]]] = deque()
        submitted = 0
        try:
            for _ in starts:
                while submitted < len(starts) and len(pending) <= BATCHES_AHEAD:
                    start = starts[submitted]
                    chunk = inputs[start : start + batch_size]
                    pending.append([self._executor.submit(_guarded, decode, v) for v in chunk])
                    submitted += 1
                results = [future.result() for future in pending.popleft()]
                yield DecodedBatch([value for value, _ in results], [err for _, err in results])
        finally:
            for futures in pending:  # the caller stopped early: drop the unneeded work
                for future in futures:
                    future.cancel()


def _guarded(decode: Callable[[bytes], Any], value: object) -> Decoded:
    """``decode(value)``, with every failure turned into this input's error message."""
    if not isinstance(value, bytes | bytearray | memoryview):
        return None, "no image data (expected the image file's bytes)"
    try:
        return decode(bytes(value)), None
    except ImageDecodeError as exc:
        return None, str(exc)
    except Exception as exc:  # a bug or an odd decoder failure: still only this item's error
        return None, f"cannot decode image: {type(exc).__name__}: {exc}"[:2000]


def predict_images(
    pool: DecodePool,
    batch: Sequence[Any],
    *,
    max_batch_size: int,
    decode: Callable[[bytes], Any],
    score: Callable[[np.ndarray], np.ndarray],
    labels: Sequence[str],
    top_k: int,
    progress: Callable[[int], None] | None = None,
) -> list[Prediction]:
    """One prediction per image (bytes), in order; undecodable images are per-item errors.

    ``decode`` runs in ``pool``, a model batch ahead; ``score`` maps the stacked decoded
    images of a batch to one row of class probabilities per image.
    """
    predictions: list[Prediction] = []
    for decoded in pool.batches(batch, max_batch_size, decode):
        results = [Prediction.failure(error or "") for error in decoded.errors]
        ok = decoded.ok_positions
        if ok:
            rows = score(np.stack([decoded.values[i] for i in ok]))
            for position, row in zip(ok, rows, strict=True):
                results[position] = top_prediction(row, labels, top_k)
        predictions.extend(results)
        if progress is not None:
            progress(len(decoded))
    return predictions


def image_features(
    pool: DecodePool,
    batch: Sequence[Any],
    *,
    max_batch_size: int,
    decode: Callable[[bytes], Any],
    forward: Callable[[np.ndarray], np.ndarray],
    dim: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[str | None]]:
    """``(vectors, errors)``: a ``dim``-wide feature row per image, and per image its error.

    The frozen-backbone counterpart of :func:`predict_images` (training and trained heads):
    ``forward`` maps a batch of stacked decoded images to one feature row each. The row of
    an image that cannot be decoded is zeros, and its error says why.
    """
    vectors = np.zeros((len(batch), dim), dtype=np.float32)
    errors: list[str | None] = [None] * len(batch)
    offset = 0
    for decoded in pool.batches(batch, max_batch_size, decode):
        errors[offset : offset + len(decoded)] = decoded.errors
        ok = decoded.ok_positions
        if ok:
            rows = forward(np.stack([decoded.values[i] for i in ok]))
            vectors[[offset + i for i in ok]] = rows
        offset += len(decoded)
        if progress is not None:
            progress(len(decoded))
    return vectors, errors


def top_prediction(row: np.ndarray, labels: Sequence[str], k: int) -> Prediction:
    """Top-1 as label/score and top-k, ordered as ``decode_predictions`` orders them."""
    k = min(k, len(labels))
    best = row.argsort()[-k:][::-1]
    pairs = [(labels[i], float(row[i])) for i in best]
    return Prediction(label=pairs[0][0], score=pairs[0][1], top_k=pairs)
