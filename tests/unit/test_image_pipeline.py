"""The decode pool: order, per-item errors, and decoding ahead of the consumer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from core.inputs.image_decode import ImageDecodeError
from engine.runners.image_pipeline import DecodePool, top_prediction


@pytest.fixture()
def pool() -> Iterator[DecodePool]:
    decode_pool = DecodePool(threads=2)
    yield decode_pool
    decode_pool.close()


def test_batches_keep_order_and_isolate_errors(pool: DecodePool) -> None:
    def decode(data: bytes) -> int:
        if data == b"bad":
            raise ImageDecodeError("bad image")
        if data == b"bug":
            raise KeyError("surprise")
        return int(data)

    inputs: list[object] = [b"1", b"bad", b"3", None, b"bug", b"6", b"7"]
    batches = list(pool.batches(inputs, 3, decode))
    assert [len(batch) for batch in batches] == [3, 3, 1]
    values = [value for batch in batches for value in batch.values]
    errors = [error for batch in batches for error in batch.errors]
    assert values == [1, None, 3, None, None, 6, 7]
    assert errors[1] == "bad image"
    assert "no image data" in (errors[3] or "")
    assert "KeyError" in (errors[4] or "")
    assert batches[0].ok_positions == [0, 2]


def test_the_next_batch_decodes_while_the_consumer_works(pool: DecodePool) -> None:
    decoded: list[int] = []
    lock = threading.Lock()

    def decode(data: bytes) -> int:
        with lock:
            decoded.append(int(data))
        return int(data)

    inputs = [str(i).encode() for i in range(8)]
    batches = pool.batches(inputs, 2, decode)
    first = next(batches)
    assert first.values == [0, 1]
    # The consumer now "runs the model" on batch 0; batches 1 and 2 decode meanwhile,
    # without being asked for.
    deadline = time.monotonic() + 5
    while len(decoded) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(decoded) == list(range(6))
    assert [batch.values for batch in batches] == [[2, 3], [4, 5], [6, 7]]


def test_top_prediction_orders_like_decode_predictions() -> None:
    row = np.array([0.1, 0.5, 0.05, 0.3, 0.05], np.float32)
    prediction = top_prediction(row, ["a", "b", "c", "d", "e"], 3)
    assert prediction.label == "b" and prediction.score == pytest.approx(0.5)
    assert [label for label, _ in prediction.top_k] == ["b", "d", "a"]
    assert len(top_prediction(row, ["a", "b", "c", "d", "e"], 10).top_k) == 5
