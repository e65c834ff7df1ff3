"""engine.runners.fast_tokens and the text runner's padding: the rows a forward pass gets
are the same as from the tokenizer's own call and a per-row padding loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.config import Settings
from core.models.registry import ModelSpec
from engine.runners.fast_tokens import PROBE_TEXTS, fast_encoder
from engine.runners.transformers_text import TransformersTextRunner

TEXTS = [
    *PROBE_TEXTS,
    "the film was fine, the popcorn less so",
    "x " * 3000,  # past every max_length below: truncated
    "[CLS] [SEP]",
    "Ünïcödé " * 40,
]


def _runner(model: Path, max_length: int | None = None) -> TransformersTextRunner:
    spec = ModelSpec(
        name="tiny",
        task="text-classification",
        backend="transformers",
        source=str(model),
        max_length=max_length,
    )
    runner = TransformersTextRunner(spec, Settings(database_url="sqlite://"))
    runner.setup("cpu")
    return runner


@pytest.mark.parametrize("max_length", [None, 16])
def test_the_fast_path_gives_the_tokenizers_own_rows(
    tiny_text_model: Path, max_length: int | None
) -> None:
    runner = _runner(tiny_text_model, max_length)
    assert runner.fast_encode is not None, "the tiny model's fast tokenizer takes the fast path"
    fast = runner.fast_encode(list(TEXTS))
    full = runner._tokenize_in_full(list(TEXTS))
    assert fast == full
    assert max(len(row) for row in fast["input_ids"]) == runner.max_length
    # The full call afterwards still works as before (the backend is left as it sets it).
    assert runner.tokenizer(["a probe"], truncation=True)["input_ids"] == full["input_ids"][:1]


class _Encoding:
    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.attention_mask = [1] * len(ids)
        self.type_ids = [0] * len(ids)


class _Backend:
    encode_special_tokens = False

    def encode_batch_fast(self, texts: list[str], add_special_tokens: bool) -> list[_Encoding]:
        return [_Encoding([len(text)]) for text in texts]


class _Tokenizer:
    model_input_names = ("input_ids", "attention_mask")
    split_special_tokens = False

    def __init__(self, backend: Any) -> None:
        self._tokenizer = backend

    def set_truncation_and_padding(self, **_settings: Any) -> None:
        pass


def test_a_fast_path_that_disagrees_is_not_used() -> None:
    def full(texts: list[str]) -> dict[str, list[Any]]:
        return {"input_ids": [[len(t)] for t in texts]}

    assert fast_encoder(_Tokenizer(_Backend()), 8, full) is not None

    def other(texts: list[str]) -> dict[str, list[Any]]:
        return {"input_ids": [[len(t) + 1] for t in texts]}

    assert fast_encoder(_Tokenizer(_Backend()), 8, other) is None
    assert fast_encoder(_Tokenizer(object()), 8, full) is None  # no encode_batch_fast
    assert fast_encoder(object(), 8, full) is None  # not a fast tokenizer


def _padded_row_by_row(
    encoded: dict[str, list[list[int]]], batch: list[int], fills: dict[str, int], left: bool
) -> dict[str, np.ndarray]:
    longest = max(len(encoded["input_ids"][i]) for i in batch)
    padded = {}
    for key, rows in encoded.items():
        array = np.full((len(batch), longest), fills[key], dtype=np.int64)
        for row, position in enumerate(batch):
            values = rows[position]
            if left:
                array[row, longest - len(values) :] = values
            else:
                array[row, : len(values)] = values
        padded[key] = array
    return padded


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_equals_the_row_by_row_loop(tiny_text_model: Path, side: str) -> None:
    runner = _runner(tiny_text_model, 24)
    runner.tokenizer.padding_side = side
    encoded = runner._tokenize(list(TEXTS))
    batch = [3, 0, 7, 5, 1]  # any order, rows of different lengths, an empty text's row
    fills = {"input_ids": runner.tokenizer.pad_token_id, "token_type_ids": 0}
    got = runner._padded(encoded, list(encoded), batch)
    expected = _padded_row_by_row(encoded, batch, fills, side == "left")
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value)
        assert got[key].dtype == np.int64


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_inputs_equal_the_tokenizers_own_padded_call(
    tiny_text_model: Path, side: str
) -> None:
    """Tokenising keeps no attention mask per text: the one padding makes from the rows'
    lengths is the tokenizer's own, as are the padded ids."""
    runner = _runner(tiny_text_model, 24)
    runner.tokenizer.padding_side = side
    batch = [3, 0, 7, 5, 1]
    encoded, keys = runner._encode(list(TEXTS))
    assert "attention_mask" in keys and "attention_mask" not in encoded
    got = runner._padded(encoded, keys, batch)
    own = runner.tokenizer([TEXTS[i] for i in batch], truncation=True, max_length=24, padding=True)
    assert sorted(got) == sorted(key for key in own if key in keys)
    for key in got:
        np.testing.assert_array_equal(got[key], np.asarray(own[key]))
